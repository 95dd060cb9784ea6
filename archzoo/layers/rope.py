"""Rotary position embedding in the Llama / Hugging Face layout (rotate_half over two halves)."""

from __future__ import annotations

import torch
from torch import nn


def inverse_frequencies(dim: int, theta: float, device=None) -> torch.Tensor:
    """theta^(-2i / dim) for i < dim / 2, in fp32."""
    return 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float32, device=device) / dim))


class RotaryEmbedding(nn.Module):
    """cos / sin of the rotary angles, computed in fp32 whatever the model's dtype.

    ``inv_freq`` stays fp32 through ``model.to(torch.bfloat16)`` and the like (``_apply``): rounded to bf16, the
    positions and frequencies give wrong angles past position 256 (bf16 holds integers exactly only up to
    there), a cosine off by up to 1.8 at position 1,000. Hugging Face's Llama keeps its frequencies in fp32 too.
    """

    def __init__(self, dim: int, theta: float = 10000.0):
        super().__init__()
        if dim % 2:
            raise ValueError(f"RoPE needs an even dimension, got {dim}")
        self.dim, self.theta = dim, theta
        self.register_buffer("inv_freq", inverse_frequencies(dim, theta), persistent=False)

    def _apply(self, fn, recurse: bool = True):
        super()._apply(fn, recurse)
        if self.inv_freq.dtype != torch.float32:  # a cast of the module: the frequencies made anew in fp32
            self.inv_freq = inverse_frequencies(self.dim, self.theta, self.inv_freq.device)
        return self

    def forward(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """positions (T,) or (B, T) -> cos, sin (..., dim), computed in fp32 and cast to ``dtype``."""
        freqs = positions.to(self.inv_freq.dtype)[..., None] * self.inv_freq
        emb = torch.cat([freqs, freqs], dim=-1)
        return emb.cos().to(dtype), emb.sin().to(dtype)

    def span(self, ctx, T: int, device: torch.device, dtype: torch.dtype):
        """The positions ``ctx.pos`` .. ``ctx.pos + T - 1`` (T,) of a forward whose rows share them (training, a
        prefill) and their cos, sin: built by the first layer, read by every other layer of the same rotary
        dim and theta (``ForwardContext.memoised``; the angles do not depend on the layer). Each layer used to
        build its own: six kernels a layer, about a sixth of a Llama layer's eager forward."""

        def build():
            q_pos = torch.arange(ctx.pos, ctx.pos + T, device=device)
            return (q_pos, *self(q_pos, dtype))

        return ctx.memoised(("rope_span", self.dim, self.theta, ctx.pos, T, dtype, device), build)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, H, T, D) or (B, T, D) with cos/sin (T, D), or per row (B, T, D) from (B, T) positions."""
    if cos.dim() == 3 and x.dim() == 4:
        cos, sin = cos[:, None], sin[:, None]  # (B, 1, T, D): the same angles for every head
    return x * cos + rotate_half(x) * sin
