"""Selective scan, forward: the forward kernel and the per-state helpers the backward and decode reuse.

A program walks its channels' sequence in chunks; per state it discretises on the fly, scans the chunk
along time and stores the chunk-start checkpoints the backward reads (triton.py has the design).
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _softplus(r):
    return tl.where(r > 20.0, r, tl.log(1.0 + tl.exp(tl.minimum(r, 20.0))))


@triton.jit
def _fwd_combine(a1, b1, a2, b2):
    # (a1, b1) covers earlier steps, (a2, b2) later ones: h -> a2 (a1 h + b1) + b2.
    return a1 * a2, a2 * b1 + b2


@triton.jit
def _column(tile, i):
    """tile[:, i] of a 2-D tile (i a scalar). A gather: one shuffle per register where a warp holds the rows
    (Triton 3.6), where a masked row sum takes a butterfly of five."""
    idx = tl.full((tile.shape[0], 1), i, tl.int32)
    return tl.reshape(tl.gather(tile, idx, 1), (tile.shape[0],))


@triton.jit
def _fwd_state(dt, x, A_i, B_i, C_i, h0_i, ck_ptr, ck_first, n_ckpt, d, n, i, offs_d, mask_d,
               BLOCK_L: tl.constexpr, CKPT_L: tl.constexpr):  # fmt: skip
    """One state's scan over a chunk: -> (its y contribution C h, the state at the chunk's last step).
    With CKPT_L < BLOCK_L it also stores the state after every CKPT_L steps inside the chunk as checkpoints
    ck_first + 1, ... of ck_ptr ((n_ckpt, d, n) of this batch row): the backward reads them at its own,
    shorter chunk length while the forward keeps its long chunks."""
    a = tl.exp2(dt * (A_i * 1.4426950408889634)[:, None])  # exp(dt A) as exp2
    ca, cb = tl.associative_scan((a, x * B_i), 1, _fwd_combine)
    h = ca * h0_i[:, None] + cb  # (BLOCK_D, BLOCK_L): h_t of this state
    if CKPT_L < BLOCK_L:
        S: tl.constexpr = BLOCK_L // CKPT_L
        offs_s = tl.arange(0, S)
        ends_idx = tl.broadcast_to(((offs_s + 1) * CKPT_L - 1)[None, :], (h.shape[0], S))
        ends = tl.gather(h, ends_idx, 1)  # (BLOCK_D, S): the state after each sub-chunk
        k = ck_first + 1 + offs_s  # ends[:, s] is the state before sub-chunk k
        mask = mask_d[:, None] & ((offs_s < S - 1) & (k < n_ckpt))[None, :]
        tl.store(ck_ptr + k[None, :] * d * n + offs_d[:, None] * n + i, ends, mask=mask)
    h_end = _column(h, BLOCK_L - 1)
    return h * C_i, h_end


@triton.jit
def _load_state_params(A_ptr, B_ptr, C_ptr, B_row, C_row, i, offs_d, offs_t, mask_d, mask_t,
                       s_A_d, s_A_n, s_B_g, s_B_n, s_B_l, s_C_g, s_C_n, s_C_l,
                       VAR_B: tl.constexpr, VAR_C: tl.constexpr, ACC: tl.constexpr):  # fmt: skip
    """A[:, i] (BLOCK_D,) and B, C of state i as broadcastable ACC tiles: (1, BLOCK_L) rows, or
    (BLOCK_D, 1) columns for input-independent (d, n) B / C."""
    A_i = tl.load(A_ptr + offs_d * s_A_d + i * s_A_n, mask=mask_d, other=0.0).to(ACC)
    if VAR_B:
        B_i = tl.load(B_row + i * s_B_n + offs_t * s_B_l, mask=mask_t, other=0.0).to(ACC)[None, :]
    else:
        B_i = tl.load(B_ptr + offs_d * s_B_g + i * s_B_n, mask=mask_d, other=0.0).to(ACC)[:, None]
    if VAR_C:
        C_i = tl.load(C_row + i * s_C_n + offs_t * s_C_l, mask=mask_t, other=0.0).to(ACC)[None, :]
    else:
        C_i = tl.load(C_ptr + offs_d * s_C_g + i * s_C_n, mask=mask_d, other=0.0).to(ACC)[:, None]
    return A_i, B_i, C_i


@triton.jit
def _scan_fwd_kernel(
    u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, h0_ptr,
    out_ptr, y_ptr, hlast_ptr, ckpt_ptr,
    d, L, n, n_chunks, n_ckpt, d_per_group,
    s_u_b, s_u_d, s_u_l,
    s_dt_b, s_dt_d, s_dt_l,
    s_z_b, s_z_d, s_z_l,
    s_o_b, s_o_d, s_o_l,
    s_A_d, s_A_n,
    s_B_b, s_B_g, s_B_n, s_B_l,
    s_C_b, s_C_g, s_C_n, s_C_l,
    VAR_B: tl.constexpr, VAR_C: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_H0: tl.constexpr, STORE_CKPT: tl.constexpr, STORE_Y: tl.constexpr, STORE_LAST: tl.constexpr,
    PREFETCH: tl.constexpr, STATES: tl.constexpr,
    ACC: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_L: tl.constexpr, CKPT_L: tl.constexpr,
):  # fmt: skip
    """out (and the pre-gate y, when STORE_Y) share out's strides s_o_*. With STORE_CKPT the state before
    every CKPT_L steps (a divisor of BLOCK_L) goes to ckpt (b, n_ckpt, d, n)."""
    pid_b = tl.program_id(0).to(tl.int64)
    pid_d = tl.program_id(1)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    offs_l = tl.arange(0, BLOCK_L)
    mask_d = offs_d < d
    mask_dn = mask_d[:, None] & (offs_n < n)[None, :]
    dn_offs = offs_d[:, None] * n + offs_n[None, :]  # into contiguous (d, n) state tiles
    if HAS_D:
        Dv = tl.load(D_ptr + offs_d, mask=mask_d, other=0.0).to(ACC)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(ACC)
    grp = (pid_d * BLOCK_D) // d_per_group  # the block lies inside one group of B / C
    B_row = B_ptr + pid_b * s_B_b + grp * s_B_g
    C_row = C_ptr + pid_b * s_C_b + grp * s_C_g
    if HAS_H0:
        H = tl.load(h0_ptr + pid_b * d * n + dn_offs, mask=mask_dn, other=0.0).to(ACC)
    else:
        H = tl.zeros((BLOCK_D, BLOCK_N), dtype=ACC)

    ck_ptr = ckpt_ptr + pid_b * n_ckpt * d * n
    CK_L: tl.constexpr = CKPT_L if STORE_CKPT else BLOCK_L  # no checkpoints: no sub-chunk work
    for chunk in range(0, n_chunks):
        offs_t = chunk * BLOCK_L + offs_l
        mask_t = offs_t < L
        mask_dt = mask_d[:, None] & mask_t[None, :]
        ck_first = chunk * (BLOCK_L // CK_L)
        if STORE_CKPT:
            tl.store(ck_ptr + ck_first * d * n + dn_offs, H, mask=mask_dn)
        u = tl.load(u_ptr + pid_b * s_u_b + offs_d[:, None] * s_u_d + offs_t[None, :] * s_u_l, mask=mask_dt, other=0.0)
        u = u.to(ACC)
        dt = tl.load(
            dt_ptr + pid_b * s_dt_b + offs_d[:, None] * s_dt_d + offs_t[None, :] * s_dt_l, mask=mask_dt, other=0.0
        ).to(ACC)
        if HAS_BIAS:
            dt = dt + bias[:, None]
        if SOFTPLUS:
            dt = _softplus(dt)
        dt = tl.where(mask_dt, dt, 0.0)  # padding: a = 1, b = 0 keeps the state
        x = dt * u  # (BLOCK_D, BLOCK_L)
        if HAS_D:
            y = Dv[:, None] * u
        else:
            y = tl.zeros((BLOCK_D, BLOCK_L), dtype=ACC)
        if PREFETCH:
            A_nx, B_nx, C_nx = _load_state_params(
                A_ptr, B_ptr, C_ptr, B_row, C_row, 0, offs_d, offs_t, mask_d, mask_t,
                s_A_d, s_A_n, s_B_g, s_B_n, s_B_l, s_C_g, s_C_n, s_C_l, VAR_B, VAR_C, ACC,
            )  # fmt: skip
        for i in range(0, n, STATES):  # STATES (1 or 2, n % STATES == 0) independent scans per iteration: ILP
            if PREFETCH:
                A_i, B_i, C_i = A_nx, B_nx, C_nx
                A_nx, B_nx, C_nx = _load_state_params(  # prefetch the next state's parameters (wraps at the end)
                    A_ptr, B_ptr, C_ptr, B_row, C_row, (i + 1) % n, offs_d, offs_t, mask_d, mask_t,
                    s_A_d, s_A_n, s_B_g, s_B_n, s_B_l, s_C_g, s_C_n, s_C_l, VAR_B, VAR_C, ACC,
                )  # fmt: skip
            else:
                A_i, B_i, C_i = _load_state_params(
                    A_ptr, B_ptr, C_ptr, B_row, C_row, i, offs_d, offs_t, mask_d, mask_t,
                    s_A_d, s_A_n, s_B_g, s_B_n, s_B_l, s_C_g, s_C_n, s_C_l, VAR_B, VAR_C, ACC,
                )  # fmt: skip
            if STATES == 2:
                A_j, B_j, C_j = _load_state_params(
                    A_ptr, B_ptr, C_ptr, B_row, C_row, i + 1, offs_d, offs_t, mask_d, mask_t,
                    s_A_d, s_A_n, s_B_g, s_B_n, s_B_l, s_C_g, s_C_n, s_C_l, VAR_B, VAR_C, ACC,
                )  # fmt: skip
                yc_j, end_j = _fwd_state(
                    dt, x, A_j, B_j, C_j, _column(H, i + 1),
                    ck_ptr, ck_first, n_ckpt, d, n, i + 1, offs_d, mask_d, BLOCK_L, CK_L,
                )  # fmt: skip
            yc, h_end = _fwd_state(
                dt, x, A_i, B_i, C_i, _column(H, i),
                ck_ptr, ck_first, n_ckpt, d, n, i, offs_d, mask_d, BLOCK_L, CK_L,
            )  # fmt: skip
            y += yc
            H = tl.where(offs_n[None, :] == i, h_end[:, None], H)
            if STATES == 2:
                y += yc_j
                H = tl.where(offs_n[None, :] == i + 1, end_j[:, None], H)
        o_offs = pid_b * s_o_b + offs_d[:, None] * s_o_d + offs_t[None, :] * s_o_l
        if STORE_Y:
            tl.store(y_ptr + o_offs, y.to(y_ptr.dtype.element_ty), mask=mask_dt)
        if HAS_Z:
            zz = tl.load(
                z_ptr + pid_b * s_z_b + offs_d[:, None] * s_z_d + offs_t[None, :] * s_z_l, mask=mask_dt, other=0.0
            ).to(ACC)
            y = y * zz * tl.sigmoid(zz)
        tl.store(out_ptr + o_offs, y.to(out_ptr.dtype.element_ty), mask=mask_dt)
    if STORE_LAST:
        tl.store(hlast_ptr + pid_b * d * n + dn_offs, H, mask=mask_dn)
