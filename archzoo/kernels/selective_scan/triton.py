"""Triton selective scan (Mamba's S6, Gu & Dao 2023, arXiv:2312.00752): forward, backward, decode step.

Design (docs/kernels.md has the long form):
- One program per (batch, block of BLOCK_D channels) holds the state h (BLOCK_D, N) in fp32
  registers and walks the sequence in chunks of BLOCK_L steps. Each chunk loads (BLOCK_D, BLOCK_L)
  tiles of u / delta / z and (N, BLOCK_L) tiles of B / C, discretises on the fly
  (dt = softplus(delta + bias), a = exp(dt A), b = dt u B), and runs the linear recurrence
  h_t = a_t h_{t-1} + b_t inside the chunk as an associative scan over pairs (a, b); the carry
  between chunks is the last column. y = <C, h> + D u and the SiLU(z) gate are fused in.
- The forward stores only the state at the start of each chunk (b, n_chunks, d, n) fp32. The
  backward walks the chunks in reverse, recomputes the chunk's states from that checkpoint, and
  runs the adjoint recurrence g_t = dy_t C_t + a_{t+1} g_{t+1} as a reverse associative scan
  (over triples, so that the coefficient a_{t+1} need not be shifted in registers).
- Gradients of per-channel parameters (A, D, delta_bias, and B / C when they are (d, n)) are
  summed over the chunk in registers and written once per program; gradients of B / C of shape
  (b, [g,] n, l) are summed over the program's channels and added with fp32 atomics.
Inputs may be fp32, bf16 or fp16 (fp64 is computed in fp32); the state is always fp32.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from ._checks import check_scan, check_update

LOG2E = 1.4426950408889634


@triton.jit
def _softplus(r):
    return tl.where(r > 20.0, r, tl.log(1.0 + tl.exp(tl.minimum(r, 20.0))))


@triton.jit
def _fwd_combine(a1, b1, a2, b2):
    # (a1, b1) covers earlier steps, (a2, b2) later ones: h -> a2 (a1 h + b1) + b2.
    return a1 * a2, a2 * b1 + b2


@triton.jit
def _rev_combine(fa_r, p_r, v_r, fa_l, p_l, v_l):
    # Reverse scan: the first triple covers later steps [m+1, e], the second earlier ones [s, m].
    # A segment maps the adjoint carry c (= g at e + 1) to g_s = v + p * a_{e+1} * c; fa is its first a.
    m = p_l * fa_r
    return fa_l, m * p_r, v_l + m * v_r


@triton.jit
def _scan_fwd_kernel(
    u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, h0_ptr,
    out_ptr, hlast_ptr, ckpt_ptr,
    d, L, n, n_chunks, d_per_group,
    s_u_b, s_u_d, s_u_l,
    s_dt_b, s_dt_d, s_dt_l,
    s_z_b, s_z_d, s_z_l,
    s_o_b, s_o_d, s_o_l,
    s_A_d, s_A_n,
    s_B_b, s_B_g, s_B_n, s_B_l,
    s_C_b, s_C_g, s_C_n, s_C_l,
    VAR_B: tl.constexpr, VAR_C: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_H0: tl.constexpr, STORE_CKPT: tl.constexpr, STORE_LAST: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_L: tl.constexpr,
):  # fmt: skip
    pid_b = tl.program_id(0).to(tl.int64)
    pid_d = tl.program_id(1)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    offs_l = tl.arange(0, BLOCK_L)
    mask_d = offs_d < d
    mask_n = offs_n < n
    mask_dn = mask_d[:, None] & mask_n[None, :]
    dn_offs = offs_d[:, None] * n + offs_n[None, :]  # into contiguous (d, n) state tiles

    A2 = tl.load(A_ptr + offs_d[:, None] * s_A_d + offs_n[None, :] * s_A_n, mask=mask_dn, other=0.0)
    A2 = A2.to(tl.float32) * 1.4426950408889634  # (BLOCK_D, BLOCK_N), exp(x) = exp2(x log2 e)
    if HAS_D:
        Dv = tl.load(D_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    grp = (pid_d * BLOCK_D) // d_per_group  # the block lies inside one group of B / C
    if VAR_B:
        B_base = B_ptr + pid_b * s_B_b + grp * s_B_g + offs_n[:, None] * s_B_n
    else:
        Bc = tl.load(B_ptr + offs_d[:, None] * s_B_g + offs_n[None, :] * s_B_n, mask=mask_dn, other=0.0)
        Bc = Bc.to(tl.float32)
    if VAR_C:
        C_base = C_ptr + pid_b * s_C_b + grp * s_C_g + offs_n[:, None] * s_C_n
    else:
        Cc = tl.load(C_ptr + offs_d[:, None] * s_C_g + offs_n[None, :] * s_C_n, mask=mask_dn, other=0.0)
        Cc = Cc.to(tl.float32)
    if HAS_H0:
        h = tl.load(h0_ptr + pid_b * d * n + dn_offs, mask=mask_dn, other=0.0).to(tl.float32)
    else:
        h = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)

    for chunk in range(0, n_chunks):
        offs_t = chunk * BLOCK_L + offs_l
        mask_t = offs_t < L
        mask_dt = mask_d[:, None] & mask_t[None, :]
        mask_nt = mask_n[:, None] & mask_t[None, :]
        if STORE_CKPT:
            tl.store(ckpt_ptr + (pid_b * n_chunks + chunk) * d * n + dn_offs, h, mask=mask_dn)
        u = tl.load(u_ptr + pid_b * s_u_b + offs_d[:, None] * s_u_d + offs_t[None, :] * s_u_l, mask=mask_dt, other=0.0)
        u = u.to(tl.float32)
        dt = tl.load(
            dt_ptr + pid_b * s_dt_b + offs_d[:, None] * s_dt_d + offs_t[None, :] * s_dt_l, mask=mask_dt, other=0.0
        ).to(tl.float32)
        if HAS_BIAS:
            dt = dt + bias[:, None]
        if SOFTPLUS:
            dt = _softplus(dt)
        dt = tl.where(mask_dt, dt, 0.0)  # padding: a = 1, b = 0 keeps the state
        x = dt * u  # (BLOCK_D, BLOCK_L)
        a = tl.exp2(dt[:, None, :] * A2[:, :, None])  # (BLOCK_D, BLOCK_N, BLOCK_L)
        if VAR_B:
            Bt = tl.load(B_base + offs_t[None, :] * s_B_l, mask=mask_nt, other=0.0).to(tl.float32)
            bx = x[:, None, :] * Bt[None, :, :]
        else:
            bx = x[:, None, :] * Bc[:, :, None]
        ca, cb = tl.associative_scan((a, bx), 2, _fwd_combine)
        hs = ca * h[:, :, None] + cb  # (BLOCK_D, BLOCK_N, BLOCK_L): h_t for every step of the chunk
        if VAR_C:
            Ct = tl.load(C_base + offs_t[None, :] * s_C_l, mask=mask_nt, other=0.0).to(tl.float32)
            y = tl.sum(hs * Ct[None, :, :], axis=1)
        else:
            y = tl.sum(hs * Cc[:, :, None], axis=1)
        h = tl.sum(tl.where(offs_l[None, None, :] == BLOCK_L - 1, hs, 0.0), axis=2)
        if HAS_D:
            y += Dv[:, None] * u
        if HAS_Z:
            zz = tl.load(
                z_ptr + pid_b * s_z_b + offs_d[:, None] * s_z_d + offs_t[None, :] * s_z_l, mask=mask_dt, other=0.0
            ).to(tl.float32)
            y = y * zz * tl.sigmoid(zz)
        o_ptrs = out_ptr + pid_b * s_o_b + offs_d[:, None] * s_o_d + offs_t[None, :] * s_o_l
        tl.store(o_ptrs, y.to(out_ptr.dtype.element_ty), mask=mask_dt)
    if STORE_LAST:
        tl.store(hlast_ptr + pid_b * d * n + dn_offs, h, mask=mask_dn)


@triton.jit
def _scan_bwd_kernel(
    u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, ckpt_ptr, dout_ptr, dlast_ptr,
    du_ptr, ddt_ptr, dz_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr, dbias_ptr, dh0_ptr,
    d, L, n, n_chunks, d_per_group,
    s_u_b, s_u_d, s_u_l,
    s_dt_b, s_dt_d, s_dt_l,
    s_z_b, s_z_d, s_z_l,
    s_do_b, s_do_d, s_do_l,
    s_g_b, s_g_d, s_g_l,
    s_A_d, s_A_n,
    s_B_b, s_B_g, s_B_n, s_B_l,
    s_C_b, s_C_g, s_C_n, s_C_l,
    s_dB_b, s_dB_g, s_dB_n, s_dB_l,
    s_dC_b, s_dC_g, s_dC_n, s_dC_l,
    VAR_B: tl.constexpr, VAR_C: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_DLAST: tl.constexpr, STORE_DH0: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_L: tl.constexpr,
):  # fmt: skip
    """du, ddelta, dz (b, d, l) share the strides s_g_*; the parameter
    gradients dA / dD / dbias (and dB / dC for (d, n) B / C) as per-batch partials (b, d, [n]) fp32."""
    pid_b = tl.program_id(0).to(tl.int64)
    pid_d = tl.program_id(1)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    offs_l = tl.arange(0, BLOCK_L)
    mask_d = offs_d < d
    mask_n = offs_n < n
    mask_dn = mask_d[:, None] & mask_n[None, :]
    dn_offs = offs_d[:, None] * n + offs_n[None, :]

    A = tl.load(A_ptr + offs_d[:, None] * s_A_d + offs_n[None, :] * s_A_n, mask=mask_dn, other=0.0).to(tl.float32)
    A2 = A * 1.4426950408889634
    if HAS_D:
        Dv = tl.load(D_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    grp = (pid_d * BLOCK_D) // d_per_group
    if VAR_B:
        B_base = B_ptr + pid_b * s_B_b + grp * s_B_g + offs_n[:, None] * s_B_n
        dB_base = dB_ptr + pid_b * s_dB_b + grp * s_dB_g + offs_n[:, None] * s_dB_n
    else:
        Bc = tl.load(B_ptr + offs_d[:, None] * s_B_g + offs_n[None, :] * s_B_n, mask=mask_dn, other=0.0)
        Bc = Bc.to(tl.float32)
        dB_acc = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)
    if VAR_C:
        C_base = C_ptr + pid_b * s_C_b + grp * s_C_g + offs_n[:, None] * s_C_n
        dC_base = dC_ptr + pid_b * s_dC_b + grp * s_dC_g + offs_n[:, None] * s_dC_n
    else:
        Cc = tl.load(C_ptr + offs_d[:, None] * s_C_g + offs_n[None, :] * s_C_n, mask=mask_dn, other=0.0)
        Cc = Cc.to(tl.float32)
        dC_acc = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)
    dA_acc = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)
    dD_acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
    dbias_acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
    # carry = a_{e+1} g_{e+1}: the adjoint flowing into the last state of the chunk from the right
    if HAS_DLAST:
        carry = tl.load(dlast_ptr + pid_b * d * n + dn_offs, mask=mask_dn, other=0.0).to(tl.float32)
    else:
        carry = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)

    for rev in range(0, n_chunks):
        chunk = n_chunks - 1 - rev
        offs_t = chunk * BLOCK_L + offs_l
        mask_t = offs_t < L
        mask_dt = mask_d[:, None] & mask_t[None, :]
        mask_nt = mask_n[:, None] & mask_t[None, :]
        # ---- recompute the chunk's forward from its checkpoint
        h0 = tl.load(ckpt_ptr + (pid_b * n_chunks + chunk) * d * n + dn_offs, mask=mask_dn, other=0.0)
        u = tl.load(u_ptr + pid_b * s_u_b + offs_d[:, None] * s_u_d + offs_t[None, :] * s_u_l, mask=mask_dt, other=0.0)
        u = u.to(tl.float32)
        r = tl.load(
            dt_ptr + pid_b * s_dt_b + offs_d[:, None] * s_dt_d + offs_t[None, :] * s_dt_l, mask=mask_dt, other=0.0
        ).to(tl.float32)
        if HAS_BIAS:
            r = r + bias[:, None]
        if SOFTPLUS:
            dt = _softplus(r)
        else:
            dt = r
        dt = tl.where(mask_dt, dt, 0.0)
        x = dt * u
        a = tl.exp2(dt[:, None, :] * A2[:, :, None])  # (BLOCK_D, BLOCK_N, BLOCK_L)
        if VAR_B:
            Bt = tl.load(B_base + offs_t[None, :] * s_B_l, mask=mask_nt, other=0.0).to(tl.float32)
            Bx = Bt[None, :, :]
        else:
            Bx = Bc[:, :, None]
        bx = x[:, None, :] * Bx
        ca, cb = tl.associative_scan((a, bx), 2, _fwd_combine)
        hs = ca * h0[:, :, None] + cb  # h_t
        if VAR_C:
            Ct = tl.load(C_base + offs_t[None, :] * s_C_l, mask=mask_nt, other=0.0).to(tl.float32)
            Cx = Ct[None, :, :]
        else:
            Cx = Cc[:, :, None]
        dout = tl.load(
            dout_ptr + pid_b * s_do_b + offs_d[:, None] * s_do_d + offs_t[None, :] * s_do_l, mask=mask_dt, other=0.0
        ).to(tl.float32)
        if HAS_Z:
            y = tl.sum(hs * Cx, axis=1)
            if HAS_D:
                y += Dv[:, None] * u
            zz = tl.load(
                z_ptr + pid_b * s_z_b + offs_d[:, None] * s_z_d + offs_t[None, :] * s_z_l, mask=mask_dt, other=0.0
            ).to(tl.float32)
            sig = tl.sigmoid(zz)
            dy = dout * zz * sig
            dz = dout * y * sig * (1.0 + zz * (1.0 - sig))
            dz_ptrs = dz_ptr + pid_b * s_g_b + offs_d[:, None] * s_g_d + offs_t[None, :] * s_g_l
            tl.store(dz_ptrs, dz.to(dz_ptr.dtype.element_ty), mask=mask_dt)
        else:
            dy = dout
        # ---- adjoint: g_t = dy_t C_t + a_{t+1} g_{t+1}, by a reverse scan over (a, 1, dy C)
        ones = tl.full((BLOCK_D, BLOCK_N, BLOCK_L), 1.0, tl.float32)
        _, pp, vv = tl.associative_scan((a, ones, dy[:, None, :] * Cx), 2, _rev_combine, reverse=True)
        g = vv + pp * carry[:, :, None]  # (BLOCK_D, BLOCK_N, BLOCK_L)
        carry = tl.sum(tl.where(offs_l[None, None, :] == 0, a * g, 0.0), axis=2)
        # ---- local gradients
        dx = tl.sum(g * Bx, axis=1)  # (BLOCK_D, BLOCK_L)
        w = g * (hs - bx)  # g_t * a_t h_{t-1}
        ddt = u * dx + tl.sum(w * A[:, :, None], axis=1)
        dA_acc += tl.sum(w * dt[:, None, :], axis=2)
        du = dx * dt
        if HAS_D:
            du += dy * Dv[:, None]
            dD_acc += tl.sum(dy * u, axis=1)
        if SOFTPLUS:
            ddt = ddt * tl.sigmoid(r)
        ddt = tl.where(mask_dt, ddt, 0.0)
        if HAS_BIAS:
            dbias_acc += tl.sum(ddt, axis=1)
        du_ptrs = du_ptr + pid_b * s_g_b + offs_d[:, None] * s_g_d + offs_t[None, :] * s_g_l
        tl.store(du_ptrs, du.to(du_ptr.dtype.element_ty), mask=mask_dt)
        ddt_ptrs = ddt_ptr + pid_b * s_g_b + offs_d[:, None] * s_g_d + offs_t[None, :] * s_g_l
        tl.store(ddt_ptrs, ddt.to(ddt_ptr.dtype.element_ty), mask=mask_dt)
        if VAR_B:
            tl.atomic_add(dB_base + offs_t[None, :] * s_dB_l, tl.sum(g * x[:, None, :], axis=0), mask=mask_nt)
        else:
            dB_acc += tl.sum(g * x[:, None, :], axis=2)
        if VAR_C:
            tl.atomic_add(dC_base + offs_t[None, :] * s_dC_l, tl.sum(hs * dy[:, None, :], axis=0), mask=mask_nt)
        else:
            dC_acc += tl.sum(hs * dy[:, None, :], axis=2)

    part = pid_b * d * n + dn_offs  # per-batch partials (b, d, n)
    tl.store(dA_ptr + part, dA_acc, mask=mask_dn)
    if not VAR_B:
        tl.store(dB_ptr + part, dB_acc, mask=mask_dn)
    if not VAR_C:
        tl.store(dC_ptr + part, dC_acc, mask=mask_dn)
    if HAS_D:
        tl.store(dD_ptr + pid_b * d + offs_d, dD_acc, mask=mask_d)
    if HAS_BIAS:
        tl.store(dbias_ptr + pid_b * d + offs_d, dbias_acc, mask=mask_d)
    if STORE_DH0:
        tl.store(dh0_ptr + part, carry, mask=mask_dn)


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
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    pid_b = tl.program_id(0).to(tl.int64)
    pid_d = tl.program_id(1)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    mask_d = offs_d < d
    mask_n = offs_n < n
    mask_dn = mask_d[:, None] & mask_n[None, :]
    grp = (pid_d * BLOCK_D) // d_per_group

    s_ptrs = state_ptr + pid_b * s_s_b + offs_d[:, None] * s_s_d + offs_n[None, :] * s_s_n
    h = tl.load(s_ptrs, mask=mask_dn, other=0.0).to(tl.float32)
    x = tl.load(x_ptr + pid_b * s_x_b + offs_d * s_x_d, mask=mask_d, other=0.0).to(tl.float32)
    dt = tl.load(dt_ptr + pid_b * s_dt_b + offs_d * s_dt_d, mask=mask_d, other=0.0).to(tl.float32)
    if HAS_BIAS:
        dt += tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    if SOFTPLUS:
        dt = _softplus(dt)
    A = tl.load(A_ptr + offs_d[:, None] * s_A_d + offs_n[None, :] * s_A_n, mask=mask_dn, other=0.0).to(tl.float32)
    B = tl.load(B_ptr + pid_b * s_B_b + grp * s_B_g + offs_n * s_B_n, mask=mask_n, other=0.0).to(tl.float32)
    C = tl.load(C_ptr + pid_b * s_C_b + grp * s_C_g + offs_n * s_C_n, mask=mask_n, other=0.0).to(tl.float32)
    h = tl.exp(dt[:, None] * A) * h + (dt * x)[:, None] * B[None, :]
    tl.store(s_ptrs, h.to(state_ptr.dtype.element_ty), mask=mask_dn)
    y = tl.sum(h * C[None, :], axis=1)
    if HAS_D:
        y += tl.load(D_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32) * x
    if HAS_Z:
        zz = tl.load(z_ptr + pid_b * s_z_b + offs_d * s_z_d, mask=mask_d, other=0.0).to(tl.float32)
        y = y * zz * tl.sigmoid(zz)
    tl.store(out_ptr + pid_b * s_o_b + offs_d * s_o_d, y.to(out_ptr.dtype.element_ty), mask=mask_d)


# ----------------------------------------------------------------------------------------------
# host side


def _interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _pow2_divisor(m: int, cap: int) -> int:
    """Largest power of two <= cap dividing m."""
    p = 1
    while p * 2 <= cap and m % (p * 2) == 0:
        p *= 2
    return p


def _block_d(d: int, groups: int, cap: int) -> int:
    """Channels per program: <= cap, and a divisor of d / groups so a block never straddles two groups."""
    if groups == 1:
        return min(cap, triton.next_power_of_2(d))
    return _pow2_divisor(d // groups, cap)


# Tuning hook (benchmarks/tune_ssm_kernels.py): {"fwd" | "bwd": {"BLOCK_D", "BLOCK_L", "num_warps"}}.
CONFIG_OVERRIDE: dict[str, dict] = {}


def scan_config(d: int, n: int, L: int, groups: int, backward: bool, device: torch.device) -> dict:
    """Block sizes and warps. Small blocks under the interpreter (tests), tuned ones on CUDA."""
    block_n = triton.next_power_of_2(n)
    if device.type != "cuda":
        return dict(BLOCK_D=_block_d(d, groups, 4), BLOCK_N=block_n, BLOCK_L=8, num_warps=1)
    over = CONFIG_OVERRIDE.get("bwd" if backward else "fwd")
    if over:
        return dict(over, BLOCK_D=_block_d(d, groups, over["BLOCK_D"]), BLOCK_N=block_n)
    # Keep the (BLOCK_D, BLOCK_N, BLOCK_L) tiles at ~32 fp32 registers per thread each.
    block_l = 32 if backward else 64
    block_d = _block_d(d, groups, max(1, 4096 // (block_n * block_l)))
    return dict(BLOCK_D=block_d, BLOCK_N=block_n, BLOCK_L=block_l, num_warps=4)


def _bc_view(t: torch.Tensor) -> tuple[torch.Tensor, bool, int, tuple[int, int, int, int]]:
    """-> (tensor, variable, groups, strides (s_b, s_g, s_n, s_l)); a (d, n) tensor is not variable."""
    if t.dim() == 2:  # (d, n): the 'group' index is the channel
        return t, False, t.shape[0], (0, t.stride(0), t.stride(1), 0)
    if t.dim() == 3:  # (b, n, l)
        return t, True, 1, (t.stride(0), 0, t.stride(1), t.stride(2))
    return t, True, t.shape[1], (t.stride(0), t.stride(1), t.stride(2), t.stride(3))


def _groups(B: torch.Tensor, C: torch.Tensor, grouped_dim: int) -> int:
    """Group count the channel blocks must respect: the finer of B's and C's (both divide d).
    Only tensors with ``grouped_dim`` dims ((b, g, n, l) in the scan, (b, g, n) in decode) are grouped."""
    gb = B.shape[1] if B.dim() == grouped_dim else 1
    gc = C.shape[1] if C.dim() == grouped_dim else 1
    return max(gb, gc)


def _scan_forward(u, delta, A, B, C, D, z, delta_bias, h0, softplus, store_ckpt, store_last):
    b, d, L = u.shape
    n = A.shape[1]
    groups = _groups(B, C, 4)
    cfg = scan_config(d, n, L, groups, False, u.device)
    if store_ckpt:  # the backward re-reads these checkpoints: use its chunk length
        cfg = dict(cfg, BLOCK_L=scan_config(d, n, L, groups, True, u.device)["BLOCK_L"])
    n_chunks = triton.cdiv(L, cfg["BLOCK_L"])
    out = torch.empty((b, d, L), device=u.device, dtype=u.dtype)
    hlast = torch.empty((b, d, n), device=u.device, dtype=torch.float32) if store_last else None
    ckpt = torch.empty((b, n_chunks, d, n), device=u.device, dtype=torch.float32) if store_ckpt else None
    Bv, var_b, _, sB = _bc_view(B)
    Cv, var_c, _, sC = _bc_view(C)
    zz = z if z is not None else u
    dummy = u
    grid = (b, triton.cdiv(d, cfg["BLOCK_D"]))
    _scan_fwd_kernel[grid](
        u, delta, A, Bv, Cv,
        D if D is not None else dummy, zz, delta_bias if delta_bias is not None else dummy,
        h0 if h0 is not None else dummy, out,
        hlast if hlast is not None else dummy, ckpt if ckpt is not None else dummy,
        d, L, n, n_chunks, d // groups,
        *u.stride(), *delta.stride(), *zz.stride(), *out.stride(),
        *A.stride(), *sB, *sC,
        VAR_B=var_b, VAR_C=var_c, HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
        SOFTPLUS=softplus, HAS_H0=h0 is not None, STORE_CKPT=store_ckpt, STORE_LAST=store_last,
        BLOCK_D=cfg["BLOCK_D"], BLOCK_N=cfg["BLOCK_N"], BLOCK_L=cfg["BLOCK_L"], num_warps=cfg["num_warps"],
    )  # fmt: skip
    return out, hlast, ckpt


def _scan_backward(u, delta, A, B, C, D, z, delta_bias, ckpt, dout, dlast, softplus, need_dh0):
    b, d, L = u.shape
    n = A.shape[1]
    groups = _groups(B, C, 4)
    cfg = scan_config(d, n, L, groups, True, u.device)
    n_chunks = ckpt.shape[1]
    assert n_chunks == triton.cdiv(L, cfg["BLOCK_L"])
    f32 = dict(device=u.device, dtype=torch.float32)
    du = torch.empty((b, d, L), device=u.device, dtype=u.dtype)
    ddelta = torch.empty((b, d, L), device=u.device, dtype=delta.dtype)
    dz = torch.empty((b, d, L), device=u.device, dtype=z.dtype) if z is not None else None
    dA = torch.empty((b, d, n), **f32)
    Bv, var_b, _, sB = _bc_view(B)
    Cv, var_c, _, sC = _bc_view(C)
    # dB / dC: fp32 atomics into (b, g, n, l) when variable, else per-batch partials (b, d, n)
    dB = torch.zeros(B.shape, **f32) if var_b else torch.empty((b, d, n), **f32)
    dC = torch.zeros(C.shape, **f32) if var_c else torch.empty((b, d, n), **f32)
    dD = torch.empty((b, d), **f32) if D is not None else None
    dbias = torch.empty((b, d), **f32) if delta_bias is not None else None
    dh0 = torch.empty((b, d, n), **f32) if need_dh0 else None
    _, _, _, sdB = _bc_view(dB) if var_b else (None, None, None, (0, 0, 0, 0))
    _, _, _, sdC = _bc_view(dC) if var_c else (None, None, None, (0, 0, 0, 0))
    zz = z if z is not None else u
    dummy = dA
    grid = (b, triton.cdiv(d, cfg["BLOCK_D"]))
    _scan_bwd_kernel[grid](
        u, delta, A, Bv, Cv, D if D is not None else dummy, zz,
        delta_bias if delta_bias is not None else dummy, ckpt, dout, dlast if dlast is not None else dummy,
        du, ddelta, dz if dz is not None else dummy, dA, dB, dC,
        dD if dD is not None else dummy, dbias if dbias is not None else dummy, dh0 if dh0 is not None else dummy,
        d, L, n, n_chunks, d // groups,
        *u.stride(), *delta.stride(), *zz.stride(), *dout.stride(), *du.stride(),
        *A.stride(), *sB, *sC, *sdB, *sdC,
        VAR_B=var_b, VAR_C=var_c, HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
        SOFTPLUS=softplus, HAS_DLAST=dlast is not None, STORE_DH0=need_dh0,
        BLOCK_D=cfg["BLOCK_D"], BLOCK_N=cfg["BLOCK_N"], BLOCK_L=cfg["BLOCK_L"], num_warps=cfg["num_warps"],
    )  # fmt: skip
    dA = dA.sum(0)
    dB = dB if var_b else dB.sum(0)
    dC = dC if var_c else dC.sum(0)
    return (
        du,
        ddelta,
        dA.to(A.dtype),
        dB.to(B.dtype),
        dC.to(C.dtype),
        dD.sum(0).to(D.dtype) if D is not None else None,
        dz,
        dbias.sum(0).to(delta_bias.dtype) if delta_bias is not None else None,
        dh0,
    )


def _contig_last(t: torch.Tensor | None) -> torch.Tensor | None:
    """Make the last (time) axis unit-stride for coalesced tile loads; other layouts are copied."""
    if t is None or t.stride(-1) == 1:
        return t
    return t.contiguous()


class _SelectiveScanFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, h0, softplus, return_last_state):
        u, delta, z = _contig_last(u), _contig_last(delta), _contig_last(z)
        need_grad = any(ctx.needs_input_grad[:9])
        out, hlast, ckpt = _scan_forward(
            u, delta, A, B, C, D, z, delta_bias, h0, softplus, store_ckpt=need_grad, store_last=return_last_state
        )
        if need_grad:
            ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, ckpt)
        ctx.softplus = softplus
        ctx.return_last_state = return_last_state
        ctx.has_h0 = h0 is not None
        ctx.h0_dtype = h0.dtype if h0 is not None else None
        return (out, hlast) if return_last_state else out

    @staticmethod
    def backward(ctx, dout, *rest):
        u, delta, A, B, C, D, z, delta_bias, ckpt = ctx.saved_tensors
        dlast = rest[0] if ctx.return_last_state else None
        dout = _contig_last(dout)
        if dlast is not None:
            dlast = dlast.float().contiguous()
        need_dh0 = ctx.has_h0 and ctx.needs_input_grad[8]
        du, ddelta, dA, dB, dC, dD, dz, dbias, dh0 = _scan_backward(
            u, delta, A, B, C, D, z, delta_bias, ckpt, dout, dlast, ctx.softplus, need_dh0
        )
        if dh0 is not None:
            dh0 = dh0.to(ctx.h0_dtype)
        return du, ddelta, dA, dB, dC, dD, dz, dbias, dh0, None, None


def selective_scan_fn(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
    initial_state: torch.Tensor | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Selective scan in Triton; same signature and semantics as ``naive_selective_scan_fn``.

    u, delta, z (b, d, l); A (d, n); B, C (d, n), (b, n, l) or (b, g, n, l); D, delta_bias (d,);
    initial_state (b, d, n). Returns out (b, d, l) in u's dtype (and the final state (b, d, n), fp32).
    """
    check_scan(u, delta, A, B, C, D, z, delta_bias, initial_state)
    h0 = initial_state.float().contiguous() if initial_state is not None else None
    if u.shape[-1] == 0:
        out = u.new_empty(u.shape)
        if not return_last_state:
            return out
        last = h0.clone() if h0 is not None else u.new_zeros((*u.shape[:2], A.shape[1]), dtype=torch.float32)
        return out, last.to(torch.float64) if u.dtype == torch.float64 else last
    res = _SelectiveScanFn.apply(u, delta, A, B, C, D, z, delta_bias, h0, delta_softplus, return_last_state)
    if return_last_state and u.dtype == torch.float64:
        return res[0], res[1].to(torch.float64)
    return res


def selective_state_update(
    state: torch.Tensor,
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    dt_softplus: bool = False,
) -> torch.Tensor:
    """One decode step in Triton; ``state`` (b, d, n) is updated IN PLACE. Same semantics as the naive one."""
    b, d, n = check_update(state, x, dt, A, B, C, D, z, dt_bias)
    groups = _groups(B, C, 3)
    block_n = triton.next_power_of_2(n)
    block_d = _block_d(d, groups, 4 if state.device.type != "cuda" else max(1, 2048 // block_n))
    out = torch.empty((b, d), device=x.device, dtype=x.dtype)
    sB = (B.stride(0), 0, B.stride(1)) if B.dim() == 2 else B.stride()
    sC = (C.stride(0), 0, C.stride(1)) if C.dim() == 2 else C.stride()
    zz = z if z is not None else x
    dummy = x
    grid = (b, triton.cdiv(d, block_d))
    _state_update_kernel[grid](
        state, x, dt, A, B, C, D if D is not None else dummy, zz, dt_bias if dt_bias is not None else dummy, out,
        d, n, d // groups,
        *state.stride(), *x.stride(), *dt.stride(), *zz.stride(), *out.stride(),
        *A.stride(), *sB, *sC,
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=dt_bias is not None, SOFTPLUS=dt_softplus,
        BLOCK_D=block_d, BLOCK_N=block_n, num_warps=4 if state.device.type == "cuda" else 1,
    )  # fmt: skip
    return out
