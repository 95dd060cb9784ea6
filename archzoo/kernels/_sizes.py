"""Launch-size arithmetic the Triton wrappers share: ceil division, powers of two, the GPU's SM count."""

from __future__ import annotations

import functools

import torch


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def next_pow2(x: int) -> int:
    """The least power of two >= x (1 for x <= 1)."""
    return 1 << max(0, (x - 1).bit_length())


def prev_pow2(x: int) -> int:
    """The greatest power of two <= x (1 for x <= 1)."""
    return 1 << max(0, x.bit_length() - 1)


@functools.cache
def sm_count(index: int) -> int:
    """Streaming multiprocessors of CUDA device ``index``."""
    return torch.cuda.get_device_properties(index).multi_processor_count
