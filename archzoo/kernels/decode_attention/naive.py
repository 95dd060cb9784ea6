"""Decode attention, naive fp32 reference: one query token per row over a static K/V buffer.

Same signatures as ``triton.py``. Positions a row may not see are replaced by zeros before any
arithmetic, so garbage (even NaN) there never reaches the output; a row that sees nothing returns 0.
"""

from __future__ import annotations

import torch


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, visible: torch.Tensor, scale: float | None):
    """q (B, H, D); k (B, Hkv, T, D); v (B, Hkv, T, Dv); visible (B, T) bool -> (B, H, Dv) in q's dtype."""
    B, H, D = q.shape
    G = H // k.shape[1]
    scale = D**-0.5 if scale is None else scale
    vis = visible[:, None, :, None]  # (B, 1, T, 1)
    kf = torch.where(vis, k.float(), 0.0).repeat_interleave(G, dim=1)  # (B, H, T, D)
    vf = torch.where(vis, v.float(), 0.0).repeat_interleave(G, dim=1)  # (B, H, T, Dv)
    s = torch.einsum("bhd,bhtd->bht", q.float(), kf) * scale
    s = s.masked_fill(~visible[:, None, :], float("-inf"))
    p = torch.softmax(s, dim=-1).nan_to_num(0.0)  # a row with nothing visible: all -inf -> NaN -> 0
    return torch.einsum("bht,bhtd->bhd", p, vf).to(q.dtype)


def naive_decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    lengths: torch.Tensor,
    scale: float | None = None,
) -> torch.Tensor:
    """Softmax attention of q (B, H, D) over positions [0, lengths[b]) of k_cache / v_cache (B, Hkv, T_max, D / Dv).

    Query head h reads KV head h // (H / Hkv). Lengths are clamped to [0, T_max]; a row of length 0 gives 0.
    q (B, H, Q, D): Q consecutive query tokens a row, the last at position lengths[b] - 1; query i sees positions
    [0, lengths[b] - (Q - 1 - i)) -> (B, H, Q, Dv).
    """
    T = k_cache.shape[2]
    lengths = lengths.to(q.device).long()
    if q.dim() == 4:
        Q = q.shape[2]
        outs = [naive_decode_attention(q[:, :, i], k_cache, v_cache, lengths - (Q - 1 - i), scale) for i in range(Q)]
        return torch.stack(outs, dim=2)
    visible = torch.arange(T, device=q.device)[None, :] < lengths[:, None]  # (B, T)
    return _attend(q, k_cache, v_cache, visible, scale)


def ring_visible(lengths: torch.Tensor, slots: int, window: int) -> torch.Tensor:
    """(B,) tokens seen -> (B, slots) bool: slot s holds the latest position p <= last = lengths - 1 with
    p % slots == s, and is visible when p >= 0 and p > last - window."""
    last = lengths.long()[:, None] - 1
    s = torch.arange(slots, device=lengths.device)
    p = last - torch.remainder(last - s, slots)
    return (p >= 0) & (p > last - window)


def naive_decode_attention_ring(
    q: torch.Tensor,
    k_ring: torch.Tensor,
    v_ring: torch.Tensor,
    lengths: torch.Tensor,
    window: int,
    scale: float | None = None,
) -> torch.Tensor:
    """Sliding-window decode over a ring buffer k_ring / v_ring (B, Hkv, slots, D / Dv); lengths (B,) counts the
    tokens seen, the current one included (its position is lengths - 1). See ``ring_visible``."""
    return _attend(q, k_ring, v_ring, ring_visible(lengths.to(q.device), k_ring.shape[2], window), scale)
