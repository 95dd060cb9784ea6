"""Selective scan, decode: one step of the state update, in place (selective_state_update in triton.py)."""

from __future__ import annotations

import triton
import triton.language as tl

from .._pdl import gdc_launch_dependents, gdc_wait
from ._fwd import _softplus


@triton.jit
def _state_update_kernel(
    state_ptr, x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, out_ptr,
    d, n, d_per_group,
    s_s_b, s_s_d, s_s_n,
    s_x_b, s_x_d, s_dt_b, s_dt_d, s_z_b, s_z_d, s_o_b, s_o_d,
    s_A_d, s_A_n,
    s_B_b, s_B_g, s_B_n,
    s_C_b, s_C_g, s_C_n,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    ACC: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, PDL: tl.constexpr,
):  # fmt: skip
    """PDL (archzoo/kernels/_pdl.py): launched with programmatic dependent launch in a decode step; the next kernel
    may launch at once, and only A, D and dt_bias (weights no kernel of the step writes) are read before the wait."""
    if PDL:
        gdc_launch_dependents()
    pid_b = tl.program_id(0).to(tl.int64)
    pid_d = tl.program_id(1)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    mask_d = offs_d < d
    mask_n = offs_n < n
    mask_dn = mask_d[:, None] & mask_n[None, :]
    grp = (pid_d * BLOCK_D) // d_per_group

    A = tl.load(A_ptr + offs_d[:, None] * s_A_d + offs_n[None, :] * s_A_n, mask=mask_dn, other=0.0).to(ACC)
    if HAS_BIAS:
        dt_bias = tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(ACC)
    if HAS_D:
        D = tl.load(D_ptr + offs_d, mask=mask_d, other=0.0).to(ACC)
    if PDL:  # everything below may have been written by the kernels before this one
        gdc_wait()
    s_ptrs = state_ptr + pid_b * s_s_b + offs_d[:, None] * s_s_d + offs_n[None, :] * s_s_n
    h = tl.load(s_ptrs, mask=mask_dn, other=0.0).to(ACC)
    x = tl.load(x_ptr + pid_b * s_x_b + offs_d * s_x_d, mask=mask_d, other=0.0).to(ACC)
    dt = tl.load(dt_ptr + pid_b * s_dt_b + offs_d * s_dt_d, mask=mask_d, other=0.0).to(ACC)
    if HAS_BIAS:
        dt += dt_bias
    if SOFTPLUS:
        dt = _softplus(dt)
    B = tl.load(B_ptr + pid_b * s_B_b + grp * s_B_g + offs_n * s_B_n, mask=mask_n, other=0.0).to(ACC)
    C = tl.load(C_ptr + pid_b * s_C_b + grp * s_C_g + offs_n * s_C_n, mask=mask_n, other=0.0).to(ACC)
    h = tl.exp(dt[:, None] * A) * h + (dt * x)[:, None] * B[None, :]
    tl.store(s_ptrs, h.to(state_ptr.dtype.element_ty), mask=mask_dn)
    y = tl.sum(h * C[None, :], axis=1)
    if HAS_D:
        y += D * x
    if HAS_Z:
        zz = tl.load(z_ptr + pid_b * s_z_b + offs_d * s_z_d, mask=mask_d, other=0.0).to(ACC)
        y = y * zz * tl.sigmoid(zz)
    tl.store(out_ptr + pid_b * s_o_b + offs_d * s_o_d, y.to(out_ptr.dtype.element_ty), mask=mask_d)
