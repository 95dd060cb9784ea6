"""Rotary position embedding in the Llama / Hugging Face layout (rotate_half over two halves)."""

from __future__ import annotations

import torch
from torch import nn


def inverse_frequencies(dim: int, theta: float, device=None, pairs=None, base_dim: int | None = None) -> torch.Tensor:
    """theta^(-2i / dim) for i < dim / 2, in fp32; with ``pairs``, theta^(-2 p / base_dim) for p in pairs (a
    subset of the pairs of a ``base_dim``-wide RoPE: MLA's decoupled key converted from a wider teacher head)."""
    if pairs is None:
        return 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float32, device=device) / dim))
    p = torch.tensor(list(pairs), dtype=torch.float32, device=device)
    return 1.0 / (theta ** (2 * p / base_dim))


class RotaryEmbedding(nn.Module):
    """cos / sin of the rotary angles, computed in fp32 whatever the model's dtype.

    ``inv_freq`` stays fp32 through ``model.to(torch.bfloat16)`` and the like (``_apply``): rounded to bf16, the
    positions and frequencies give wrong angles past position 256 (bf16 holds integers exactly only up to
    there), a cosine off by up to 1.8 at position 1,000. Hugging Face's Llama keeps its frequencies in fp32 too.
    """

    def __init__(self, dim: int, theta: float = 10000.0, pairs=None, base_dim: int | None = None):
        """``pairs`` / ``base_dim``: rotate pair i at the frequency of pair ``pairs[i]`` of a ``base_dim``-wide RoPE
        (``inverse_frequencies``) instead of pair i of a ``dim``-wide one."""
        super().__init__()
        if dim % 2:
            raise ValueError(f"RoPE needs an even dimension, got {dim}")
        if pairs is not None:
            pairs = tuple(int(p) for p in pairs)
            if len(pairs) != dim // 2 or base_dim is None or not all(0 <= p < base_dim // 2 for p in pairs):
                raise ValueError(f"RoPE of dim {dim} needs {dim // 2} pairs in [0, base_dim / 2), got {pairs} of "
                                 f"base_dim {base_dim}")  # fmt: skip
        self.dim, self.theta, self.pairs, self.base_dim = dim, theta, pairs, base_dim
        self.chosen_pairs = pairs is not None  # what ``span`` reads (a bool: reading the tuple guards on it)
        self.register_buffer("inv_freq", self.frequencies(None), persistent=False)

    def frequencies(self, device) -> torch.Tensor:
        """The inverse frequencies (dim / 2,), fp32, made anew (after a cast, or a model built on the meta device)."""
        return inverse_frequencies(self.dim, self.theta, device, self.pairs, self.base_dim)

    def _apply(self, fn, recurse: bool = True):
        super()._apply(fn, recurse)
        if self.inv_freq.dtype != torch.float32:  # a cast of the module: the frequencies made anew in fp32
            self.inv_freq = self.frequencies(self.inv_freq.device)
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
        build its own: six kernels a layer, about a sixth of a Llama layer's eager forward. Layers whose pairs
        differ (MLA converted with ``mla_rope='norm'``) each build their own."""

        def build():
            q_pos = torch.arange(ctx.pos, ctx.pos + T, device=device)
            return (q_pos, *self(q_pos, dtype))

        if self.chosen_pairs:
            # Not memoised: a key per layer would grow ``ctx.memo`` by one entry a layer, and a block compiled by
            # the trainer guards on the memo's keys (and on ``pairs``, read for the key): every layer would
            # recompile, and past dynamo's limit of 8 train eagerly. Built from ``inv_freq`` alone, the graph is
            # the same for every layer.
            return build()
        key = ("rope_span", self.dim, self.theta, self.base_dim, ctx.pos, T, dtype, device)
        return ctx.memoised(key, build)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, H, T, D) or (B, T, D) with cos/sin (T, D), or per row (B, T, D) from (B, T) positions."""
    if cos.dim() == 3 and x.dim() == 4:
        cos, sin = cos[:, None], sin[:, None]  # (B, 1, T, D): the same angles for every head
    return x * cos + rotate_half(x) * sin
