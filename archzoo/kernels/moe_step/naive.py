"""References for the decode step's MoE ops: ``naive_moe_decode_experts`` (the routed experts of a few tokens, each
reading only its chosen experts) and ``naive_moe_decode_step`` (the router, its softmax and top-k, then those experts).

The same products and roundings as ``archzoo.layers.moe.MoE``: ``_static``'s gather branch (which the MoE layer ran
before these kernels, and still runs where no Triton kernel does): per token and choice, the expert's gate and up
rows against x, rounded to x's dtype, SiLU(gate) x up rounded; then each choice's output as its down rows against
that product times the routing weight, and the choices summed. The routing as ``MoE.forward`` computes it on its
static path: the router's ``F.linear`` in x's dtype, the logits in fp32 (fp64 for fp64 x), softmax, the top-k as K
max passes (``topk_by_max``, which the layer imports from here) and, with ``norm_topk_prob``, the K weights divided
by their sum.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..decode_linear.naive import rms_norm


def naive_moe_decode_experts(
    x: torch.Tensor, gate_w: torch.Tensor, up_w: torch.Tensor, down_w: torch.Tensor, top_e: torch.Tensor,
    top_w: torch.Tensor,
) -> torch.Tensor:  # fmt: skip
    """x (N, D); gate_w, up_w (E, F, D); down_w (E, D, F); top_e (N, K) int; top_w (N, K) -> (N, D) in x's dtype."""
    # Products summed, not einsums: compiled (the MoE layer's "reductions" form runs this in its decode step), each
    # projection is one reduction that loads the chosen experts' rows by index. An einsum lowers to a batched GEMM,
    # which first copies the gathered weights out (0.18 ms of the MoE student's 1.87 ms step at batch 1 on an H200,
    # docs/decode.md).
    w = top_w.to(x.dtype)
    g, u, d = gate_w[top_e], up_w[top_e], down_w[top_e]  # (N, K, F, D), (N, K, F, D), (N, K, D, F)
    xd = x[:, None, None, :]  # (N, 1, 1, D)
    h = F.silu((xd * g).sum(-1)) * (xd * u).sum(-1)  # (N, K, F)
    return ((h * w[..., None])[:, :, None, :] * d).sum(-1).sum(1)  # (N, K, D) -> (N, D)


def topk_by_max(probs: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``probs.topk(k, dim=-1)`` as k rounds of max-and-mask: (values, indices), largest first. For a small k
    it compiles to one fused kernel where ``topk`` sorts; ties go to the lowest index in each round."""
    vals, idx = [], []
    p = probs
    for _ in range(k):
        v, i = p.max(dim=-1)
        vals.append(v)
        idx.append(i)
        p = p.scatter(-1, i[..., None], float("-inf"))
    return torch.stack(vals, dim=-1), torch.stack(idx, dim=-1)


def route(
    logits: torch.Tensor, top_k: int, norm_topk_prob: bool, by_max: bool = True
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Router logits (N, E) -> (probs (N, E), top_p (N, K), top_e (N, K) int64): softmax, the top-k (by max passes,
    ties to the lowest index, or ``torch.topk``), with ``norm_topk_prob`` the K weights divided by their sum. The
    one routing sequence of ``MoE.forward`` and of the decode step's kernels' reference."""
    probs = logits.softmax(dim=-1)
    top_p, top_e = topk_by_max(probs, top_k) if by_max else probs.topk(top_k, dim=-1)
    if norm_topk_prob:
        top_p = top_p / top_p.sum(dim=-1, keepdim=True)
    return probs, top_p, top_e


def router_logits(x: torch.Tensor, router_w: torch.Tensor, router_b: torch.Tensor | None) -> torch.Tensor:
    """x (N, D); router_w (E, D); router_b (E,) or None -> the router's logits (N, E) as ``MoE.forward`` holds them:
    the product in x's dtype (autocast's under autocast), widened to fp32 (fp64 for fp64 x), the dtype
    ``torch.promote_types(x.dtype, torch.float32)`` gives, without that op's dispatch. bf16 logits would make the
    top-k and the z-loss noisy."""
    return F.linear(x, router_w, router_b).to(torch.float64 if x.dtype == torch.float64 else torch.float32)


def naive_moe_route(
    x: torch.Tensor, router_w: torch.Tensor, router_b: torch.Tensor | None, top_k: int, norm_topk_prob: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """x (N, D); router_w (E, D); router_b (E,) or None -> (top_p (N, K) fp32 / fp64 for fp64 x, top_e (N, K) int64):
    ``MoE.forward``'s routing on its static path (top-k by max passes: ties to the lowest index)."""
    return route(router_logits(x, router_w, router_b), top_k, norm_topk_prob)[1:]


def naive_moe_decode_step(
    x: torch.Tensor, router_w: torch.Tensor, router_b: torch.Tensor | None, gate_w: torch.Tensor, up_w: torch.Tensor,
    down_w: torch.Tensor, top_k: int, norm_topk_prob: bool, norm_weight: torch.Tensor | None = None,
    eps: float = 1e-5, residual: torch.Tensor | None = None,
) -> torch.Tensor:  # fmt: skip
    """x (N, D); router_w (E, D); router_b (E,) or None; gate_w, up_w (E, F, D); down_w (E, D, F) -> (N, D) in x's
    dtype: the routing (``naive_moe_route``), then the chosen experts with the weights in x's dtype. With
    ``norm_weight`` the layer's input is ``RMSNorm(x)`` first (``rms_norm``, eps); with ``residual`` (N, D) the
    result is ``residual + experts`` (the block's residual add, one rounding)."""
    if norm_weight is not None:
        x = rms_norm(x, norm_weight, eps)
    top_p, top_e = naive_moe_route(x, router_w, router_b, top_k, norm_topk_prob)
    out = naive_moe_decode_experts(x, gate_w, up_w, down_w, top_e, top_p.to(x.dtype))
    return out if residual is None else residual + out
