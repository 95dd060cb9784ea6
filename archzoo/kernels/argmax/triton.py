"""Triton kernels of ``argmax_rows``: the index of each row's maximum in two launches.

A greedy decode step ends in the argmax over the vocabulary (49,152 logits a row for the SmolLM2 students). PyTorch's
reduction runs it as one block a row: on an H100 it took 14.7 us of the teacher's 0.49 ms batch-1 step
(docs/results/decode/profile_h100_once.log), the largest kernel after the GEMVs and the attention's. Here:
- ``_partial_kernel``, grid (B, cdiv(V, BLOCK)): program (b, c) reads chunk c of row b in one tile and writes its
  maximum and that maximum's first index (a NaN, if the chunk has one: the first NaN and NaN);
- ``_final_kernel``, grid (B,): program b reduces its row's chunks the same way, in chunk order, so the first
  maximum of the row wins (and the first NaN over any number), and stores the int64 index.
Both are one tile each (no loop): a row of 49,152 is 12 chunks of 4,096, every chunk's load issued at once.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._launch import launch
from .._sizes import next_pow2

CUDA_CONFIG = dict(BLOCK=4096, num_warps=8, FINAL_WARPS=1)
INTERPRET_CONFIG = dict(BLOCK=1024, num_warps=1, FINAL_WARPS=1)  # tests set 16 (CONFIG_OVERRIDE): several chunks
CONFIG_OVERRIDE: dict = {}
BIG: tl.constexpr = tl.constexpr(2**31 - 1)  # "no index": above any index of a row (rows are checked shorter)


@triton.jit
def _pick(v, idx, mask):
    """(value, index) of the first maximum among the masked-in (v, idx), a NaN first: the NaN of smallest index."""
    nan = (v != v) & mask
    nan_at = tl.min(tl.where(nan, idx, BIG), axis=0)
    key = tl.where(mask & ~nan, v, float("-inf"))
    m = tl.max(key, axis=0)
    at = tl.min(tl.where(mask & ~nan & (key == m), idx, BIG), axis=0)
    at = tl.where(at == BIG, tl.min(tl.where(mask, idx, BIG), axis=0), at)  # every value -inf: the first one
    has_nan = nan_at != BIG
    return tl.where(has_nan, float("nan"), m), tl.where(has_nan, nan_at, at)


@triton.jit
def _partial_kernel(x_ptr, pv_ptr, pi_ptr, V, s_xb, s_xv, n_chunks, BLOCK: tl.constexpr):
    b = tl.program_id(0)
    c = tl.program_id(1)
    offs = c * BLOCK + tl.arange(0, BLOCK)
    mask = offs < V
    v = tl.load(x_ptr + b.to(tl.int64) * s_xb + offs.to(tl.int64) * s_xv, mask=mask, other=float("-inf"))
    m, at = _pick(v.to(tl.float32), offs, mask)
    tl.store(pv_ptr + b * n_chunks + c, m)
    tl.store(pi_ptr + b * n_chunks + c, at)


@triton.jit
def _final_kernel(pv_ptr, pi_ptr, out_ptr, n_chunks, BLOCK_C: tl.constexpr):
    b = tl.program_id(0)
    offs = tl.arange(0, BLOCK_C)
    mask = offs < n_chunks
    v = tl.load(pv_ptr + b * n_chunks + offs, mask=mask, other=float("-inf"))
    idx = tl.load(pi_ptr + b * n_chunks + offs, mask=mask, other=BIG)
    _, at = _pick(v, idx, mask)
    tl.store(out_ptr + b, at.to(tl.int64))


def _config(device: torch.device) -> dict:
    return {**(CUDA_CONFIG if device.type == "cuda" else INTERPRET_CONFIG), **CONFIG_OVERRIDE}


def argmax_rows(x: torch.Tensor) -> torch.Tensor:
    """x (B, V), B >= 1, 1 <= V < 2**31 - 1 (the dispatcher checked) -> (B,) int64, torch.argmax(x, -1)'s."""
    B, V = x.shape
    cfg = _config(x.device)
    dev = x.get_device() if x.is_cuda else 0
    block = min(cfg["BLOCK"], max(16, next_pow2(V)))
    n_chunks = triton.cdiv(V, block)
    pv = torch.empty((B, n_chunks), device=x.device, dtype=torch.float32)
    pi = torch.empty((B, n_chunks), device=x.device, dtype=torch.int32)
    launch(_partial_kernel, (B, n_chunks), (x, pv, pi), (V, *x.stride(), n_chunks), (block,), cfg["num_warps"], dev)
    out = torch.empty((B,), device=x.device, dtype=torch.int64)
    launch(_final_kernel, (B,), (pv, pi, out), (n_chunks,), (max(2, next_pow2(n_chunks)),), cfg["FINAL_WARPS"], dev)
    return out


__all__ = ["CONFIG_OVERRIDE", "CUDA_CONFIG", "INTERPRET_CONFIG", "argmax_rows"]
