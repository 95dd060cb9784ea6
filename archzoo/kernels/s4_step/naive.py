"""Reference of ``s4d_decode_step``: the S4D layer's decode step as ``layers/s4.py`` computes it, op by op."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..decode_linear.naive import rms_norm  # RMSNorm.forward, step for step


def naive_s4d_decode_step(
    x: torch.Tensor,
    norm_weight: torch.Tensor | None,
    eps: float,
    state: torch.Tensor,
    dA: torch.Tensor,
    dB: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor,
) -> torch.Tensor:
    """x (B, H) -> GELU(SSM(norm(x)) + D u) (B, H) in the norm's output dtype (x's and the norm weight's promoted,
    as ``RMSNorm`` returns; x's without a norm); ``state`` (B, H, S) updated in place.

    Complex modes (dA, dB, C of shape (H, M, 2), (re, im) pairs; S = 2 M): h = dA h + dB u, y = 2 Re(C . h); real
    ones ((H, M); S = M): y = C . h. In the promoted dtype of x, the spectrum and fp32 (``S4D``'s ``cdt``)."""
    u = x if norm_weight is None else rms_norm(x, norm_weight, eps)
    out_dtype = u.dtype
    cdt = torch.promote_types(torch.promote_types(u.dtype, dA.dtype), torch.float32)
    u = u.to(cdt)[..., None]  # (B, H, 1)
    dA, dB, C = dA.to(cdt), dB.to(cdt), C.to(cdt)
    if dA.dim() == 2:  # real modes
        h = dA * state.to(cdt) + dB * u
        state.copy_(h.to(state.dtype))
        y = (C * h).sum(-1)
    else:
        h = state.view(*state.shape[:2], dA.shape[1], 2).to(cdt)
        hr, hi = h[..., 0], h[..., 1]
        nr = dA[..., 0] * hr - dA[..., 1] * hi + dB[..., 0] * u
        ni = dA[..., 0] * hi + dA[..., 1] * hr + dB[..., 1] * u
        state.copy_(torch.stack([nr, ni], dim=-1).view(state.shape).to(state.dtype))
        y = 2 * (C[..., 0] * nr - C[..., 1] * ni).sum(-1)
    y = y + D.to(cdt) * u[..., 0]
    return F.gelu(y).to(out_dtype)
