"""Tensor-memory-accelerator (TMA) loads for the Triton GEMMs: when a kernel may build its tile loads from
``tl.make_tensor_descriptor`` and what its launch needs for that.

Why: on sm_90 Triton lowers a descriptor's ``load`` to a bulk tensor copy (``cp.async.bulk.tensor``, one thread
issues a whole tile, completion on an mbarrier) that its pipeliner overlaps with the wgmma of the tile before;
pointer loads are ``cp.async`` of 16 bytes a thread, with every thread's addresses computed and masked. The MoE
grouped GEMMs (``moe_grouped``) ran at about half of cuBLAS's rate on the same FLOPs with pointer loads
(docs/kernels.md, "MoE experts as grouped GEMMs").

A descriptor made on the device needs 128 bytes of global scratch a program, which Triton's launcher asks of the
allocator set by ``triton.set_allocator`` (a context variable: unset in a new thread, and the default raises).
``ensure_allocator`` sets one that takes the scratch from torch's caching allocator on the current stream (so a
CUDA graph captures it from its pool) wherever none is set; a caller's own allocator is kept.

What a descriptor asks (the CUDA driver's ``cuTensorMapEncodeTiled``): a 16-byte aligned base, the last dimension
contiguous, every other stride a multiple of 16 bytes. ``tma_ok`` checks those for a 2-D view; a kernel falls back
to its pointer loads where it fails. Triton's interpreter runs descriptor loads too (out-of-bounds reads give 0, as
the hardware's), so the CPU tests cover both paths.
"""

from __future__ import annotations

import torch
import triton
from triton.runtime import _allocation


def _torch_scratch(size: int, alignment: int, stream: int | None) -> torch.Tensor:
    return torch.empty(size, device="cuda", dtype=torch.int8)


def ensure_allocator() -> None:
    """Set the descriptor scratch's allocator for this context unless one is set (kept if it is)."""
    if isinstance(_allocation._allocator.get(), _allocation.NullAllocator):
        triton.set_allocator(_torch_scratch)


def tma_ok(t: torch.Tensor, row_stride: int) -> bool:
    """Whether ``t``'s storage seen as rows of ``row_stride`` elements can be read by a tensor descriptor: a 16-byte
    aligned base and the row stride a multiple of 16 bytes. The caller checks the rest of its 2-D view: one
    contiguous dimension, the rows evenly strided in ``t``."""
    return t.data_ptr() % 16 == 0 and row_stride > 0 and (row_stride * t.element_size()) % 16 == 0


__all__ = ["ensure_allocator", "tma_ok"]
