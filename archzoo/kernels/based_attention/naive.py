"""BASED attention in PyTorch: the quadratic reference and the Taylor feature map.

BASED (Arora et al. 2024) is linear attention whose feature map is the second-order Taylor expansion of
exp(q.k / sqrt(d)): with s = q.k / sqrt(d) for queries and keys of ``d`` dims,

    phi(q) . phi(k) = 1 + s + s^2 / 2,  phi(x) = [1, x / d^(1/4), vec(x x^T) / (sqrt(2) sqrt(d))]   (1 + d + d^2)

    o_t = sum_{s<=t} a_ts v_s / (sum_{s<=t} a_ts + eps),  a_ts = 1 + s_ts + s_ts^2 / 2.

So the same output comes two ways: expanding every key to 1 + d + d^2 features and running linear attention
(the recurrent form a cache needs: a state of (1 + d + d^2) x Dv), or from the d-dim dot products directly,
quadratic in T but never expanding (what the Triton kernel does, as fla's ``parallel_based``).
"""

from __future__ import annotations

import math

import torch


def taylor_features(x: torch.Tensor) -> torch.Tensor:
    """phi(x) (..., 1 + d + d^2) of x (..., d): phi(q) . phi(k) = 1 + q.k / sqrt(d) + (q.k)^2 / (2 d)."""
    d = x.shape[-1]
    x2 = (x[..., :, None] * x[..., None, :]).flatten(-2) / math.sqrt(2 * d)  # (..., d^2)
    ones = torch.ones_like(x[..., :1])
    return torch.cat([ones, x / d**0.25, x2], dim=-1)


def check_based(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, eps: float) -> None:
    if q.dim() != 4:
        raise ValueError(f"q must be (B, T, H, d), got shape {tuple(q.shape)}")
    if k.shape != q.shape:
        raise ValueError(f"k must have q's shape {tuple(q.shape)}, got {tuple(k.shape)}")
    if v.dim() != 4 or v.shape[:3] != q.shape[:3]:
        raise ValueError(f"v must be (B, T, H, Dv) with (B, T, H) = {tuple(q.shape[:3])}, got {tuple(v.shape)}")
    if q.shape[1] == 0:
        raise ValueError("q, k and v must hold at least one position (T >= 1)")
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")


def naive_based_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """o (B, T, H, Dv) for q, k (B, T, H, d), v (B, T, H, Dv), in at least fp32, returned in v's dtype:
    the (T, T) weights a_ts written out (tests only: memory grows with T^2)."""
    check_based(q, k, v, eps)
    acc = torch.promote_types(q.dtype, torch.float32)
    qf, kf, vf = (x.to(acc).transpose(1, 2) for x in (q, k, v))  # (B, H, T, .)
    s = qf @ kf.transpose(-1, -2) / math.sqrt(q.shape[-1])  # (B, H, T, T)
    a = (1 + s + s * s / 2).tril()
    o = (a @ vf) / (a.sum(-1, keepdim=True) + eps)
    return o.transpose(1, 2).to(v.dtype)
