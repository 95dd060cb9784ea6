"""Causal conv1d, decode kernel: outputs of s new steps from the conv state, then the state shifted in place
(causal_conv1d_update in triton.py)."""

from __future__ import annotations

import triton
import triton.language as tl

from .._pdl import gdc_launch_dependents, gdc_wait


@triton.jit
def _conv_update_kernel(
    x_ptr, state_ptr, w_ptr, bias_ptr, out_ptr,
    d, S, s,
    s_x_b, s_x_d, s_x_l, s_s_b, s_s_d, s_s_k, s_w_d, s_w_k, s_o_b, s_o_d, s_o_l,
    W: tl.constexpr, HAS_BIAS: tl.constexpr, SILU: tl.constexpr, ACC: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_S: tl.constexpr, PDL: tl.constexpr,
):  # fmt: skip
    """Index q in the virtual sequence cat(state, x) of length S + s: q < S reads the state, else x[q - S].
    PDL (archzoo/kernels/_pdl.py): launched with programmatic dependent launch in a decode step; the next kernel
    may launch at once, and only the bias (a weight no kernel of the step writes) is read before the wait."""
    if PDL:
        gdc_launch_dependents()
    pid_b = tl.program_id(0).to(tl.int64)
    pid_d = tl.program_id(1)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = offs_d < d
    x_row = x_ptr + pid_b * s_x_b + offs_d * s_x_d
    s_row = state_ptr + pid_b * s_s_b + offs_d * s_s_d
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(ACC)
    if PDL:  # x and the state may have been written by the kernels before this one
        gdc_wait()
    for j in range(0, s):
        if HAS_BIAS:
            acc = bias
        else:
            acc = tl.zeros((BLOCK_D,), dtype=ACC)
        for k in tl.static_range(W):
            q = tl.zeros((BLOCK_D,), dtype=tl.int32) + (S + j - (W - 1) + k)  # same index for every channel
            v = tl.load(s_row + q * s_s_k, mask=mask_d & (q < S), other=0.0).to(ACC)
            v += tl.load(x_row + (q - S) * s_x_l, mask=mask_d & (q >= S), other=0.0).to(ACC)
            acc += tl.load(w_ptr + offs_d * s_w_d + k * s_w_k, mask=mask_d, other=0.0).to(ACC) * v
        if SILU:
            acc = acc * tl.sigmoid(acc)
        tl.store(out_ptr + pid_b * s_o_b + offs_d * s_o_d + j * s_o_l, acc.to(out_ptr.dtype.element_ty), mask=mask_d)
    # shift: new_state[i] = cat(state, x)[s + i]; read everything before writing
    offs_i = tl.arange(0, BLOCK_S)
    q = s + offs_i
    m = mask_d[:, None] & (offs_i < S)[None, :]
    v = tl.load(s_row[:, None] + q[None, :] * s_s_k, mask=m & (q < S)[None, :], other=0.0)
    v += tl.load(x_row[:, None] + (q - S)[None, :] * s_x_l, mask=m & (q >= S)[None, :], other=0.0).to(v.dtype)
    tl.debug_barrier()
    tl.store(s_row[:, None] + offs_i[None, :] * s_s_k, v, mask=m)
