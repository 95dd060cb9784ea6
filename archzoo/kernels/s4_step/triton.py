"""Triton kernel of ``s4d_decode_step``: an S4D layer's decode step, from the block's input to o_proj's input, in one
launch.

Compiled by torch.compile, the step was three kernels an S4 layer (H100, S4D student, batch 1: the norm's sum of
squares 1.3 us, the step with the norm, D and GELU 6.1 us, the state's write 1.2 us; 8.6 us a layer for a state of
295 KB, docs/results/decode/profile_h100_stepprof_b1_16_64.log). Here, grid (B, cdiv(H, BLOCK_H)): program (b, j)
- sums the squares of row b of x over all H channels (one tile of next_pow2(H), from L2: every program of the row
  does it, so no launch and no workspace is needed for the norm), in fp32;
- normalises its BLOCK_H channels with RMSNorm's roundings (x * rstd rounded to x's dtype, times the weight rounded
  to the output dtype: ``decode_linear``'s ``_round``, exact under the interpreter too);
- loads the channels' state (BLOCK_H, M) modes, each a (re, im) pair for a complex spectrum, and dA, dB, C, updates
  the state (h = dA h + dB u), stores it, and reduces y = 2 Re(C . h) (C . h for real modes) over the modes;
- adds D u, applies GELU (erf) and stores y rounded to the output dtype.
Everything in fp32 (the layer's cdt for fp32 / bf16 / fp16 models; fp64 goes to the reference). With PDL (the
decode GEMVs' chain, ``_pdl.py``) it lets the next kernel launch at once and waits before its first load: x is the
kernel before's output.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._launch import launch
from .._pdl import gdc_launch_dependents, gdc_wait, pdl_enabled
from .._sizes import next_pow2
from ..decode_linear.triton import _round  # rounding to nearest even, also under the interpreter

# BLOCK_H: channels a program (a power of 2); num_warps. Teacher-shaped S4D (H 576, 32 complex modes): 36 programs a
# row at 16, each a (16, 32) tile of each of state, dA, dB, C (two planes each).
CUDA_CONFIG = dict(BLOCK_H=16, num_warps=4)
INTERPRET_CONFIG = dict(BLOCK_H=4, num_warps=1)  # several programs a row, a ragged last one, at small H
CONFIG_OVERRIDE: dict = {}
_TL_DTYPE = {torch.float16: tl.float16, torch.bfloat16: tl.bfloat16, torch.float32: tl.float32}


@triton.jit
def _pairs(rows, offs_k, mask, BLOCK_H: tl.constexpr, BLOCK_M: tl.constexpr):
    """The (BLOCK_H, 2 BLOCK_M) tile of (re, im) pairs at ``rows`` (BLOCK_H, 1) + ``offs_k`` -> its (re, im) planes,
    each (BLOCK_H, BLOCK_M), in fp32."""
    t = tl.load(rows + offs_k[None, :], mask=mask, other=0.0).to(tl.float32)
    return tl.split(tl.reshape(t, (BLOCK_H, BLOCK_M, 2)))


@triton.jit
def _s4d_step_kernel(
    x_ptr, nw_ptr, s_ptr, a_ptr, b_ptr, c_ptr, d_ptr, y_ptr,
    H, M, s_xb, s_xh, s_sb, s_sh, s_sm, s_ah, s_am, s_bh, s_bm, s_ch, s_cm,
    EPS: tl.constexpr, HAS_NORM: tl.constexpr, COMPLEX: tl.constexpr, N_DTYPE: tl.constexpr,
    BLOCK_H: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_ALL: tl.constexpr, PDL: tl.constexpr,
):  # fmt: skip
    """COMPLEX: mode m's (re, im) at 2m and 2m + 1 of a channel's state, dA, dB, C (pairs adjacent and modes
    contiguous; s_?m unused); real: mode m at m * s_?m."""
    if PDL:  # x is the kernel before's output
        gdc_launch_dependents()
        gdc_wait()
    b = tl.program_id(0).to(tl.int64)
    offs_h = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    mask_h = offs_h < H
    # every tile's load first, before the norm's reduction (its barrier), so that they are all in flight together
    if COMPLEX:  # (BLOCK_H, 2 BLOCK_M) tiles of adjacent (re, im) pairs: contiguous, vector loads
        offs_k = tl.arange(0, 2 * BLOCK_M)
        mask = mask_h[:, None] & (offs_k < 2 * M)[None, :]
        s_at = s_ptr + b * s_sb + offs_h[:, None] * s_sh + offs_k[None, :]
        hr, hi = _pairs(s_ptr + b * s_sb + offs_h[:, None] * s_sh, offs_k, mask, BLOCK_H, BLOCK_M)
        ar, ai = _pairs(a_ptr + offs_h[:, None] * s_ah, offs_k, mask, BLOCK_H, BLOCK_M)
        br, bi = _pairs(b_ptr + offs_h[:, None] * s_bh, offs_k, mask, BLOCK_H, BLOCK_M)
        cr, ci = _pairs(c_ptr + offs_h[:, None] * s_ch, offs_k, mask, BLOCK_H, BLOCK_M)
    else:
        offs_m = tl.arange(0, BLOCK_M)
        mask = mask_h[:, None] & (offs_m < M)[None, :]
        s_at = s_ptr + b * s_sb + offs_h[:, None] * s_sh + offs_m[None, :] * s_sm
        h = tl.load(s_at, mask=mask, other=0.0).to(tl.float32)
        a = tl.load(a_ptr + offs_h[:, None] * s_ah + offs_m[None, :] * s_am, mask=mask, other=0.0).to(tl.float32)
        bb = tl.load(b_ptr + offs_h[:, None] * s_bh + offs_m[None, :] * s_bm, mask=mask, other=0.0).to(tl.float32)
        c = tl.load(c_ptr + offs_h[:, None] * s_ch + offs_m[None, :] * s_cm, mask=mask, other=0.0).to(tl.float32)
    d = tl.load(d_ptr + offs_h, mask=mask_h, other=0.0).to(tl.float32)
    x_row = x_ptr + b * s_xb
    XDT = x_ptr.dtype.element_ty
    x = tl.load(x_row + offs_h * s_xh, mask=mask_h, other=0.0).to(tl.float32)
    if HAS_NORM:  # RMSNorm over the whole row: fp32 statistics, x * rstd rounded to x's dtype, times the weight
        offs_all = tl.arange(0, BLOCK_ALL)
        xa = tl.load(x_row + offs_all * s_xh, mask=offs_all < H, other=0.0).to(tl.float32)
        nw = tl.load(nw_ptr + offs_h, mask=mask_h, other=0.0).to(tl.float32)
        rstd = tl.math.rsqrt(tl.sum(xa * xa, axis=0) / H + EPS)
        u = _round(_round(x * rstd, XDT) * nw, N_DTYPE)
    else:
        u = x
    uu = u[:, None]
    if COMPLEX:
        nr = ar * hr - ai * hi + br * uu
        ni = ar * hi + ai * hr + bi * uu
        new = tl.reshape(tl.join(nr, ni), (BLOCK_H, 2 * BLOCK_M))  # back to (re, im) pairs
        tl.store(s_at, new.to(s_ptr.dtype.element_ty), mask=mask)
        y = 2 * tl.sum(cr * nr - ci * ni, axis=1)
    else:
        h = a * h + bb * uu
        tl.store(s_at, h.to(s_ptr.dtype.element_ty), mask=mask)
        y = tl.sum(c * h, axis=1)
    y += d * u
    y = 0.5 * y * (1.0 + tl.math.erf(y * 0.7071067811865476))  # GELU, erf form (F.gelu's default)
    YDT = y_ptr.dtype.element_ty
    tl.store(y_ptr + b * H + offs_h, _round(y, YDT).to(YDT), mask=mask_h)


def _config(device: torch.device) -> dict:
    return {**(CUDA_CONFIG if device.type == "cuda" else INTERPRET_CONFIG), **CONFIG_OVERRIDE}


def s4d_decode_step(
    x: torch.Tensor,
    norm_weight: torch.Tensor | None,
    eps: float,
    state: torch.Tensor,
    dA: torch.Tensor,
    dB: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor,
) -> torch.Tensor:
    """The launch (the dispatcher validated the shapes and dtypes: fp16 / bf16 / fp32, no fp64) -> y (B, H)."""
    B, H = x.shape
    M = dA.shape[1]
    cplx = dA.dim() == 3
    out_dtype = x.dtype if norm_weight is None else torch.promote_types(x.dtype, norm_weight.dtype)
    y = torch.empty((B, H), device=x.device, dtype=out_dtype)
    cfg = _config(x.device)
    pdl = pdl_enabled(x.device)
    step = 2 if cplx else 1  # a mode's stride in the state
    ints = (H, M, *x.stride(), state.stride(0), state.stride(1), step * state.stride(2), dA.stride(0), dA.stride(1),
            dB.stride(0), dB.stride(1), C.stride(0), C.stride(1))  # fmt: skip
    consts = (float(eps), norm_weight is not None, cplx, _TL_DTYPE[out_dtype], cfg["BLOCK_H"], max(2, next_pow2(M)),
              next_pow2(H), pdl)  # fmt: skip
    nw = norm_weight if norm_weight is not None else x  # unused without the norm: a dummy tensor, never None
    grid = (B, triton.cdiv(H, cfg["BLOCK_H"]))
    dev = x.get_device() if x.is_cuda else -1
    launch(_s4d_step_kernel, grid, (x, nw, state, dA, dB, C, D, y), ints, consts, cfg["num_warps"], dev, pdl)
    return y


__all__ = ["CONFIG_OVERRIDE", "CUDA_CONFIG", "INTERPRET_CONFIG", "s4d_decode_step"]
