"""A decode step's routed MoE experts in two launches: ``moe_decode_experts`` (issue 18, the MoE students' steps).

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
"""

from __future__ import annotations

import torch

from .._dispatch import record, use_triton
from ._checks import check_experts
from .naive import naive_moe_decode_experts

OP = "moe_decode_experts"


def _run(x, gate_w, up_w, down_w, top_e, top_w):
    N, _, _, _, K = check_experts(x, gate_w, up_w, down_w, top_e, top_w)
    if use_triton(x, gate_w, up_w, down_w, top_e, top_w):
        why = ("float64 inputs: the kernels compute in fp32" if x.dtype == torch.float64
               else "no assignments: nothing to compute" if N * K == 0 else None)  # fmt: skip
        if why is None:
            from .triton import moe_decode_experts as fn

            record(OP, "triton")
            return fn(x, gate_w, up_w, down_w, top_e, top_w)
        record(OP, "naive", why)  # where the kernels run, the reason they did not is logged once
    else:
        record(OP, "naive")
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


__all__ = ["OP", "moe_decode_experts", "naive_moe_decode_experts"]
