"""``moe_route``: the MoE layer's routing of many tokens (``MoE.forward``'s router, softmax, top-k by max passes and
renormalisation) in one Triton launch that also counts the grouped plan's chunks (``route.py`` says why), with its
gradient in PyTorch.

Custom op ``archzoo::moe_route`` (so ``torch.compile`` traces it whole and a CUDA graph captures it); its autograd
formula recomputes the logits (one small product) and differentiates the routing the reference's way
(``_route_backward``): the renormalised weights' gradient into the chosen probabilities, the softmax's backward into
the logits, rounded to x's dtype as ``F.linear``'s output gradient, then the router's product. Where the kernel does
not run (float64, no assignments, tensors the Triton path does not take) the reference runs, PyTorch that autograd
differentiates, and the counts are None.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .._dispatch import record, use_triton
from ..moe_step._checks import check_router
from ..moe_step.naive import naive_moe_route, route, router_logits

OP = "moe_route"
Tensor = torch.Tensor


def _check(x: Tensor, router_w: Tensor, router_b: Tensor | None, top_k: int) -> tuple[int, int, int]:
    """-> (N, D, E); ValueError naming the argument that does not fit."""
    N, D, E = check_router(x, router_w, router_b)
    if not 1 <= top_k <= E:
        raise ValueError(f"top_k must be in 1..{E} (the experts), got {top_k}")
    if router_w.dtype != x.dtype or (router_b is not None and router_b.dtype != x.dtype):
        raise ValueError(f"router_w / router_b must have x's dtype {x.dtype}")
    return N, D, E


def reference_route(
    x: Tensor, router_w: Tensor, router_b: Tensor | None, top_k: int, norm_topk_prob: bool
) -> tuple[Tensor, Tensor]:
    """The reference: ``moe_step.naive_moe_route`` (``MoE.forward``'s sequence: logits in x's dtype widened to fp32,
    or fp64 for fp64 x; softmax; top-k by max passes; renormalised) -> (top_w (N, K) in x's dtype, as the layer
    hands them to its experts, top_e (N, K) int32)."""
    top_p, top_e = naive_moe_route(x, router_w, router_b, top_k, norm_topk_prob)
    return top_p.to(x.dtype), top_e.to(torch.int32)


def _route_backward(
    x: Tensor,
    router_w: Tensor,
    router_b: Tensor | None,
    top_e: Tensor,
    dtop_w: Tensor | None,
    norm: bool,
    dlogits_in: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """(dx, drouter_w, drouter_b) from the chosen weights' gradient dtop_w (N, K) and the logits' own (N, E) fp32
    (the layer's losses; either may be None), as autograd differentiates ``reference_route`` with its logits as a
    second output: fp32 from the weights back to the logits, the two summed there, then x's dtype through the
    router's product."""
    dl = None  # (N, E) fp32
    if dtop_w is not None:
        logits = F.linear(x, router_w, router_b).float()
        probs = logits.softmax(dim=-1)  # (N, E)
        idx = top_e.long()
        chosen = probs.gather(-1, idx)  # (N, K)
        g = dtop_w.float()
        if norm:  # w_j = p_j / T, T = sum_i p_i: dp_j = g_j / T - sum_i g_i p_i / T^2
            total = chosen.sum(dim=-1, keepdim=True)
            g = g / total - (g * chosen).sum(dim=-1, keepdim=True) / (total * total)
        dprobs = torch.zeros_like(probs).scatter_add_(-1, idx, g)
        dl = probs * (dprobs - (dprobs * probs).sum(dim=-1, keepdim=True))
    if dlogits_in is not None:
        dl = dlogits_in.float() if dl is None else dl + dlogits_in.float()
    dlogits = dl.to(x.dtype)  # the op's backward is called with one of the two at least
    db = dlogits.sum(dim=0) if router_b is not None else None
    return dlogits @ router_w, dlogits.t() @ x, db


@torch.library.custom_op("archzoo::moe_route", mutates_args=())
def _route_op(
    x: Tensor, router_w: Tensor, router_b: Tensor | None, top_k: int, norm_topk_prob: bool
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    from .route import route_and_count

    return route_and_count(x, router_w, router_b, top_k, norm_topk_prob)


@_route_op.register_fake
def _(x, router_w, router_b, top_k, norm_topk_prob):
    from .triton import plan_sizes

    N, _, E = _check(x, router_w, router_b, top_k)
    chunks = plan_sizes(N, top_k, E, x.device)["route_chunks"]
    i32 = dict(device=x.device, dtype=torch.int32)
    logits = torch.empty((N, E), device=x.device, dtype=torch.float32)
    return x.new_empty((N, top_k)), torch.empty((N, top_k), **i32), torch.empty((chunks, E), **i32), logits


def _setup_context(ctx, inputs, output) -> None:
    x, router_w, router_b, _, norm = inputs
    _, top_e, counts, _ = output
    ctx.mark_non_differentiable(top_e, counts)
    ctx.set_materialize_grads(False)
    ctx.norm = norm
    ctx.save_for_backward(x, router_w, router_b, top_e)


def _backward(ctx, dtop_w, _de, _dc, dlogits):
    if dtop_w is None and dlogits is None:
        return None, None, None, None, None
    x, router_w, router_b, top_e = ctx.saved_tensors
    dx, dw, db = _route_backward(x, router_w, router_b, top_e, dtop_w, ctx.norm, dlogits)
    need = ctx.needs_input_grad
    return dx if need[0] else None, dw if need[1] else None, db if need[2] else None, None, None


_route_op.register_autograd(_backward, setup_context=_setup_context)


def moe_route(
    x: Tensor, router_w: Tensor, router_b: Tensor | None, top_k: int, norm_topk_prob: bool, *,
    return_logits: bool = False,
) -> tuple[Tensor, ...]:  # fmt: skip
    """x (N, D); router_w (E, D), router_b (E,) or None, in x's dtype -> (top_w (N, K) in x's dtype, top_e (N, K)
    int32, counts): each token's K experts and their weights as ``MoE.forward`` routes (module docstring), and the
    grouped plan's per-chunk expert counts for ``moe_grouped_experts(..., counts=counts)`` (None where the reference
    ran). ``return_logits``: a fourth, the router's logits (N, E) as the layer holds them (x's dtype widened to fp32;
    fp64 for fp64 x), for its losses. Differentiable in x, router_w and router_b through top_w and the logits.
    ``last_backend("moe_route")`` says which ran. ValueError on bad shapes, naming the argument."""
    N, _, _ = _check(x, router_w, router_b, top_k)
    # where the kernel could run but does not, why (logged once, as moe_grouped_experts does); no reason where the
    # Triton path does not apply to these tensors at all (the rule's reference)
    why = None
    if not use_triton(x, router_w, router_b):
        why = ""
    elif x.dtype == torch.float64:
        why = "float64 inputs: the kernel computes in fp32"
    elif N == 0:
        why = "no tokens: nothing to route"
    if why is None:
        record(OP, "triton")
        out = _route_op(x, router_w, router_b, top_k, bool(norm_topk_prob))
        return out if return_logits else out[:3]
    record(OP, "naive", why or None)
    if not return_logits:
        return (*reference_route(x, router_w, router_b, top_k, norm_topk_prob), None)
    logits = router_logits(x, router_w, router_b)
    _, top_p, top_e = route(logits, top_k, norm_topk_prob)
    return top_p.to(x.dtype), top_e.to(torch.int32), None, logits


__all__ = ["OP", "moe_route", "reference_route"]
