"""The routed MoE experts of many tokens (training, prefill) in one fused forward: ``moe_grouped_experts`` (issue 19).

For every token n and choice k (expert e = top_e[n, k], weight w = top_w[n, k]):
    h_{n,k}  = SiLU(gate_e x_n) * up_e x_n                             (F,)
    out_n    = sum_k down_e (w_{n,k} h_{n,k})                          (D,)
with fp32 sums and the roundings to x's dtype of ``naive_moe_decode_experts`` between the projections. What the MoE
layer's grouped path computes with a sort, a gather, grouped GEMMs, SiLU x up and a permutation; here a plan (the
assignments sorted by expert, each expert's rows padded to whole blocks) and two grouped GEMMs whose row loads are
the gather and whose row stores the permutation (``triton.py`` says why). Forward only (no autograd); no host
synchronisation (the grid sizes follow N, top_k, the experts and the block sizes), so a CUDA graph captures it.

Dispatch: the Triton kernels for CUDA tensors, and for CPU tensors under ``TRITON_INTERPRET=1``; the naive
reference (``naive.py``, a loop over the experts) otherwise, for float64 and where there are no assignments.
``archzoo.kernels.last_backend("moe_grouped_experts")`` says which ran: 'triton' or 'naive'. Inside
``torch.compile`` the call is a custom op (``archzoo::moe_grouped_experts``), so a compiled forward traces it whole.
"""

from __future__ import annotations

import torch

from .._dispatch import record, use_triton
from ._checks import check_grouped
from .naive import naive_moe_grouped_experts

OP = "moe_grouped_experts"


def _kernels_run(x: torch.Tensor, empty: bool, *tensors) -> bool:
    """Whether the Triton kernels run on these tensors; records which backend runs, and where the kernels could run
    but do not, why (logged once)."""
    if not use_triton(x, *tensors):
        record(OP, "naive")
        return False
    why = ("float64 inputs: the kernels compute in fp32" if x.dtype == torch.float64
           else "no assignments: nothing to compute" if empty else None)  # fmt: skip
    record(OP, "naive" if why else "triton", why)
    return why is None


def _run(x, gate_w, up_w, down_w, top_e, top_w):
    N, _, _, _, K = check_grouped(x, gate_w, up_w, down_w, top_e, top_w)
    if _kernels_run(x, N * K == 0, gate_w, up_w, down_w, top_e, top_w):
        from .triton import moe_grouped_experts as fn

        return fn(x, gate_w, up_w, down_w, top_e, top_w)
    return naive_moe_grouped_experts(x, gate_w, up_w, down_w, top_e, top_w)


@torch.library.custom_op("archzoo::moe_grouped_experts", mutates_args=())
def _grouped_op(
    x: torch.Tensor,
    gate_w: torch.Tensor,
    up_w: torch.Tensor,
    down_w: torch.Tensor,
    top_e: torch.Tensor,
    top_w: torch.Tensor,
) -> torch.Tensor:
    return _run(x, gate_w, up_w, down_w, top_e, top_w)  # a new tensor in every path


@_grouped_op.register_fake
def _(x, gate_w, up_w, down_w, top_e, top_w):
    N, D, _, _, _ = check_grouped(x, gate_w, up_w, down_w, top_e, top_w)  # bad shapes fail at trace time
    return x.new_empty((N, D))


def moe_grouped_experts(
    x: torch.Tensor, gate_w: torch.Tensor, up_w: torch.Tensor, down_w: torch.Tensor, top_e: torch.Tensor,
    top_w: torch.Tensor,
) -> torch.Tensor:  # fmt: skip
    """The routed experts of any number of tokens (module docstring). x (N, D), any strides; gate_w, up_w (E, F, D)
    and down_w (E, D, F), the MoE layer's stacked expert weights in x's dtype; top_e (N, K) int32 / int64, each
    token's chosen experts (in 0..E-1: not checked, that would read the device); top_w (N, K) their routing weights
    (rounded to x's dtype, as the layer does; a dropped assignment has weight 0 and adds exactly 0). Returns (N, D)
    in x's dtype, sums in fp32 with ``naive_moe_decode_experts``' roundings between the projections. No host
    synchronisation (a CUDA graph can capture it); traceable by ``torch.compile``; not differentiable (forward
    only). ValueError on bad shapes, naming the argument."""
    if torch.compiler.is_compiling():
        return _grouped_op(x, gate_w, up_w, down_w, top_e, top_w)
    return _run(x, gate_w, up_w, down_w, top_e, top_w)


__all__ = ["OP", "moe_grouped_experts", "naive_moe_grouped_experts"]
