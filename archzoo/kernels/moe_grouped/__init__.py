"""The routed MoE experts of many tokens (training, prefill), fused forward and backward: ``moe_grouped_experts``.

For every token n and choice k (expert e = top_e[n, k], weight w = top_w[n, k]):
    h_{n,k}  = SiLU(gate_e x_n) * up_e x_n                             (F,)
    out_n    = sum_k down_e (w_{n,k} h_{n,k})                          (D,)
with fp32 sums and the roundings to x's dtype of ``naive_moe_decode_experts`` between the projections. What the MoE
layer's grouped path computes with a sort, a gather, grouped GEMMs, SiLU x up and a permutation; here a plan (the
assignments sorted by expert, each expert's rows padded to whole blocks) and two grouped GEMMs whose row loads are
the gather and whose row stores the permutation (``triton.py`` says why; issue 19). Differentiable: the backward
reuses the forward's plan and the gate and up it saved, in six more launches (``backward.py``); no host
synchronisation in either (the grid sizes follow N, top_k, the experts and the block sizes), so a CUDA graph
captures both. ``routing.moe_route`` (exported as ``archzoo.kernels.moe_route``) routes many tokens as the MoE layer
does and counts the plan's chunks in the same launch; ``moe_grouped_experts(..., counts=)`` then skips the count.

Dispatch: the Triton kernels for CUDA tensors, and for CPU tensors under ``TRITON_INTERPRET=1``; the naive
reference (``naive.py``, a loop over the experts) otherwise, for float64 and where there are no assignments.
``archzoo.kernels.last_backend("moe_grouped_experts")`` says which ran: 'triton' or 'naive' (and
``last_backend("moe_grouped_experts_backward")`` for the backward). Custom ops: where a gradient is needed (grad
mode on, a float argument requiring grad) and the kernels run, ``archzoo::moe_grouped_experts_train``, eagerly too: it
also returns what the backward needs (the plan; g, u and h x w by sorted row), and its autograd formula's backward is
another custom op (``archzoo::moe_grouped_experts_backward``), so ``torch.compile`` traces forward and backward
whole. Without a gradient, compiled: ``archzoo::moe_grouped_experts``, which saves nothing (eagerly the kernels are
called directly). Where the kernels do not run: the reference, plain PyTorch that autograd differentiates (traced
into the graph when compiled with a gradient, where ``last_backend`` then records nothing).
"""

from __future__ import annotations

import torch

from .._dispatch import record, use_triton
from ._checks import check_grouped
from .naive import naive_moe_grouped_experts

OP = "moe_grouped_experts"
BACKWARD_OP = "moe_grouped_experts_backward"
Tensor = torch.Tensor


def _why_naive(x: Tensor, empty: bool, *tensors) -> str | None:
    """'' where the kernels do not apply to these tensors (the rule's reference), the reason where they could run
    but do not, None where they run. Records nothing (also called at trace time)."""
    if not use_triton(x, *tensors):
        return ""
    return ("float64 inputs: the kernels compute in fp32" if x.dtype == torch.float64
            else "no assignments: nothing to compute" if empty else None)  # fmt: skip


def _kernels_run(x: Tensor, empty: bool, *tensors) -> bool:
    """Whether the Triton kernels run on these tensors; records which backend runs, and where the kernels could run
    but do not, why (logged once)."""
    why = _why_naive(x, empty, *tensors)
    record(OP, "naive" if why is not None else "triton", why or None)
    return why is None


def _run(x, gate_w, up_w, down_w, top_e, top_w, counts=None):
    N, _, _, _, K = check_grouped(x, gate_w, up_w, down_w, top_e, top_w)
    if _kernels_run(x, N * K == 0, gate_w, up_w, down_w, top_e, top_w):
        from .triton import moe_grouped_experts as fn

        return fn(x, gate_w, up_w, down_w, top_e, top_w, counts=counts)
    return naive_moe_grouped_experts(x, gate_w, up_w, down_w, top_e, top_w)


@torch.library.custom_op("archzoo::moe_grouped_experts", mutates_args=())
def _grouped_op(
    x: Tensor, gate_w: Tensor, up_w: Tensor, down_w: Tensor, top_e: Tensor, top_w: Tensor, counts: Tensor | None
) -> Tensor:
    return _run(x, gate_w, up_w, down_w, top_e, top_w, counts)  # a new tensor in every path


@_grouped_op.register_fake
def _(x, gate_w, up_w, down_w, top_e, top_w, counts):
    N, D, _, _, _ = check_grouped(x, gate_w, up_w, down_w, top_e, top_w)  # bad shapes fail at trace time
    return x.new_empty((N, D))


# The training forward's outputs: out (N, D), then for the backward h, g, u (R, F) in x's dtype, slot_assignment
# (R,), block_expert (R / BLOCK_M,), expert_block (E + 1,) int32 (``triton.moe_grouped_experts(..., save=True)``).
_Saved = tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]


@torch.library.custom_op("archzoo::moe_grouped_experts_train", mutates_args=())
def _train_op(
    x: Tensor, gate_w: Tensor, up_w: Tensor, down_w: Tensor, top_e: Tensor, top_w: Tensor, counts: Tensor | None
) -> _Saved:
    N, _, _, _, K = check_grouped(x, gate_w, up_w, down_w, top_e, top_w)
    if not _kernels_run(x, N * K == 0, gate_w, up_w, down_w, top_e, top_w):  # moe_grouped_experts never asks
        raise ValueError("archzoo::moe_grouped_experts_train runs the Triton kernels only; where they do not run, "
                         "moe_grouped_experts differentiates the reference")  # fmt: skip
    from .triton import moe_grouped_experts as fn

    return fn(x, gate_w, up_w, down_w, top_e, top_w, save=True, counts=counts)


@_train_op.register_fake
def _(x, gate_w, up_w, down_w, top_e, top_w, counts):
    N, D, E, F, K = check_grouped(x, gate_w, up_w, down_w, top_e, top_w)
    from .triton import plan_sizes

    s = plan_sizes(N, K, E, x.device)  # the sizes the kernels' plan allocates
    i32 = dict(device=x.device, dtype=torch.int32)
    return (x.new_empty((N, D)), *(x.new_empty((s["rows"], F)) for _ in range(3)), torch.empty(s["rows"], **i32),
            torch.empty(s["blocks"], **i32), torch.empty(E + 1, **i32))  # fmt: skip


def _setup_context(ctx, inputs, output) -> None:
    _, *saved = output
    ctx.mark_non_differentiable(*saved)
    ctx.set_materialize_grads(False)  # the saved outputs take no gradient: no zero tensors made for them
    ctx.save_for_backward(*inputs[:6], *saved)  # not the plan's counts (the saved plan holds what they gave)


def _backward(ctx, dout, *_):
    if dout is None:
        return None, None, None, None, None, None, None
    x, gate_w, up_w, down_w, top_e, top_w, *saved = ctx.saved_tensors
    grads = _backward_op(dout, x, gate_w, up_w, down_w, top_w, *saved)
    need = ctx.needs_input_grad
    dx, dgate, dup, ddown, dtop_w = (gr if need[i] else None for i, gr in zip((0, 1, 2, 3, 5), grads, strict=True))
    return dx, dgate, dup, ddown, None, dtop_w, None


_train_op.register_autograd(_backward, setup_context=_setup_context)


@torch.library.custom_op("archzoo::moe_grouped_experts_backward", mutates_args=())
def _backward_op(
    dout: Tensor, x: Tensor, gate_w: Tensor, up_w: Tensor, down_w: Tensor, top_w: Tensor, h: Tensor, g: Tensor,
    u: Tensor, slot_assignment: Tensor, block_expert: Tensor, expert_block: Tensor,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:  # fmt: skip
    from .backward import moe_grouped_experts_backward as fn

    record(BACKWARD_OP, "triton")
    return fn(dout, x, gate_w, up_w, down_w, top_w, h, g, u, slot_assignment, block_expert, expert_block)


@_backward_op.register_fake
def _(dout, x, gate_w, up_w, down_w, top_w, h, g, u, slot_assignment, block_expert, expert_block):
    return (x.new_empty(x.shape), torch.empty_like(gate_w), torch.empty_like(up_w), torch.empty_like(down_w),
            torch.empty_like(top_w))  # fmt: skip


def _grad_needed(*tensors: Tensor) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def moe_grouped_experts(
    x: Tensor, gate_w: Tensor, up_w: Tensor, down_w: Tensor, top_e: Tensor, top_w: Tensor, counts: Tensor | None = None
) -> Tensor:
    """The routed experts of any number of tokens (module docstring). x (N, D), any strides; gate_w, up_w (E, F, D)
    and down_w (E, D, F), the MoE layer's stacked expert weights in x's dtype; top_e (N, K) int32 / int64, each
    token's chosen experts (in 0..E-1: not checked, that would read the device); top_w (N, K) their routing weights
    (rounded to x's dtype, as the layer does; a dropped assignment has weight 0, adds exactly 0 and takes no
    gradient). Returns (N, D) in x's dtype, sums in fp32 with ``naive_moe_decode_experts``' roundings between the
    projections. No host synchronisation, forward or backward (a CUDA graph can capture both); traceable by
    ``torch.compile``; differentiable in x, the three weights and top_w (not twice). ValueError on bad shapes,
    naming the argument. ``counts``: the plan's per-chunk expert counts that ``moe_route`` returned with these
    top_e (its third output), which spare the plan its count launch; ignored where the reference runs."""
    args = (x, gate_w, up_w, down_w, top_e, top_w)
    if _grad_needed(x, gate_w, up_w, down_w, top_w):
        N, _, _, _, K = check_grouped(*args)
        if _why_naive(x, N * K == 0, gate_w, up_w, down_w, top_e, top_w) is None:
            return _train_op(*args, counts)[0]  # the kernels' forward, saving what their backward needs
        if torch.compiler.is_compiling():
            return naive_moe_grouped_experts(*args)  # traced as PyTorch ops, which autograd differentiates
    elif torch.compiler.is_compiling():
        return _grouped_op(*args, counts)
    return _run(*args, counts)  # eagerly: the kernels saving nothing, or the reference (its gradient by autograd)


__all__ = ["BACKWARD_OP", "OP", "moe_grouped_experts", "naive_moe_grouped_experts"]
