"""A decode step's routed MoE experts in two launches: ``moe_decode_experts``, and with the routing,
``moe_decode_step`` (issue 18, the MoE students' steps).

For a few tokens (a decode step: N x top_k assignments fewer than the experts), each token's chosen experts only:
    h_{n,k}  = SiLU(gate_{e(n,k)} x_n) * up_{e(n,k)} x_n              (F,) per assignment
    out_n    = sum_k w_{n,k} down_{e(n,k)} h_{n,k}                    (D,) per token
What ``MoE._static`` computes with gathers and reductions that Inductor compiles; here one kernel for gate and up
(with SiLU x up) and one for down (with the routing weights and the sum over choices), reading the weights along
their rows as the decode GEMV does. Dispatch: the Triton kernels (``triton.py``) for CUDA tensors, and for CPU
tensors under ``TRITON_INTERPRET=1``; the naive reference (``naive.py``, the layer's own gather form) otherwise
and for float64. ``archzoo.kernels.last_backend("moe_decode_experts")`` says which ran: 'triton' or 'naive'.
Inside ``torch.compile`` the call is a custom op (``archzoo::moe_decode_experts``), so a compiled decode step
traces it whole and a CUDA graph captures its launches.

``moe_decode_step`` is the MoE layer's whole routed part for a few tokens: the router (x @ router_w.T + router_b in
x's dtype, then fp32), softmax, top-k by max passes, ``norm_topk_prob``, then the experts as above; the same two
launches, the first computing each token's routing before its expert rows (``triton.py``), both launched with
programmatic dependent launch where ``archzoo.kernels._pdl.pdl_enabled``. Same dispatch (``naive_moe_decode_step``
where the kernels do not run), ``last_backend("moe_decode_step")``, and custom op ``archzoo::moe_decode_step``.
"""

from __future__ import annotations

import torch

from .._dispatch import record, use_triton
from ._checks import check_experts, check_step
from .naive import naive_moe_decode_experts, naive_moe_decode_step, naive_moe_route, route, router_logits, topk_by_max

OP = "moe_decode_experts"
STEP_OP = "moe_decode_step"


def _kernels_run(op: str, x: torch.Tensor, empty: bool, *tensors) -> bool:
    """Whether ``op`` runs its Triton kernels on these tensors; records which backend runs, and where the kernels
    could run but do not, why (logged once)."""
    if not use_triton(x, *tensors):
        record(op, "naive")
        return False
    why = ("float64 inputs: the kernels compute in fp32" if x.dtype == torch.float64
           else "no assignments: nothing to compute" if empty else None)  # fmt: skip
    record(op, "naive" if why else "triton", why)
    return why is None


def _run(x, gate_w, up_w, down_w, top_e, top_w):
    N, _, _, _, K = check_experts(x, gate_w, up_w, down_w, top_e, top_w)
    if _kernels_run(OP, x, N * K == 0, gate_w, up_w, down_w, top_e, top_w):
        from .triton import moe_decode_experts as fn

        return fn(x, gate_w, up_w, down_w, top_e, top_w)
    return naive_moe_decode_experts(x, gate_w, up_w, down_w, top_e, top_w)


@torch.library.custom_op("archzoo::moe_decode_experts", mutates_args=())
def _experts_op(
    x: torch.Tensor,
    gate_w: torch.Tensor,
    up_w: torch.Tensor,
    down_w: torch.Tensor,
    top_e: torch.Tensor,
    top_w: torch.Tensor,
) -> torch.Tensor:
    return _run(x, gate_w, up_w, down_w, top_e, top_w)  # a new tensor in every path


@_experts_op.register_fake
def _(x, gate_w, up_w, down_w, top_e, top_w):
    N, D, _, _, _ = check_experts(x, gate_w, up_w, down_w, top_e, top_w)  # bad shapes fail at trace time
    return x.new_empty((N, D))


def moe_decode_experts(
    x: torch.Tensor, gate_w: torch.Tensor, up_w: torch.Tensor, down_w: torch.Tensor, top_e: torch.Tensor,
    top_w: torch.Tensor,
) -> torch.Tensor:  # fmt: skip
    """The routed experts of a few tokens (module docstring). x (N, D), any strides; gate_w, up_w (E, F, D) and
    down_w (E, D, F), the MoE layer's stacked expert weights in x's dtype; top_e (N, K) int32 / int64, each token's
    chosen experts; top_w (N, K) their routing weights (rounded to x's dtype, as the layer does). Returns (N, D) in
    x's dtype, sums in fp32 with the layer's roundings between the projections. No host synchronisation (a CUDA
    graph can capture it); traceable by ``torch.compile``; not differentiable (a decode step). ValueError on bad
    shapes, naming the argument."""
    if torch.compiler.is_compiling():
        return _experts_op(x, gate_w, up_w, down_w, top_e, top_w)
    return _run(x, gate_w, up_w, down_w, top_e, top_w)


def _run_step(x, router_w, router_b, gate_w, up_w, down_w, top_k, norm_topk_prob, norm_weight, eps, residual):
    N, _, _, _ = check_step(x, router_w, router_b, gate_w, up_w, down_w, top_k, norm_weight, residual)
    if _kernels_run(STEP_OP, x, N == 0, router_w, router_b, gate_w, up_w, down_w, norm_weight, residual):
        from .triton import moe_decode_step as fn

        return fn(x, router_w, router_b, gate_w, up_w, down_w, top_k, norm_topk_prob, norm_weight, eps, residual)
    return naive_moe_decode_step(x, router_w, router_b, gate_w, up_w, down_w, top_k, norm_topk_prob, norm_weight,
                                 eps, residual)  # fmt: skip


@torch.library.custom_op("archzoo::moe_decode_step", mutates_args=())
def _step_op(
    x: torch.Tensor,
    router_w: torch.Tensor,
    router_b: torch.Tensor | None,
    gate_w: torch.Tensor,
    up_w: torch.Tensor,
    down_w: torch.Tensor,
    top_k: int,
    norm_topk_prob: bool,
    norm_weight: torch.Tensor | None = None,
    eps: float = 1e-5,
    residual: torch.Tensor | None = None,
) -> torch.Tensor:
    # a new tensor in every path
    return _run_step(x, router_w, router_b, gate_w, up_w, down_w, top_k, norm_topk_prob, norm_weight, eps, residual)


@_step_op.register_fake
def _(x, router_w, router_b, gate_w, up_w, down_w, top_k, norm_topk_prob, norm_weight=None, eps=1e-5, residual=None):
    # bad shapes fail at trace time
    N, D, _, _ = check_step(x, router_w, router_b, gate_w, up_w, down_w, top_k, norm_weight, residual)
    return x.new_empty((N, D))


def moe_decode_step(
    x: torch.Tensor, router_w: torch.Tensor, router_b: torch.Tensor | None, gate_w: torch.Tensor, up_w: torch.Tensor,
    down_w: torch.Tensor, top_k: int, norm_topk_prob: bool, norm_weight: torch.Tensor | None = None,
    eps: float = 1e-5, residual: torch.Tensor | None = None,
) -> torch.Tensor:  # fmt: skip
    """A MoE layer's routed part for a few tokens (module docstring): routing and the chosen experts. x (N, D), any
    strides; router_w (E, D) and router_b (E,) or None, the router ``nn.Linear``'s; gate_w, up_w (E, F, D) and down_w
    (E, D, F), the stacked expert weights; all in x's dtype. top_k in 1..E; norm_topk_prob: the K routing weights
    divided by their sum. Returns (N, D) in x's dtype: the routing in fp32 (fp64 for fp64 x) from logits rounded to
    x's dtype, top-k ties to the lowest index (``topk_by_max``), the weights rounded to x's dtype, the experts with
    ``moe_decode_experts``' roundings. No host synchronisation (a CUDA graph can capture it); traceable by
    ``torch.compile``; not differentiable (a decode step). ValueError on bad shapes, naming the argument.

    The block's pre-norm and residual add can come in too (two kernels fewer a layer): with ``norm_weight`` (D,) in
    x's dtype, x is the residual stream and the layer's input is ``RMSNorm(x)`` (eps; the norm's roundings, as
    ``decode_linear`` fuses it), computed by the first kernel; with ``residual`` (N, D) in x's dtype the result is
    ``residual + experts``, added by the second (fp32 sum, one rounding: ``x + moe(...)`` in x's dtype)."""
    args = (x, router_w, router_b, gate_w, up_w, down_w, top_k, norm_topk_prob, norm_weight, eps, residual)
    if torch.compiler.is_compiling():
        return _step_op(*args)
    return _run_step(*args)


__all__ = ["OP", "STEP_OP", "moe_decode_experts", "moe_decode_step", "naive_moe_decode_experts",
           "naive_moe_decode_step", "naive_moe_route", "route", "router_logits", "topk_by_max"]  # fmt: skip
