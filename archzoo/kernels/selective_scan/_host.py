"""Selective scan, host side: block sizes and the stride / shape arithmetic of the launches (triton.py plans)."""

from __future__ import annotations

import torch
import triton.language as tl

from .._sizes import next_pow2 as _next_pow2


def _tl_dtype(dt: torch.dtype):
    """Accumulation / state dtype of the kernels: fp32, or fp64 when an input is fp64."""
    return tl.float64 if dt == torch.float64 else tl.float32


def _pow2_divisor(m: int, cap: int) -> int:
    """Largest power of two <= cap dividing m."""
    p = 1
    while p * 2 <= cap and m % (p * 2) == 0:
        p *= 2
    return p


def _block_d(d: int, groups: int, cap: int) -> int:
    """Channels per program: <= cap, and a divisor of d / groups so a block never straddles two groups."""
    if groups == 1:
        return min(cap, _next_pow2(d))
    return _pow2_divisor(d // groups, cap)


def _bc_strides(dim: int, strides: tuple) -> tuple[bool, tuple[int, int, int, int]]:
    """-> (variable, strides (s_b, s_g, s_n, s_l)) of a B / C (or its gradient) with ``dim`` dims and these
    strides; for a (d, n) tensor the 'group' index is the channel."""
    if dim == 2:
        return False, (0, strides[0], strides[1], 0)
    if dim == 3:  # (b, n, l)
        return True, (strides[0], 0, strides[1], strides[2])
    return True, tuple(strides)


def _bc_view(t: torch.Tensor) -> tuple[bool, tuple[int, int, int, int]]:
    return _bc_strides(t.dim(), t.stride())


def _groups(B: torch.Tensor, C: torch.Tensor, grouped_dim: int) -> int:
    """Group count the channel blocks must respect: the finer of B's and C's (both divide d).
    Only tensors with ``grouped_dim`` dims ((b, g, n, l) in the scan, (b, g, n) in decode) are grouped."""
    gb = B.shape[1] if B.dim() == grouped_dim else 1
    gc = C.shape[1] if C.dim() == grouped_dim else 1
    return max(gb, gc)


def _contig_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    """The strides torch.empty(shape) gets."""
    return torch.empty(shape, device="meta").stride()


def _contig_last(t: torch.Tensor | None) -> torch.Tensor | None:
    """Make the last (time) axis unit-stride for coalesced tile loads; other layouts are copied."""
    if t is None or t.stride(-1) == 1:
        return t
    return t.contiguous()


def _sig(t: torch.Tensor | None) -> tuple | None:
    return None if t is None else (t.shape, t.stride(), t.dtype, t.device)
