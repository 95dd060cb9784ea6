"""Triton selective scan (Mamba's S6, Gu & Dao 2023, arXiv:2312.00752): forward, backward, decode step.

Design (docs/kernels.md has the long form):
- One program per (batch, block of BLOCK_D channels) walks the sequence in chunks of BLOCK_L
  steps. A chunk loads (BLOCK_D, BLOCK_L) tiles of u / delta (/ z) once, coalesced along time,
  and then loops over the n state dimensions: for state i it discretises on the fly
  (dt = softplus(delta + bias), a = exp(dt A_i), b = dt u B_i), runs h_t = a_t h_{t-1} + b_t over
  the chunk as an associative scan along time (each thread scans its own run of consecutive steps,
  then the runs are joined across lanes), adds C_i h to y and keeps the last column as the carry.
  The D skip and the SiLU(z) gate are fused at the end of the chunk.
- The forward stores only the state at the start of each chunk (b, n_chunks, d, n) fp32 (and,
  when z is given, the pre-gate y for dz). The backward walks the chunks in reverse, recomputes
  each state's h from that checkpoint, and runs the adjoint g_t = dy_t C_t + a_{t+1} g_{t+1} as a
  reverse associative scan (a_{t+1} comes from a second, shifted load of delta).
- Per-channel parameter gradients (A, D, delta_bias, and B / C when they are (d, n)) are summed in
  registers and added once per program with fp32 atomics (the batch's programs share them);
  gradients of B / C of shape (b, [g,] n, l) are summed over the program's channels and added with
  fp32 atomics. Sums by atomics are not bitwise reproducible run to run (as in mamba_ssm's CUDA
  backward); the host path (see _Plan) is short because nothing is left to reduce after the kernel.
Inputs may be fp32, bf16 or fp16, and the state and all arithmetic are fp32; with an fp64 input
everything runs in fp64 instead (ACC), so float64 models keep float64 accuracy.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._dispatch import once
from .._launch import Site, launch, launch_site
from ._checks import check_scan, check_update, compute_dtype


@triton.jit
def _softplus(r):
    return tl.where(r > 20.0, r, tl.log(1.0 + tl.exp(tl.minimum(r, 20.0))))


@triton.jit
def _fwd_combine(a1, b1, a2, b2):
    # (a1, b1) covers earlier steps, (a2, b2) later ones: h -> a2 (a1 h + b1) + b2.
    return a1 * a2, a2 * b1 + b2


@triton.jit
def _rev_combine(a_r, b_r, a_l, b_l):
    # Reverse scan of g_t = a_t g_{t+1} + b_t: the first pair covers later steps, the second earlier ones.
    return a_l * a_r, b_l + a_l * b_r


@triton.jit
def _reverse(t):
    """t[:, ::-1] of a (BLOCK_D, BLOCK_L) tile. A gather along the time axis: when a warp holds whole rows,
    Triton 3.6 lowers it to one shuffle per register (lane k <-> lane 31 - k, registers reversed), where
    tl.flip's xor butterfly costs five and a reverse=True scan flips every operand and result."""
    L: tl.constexpr = t.shape[1]
    idx = L - 1 - tl.arange(0, L)
    return tl.gather(t, tl.broadcast_to(idx[None, :], t.shape), 1)


@triton.jit
def _column_sum(tile, offs, i):
    """tile[:, i] as a masked row sum (offs = arange over the columns): the backward's carries, where the gather
    of _column measured 1.5x slower on the H100 (Triton 3.6) although it issues fewer shuffles."""
    return tl.sum(tl.where(offs[None, :] == i, tile, 0.0), axis=1)


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
def _bwd_state(dt, x, dt_nx, dyc, A_i, B_i, h0_i, g1_i, MIRROR: tl.constexpr):
    """One state's recompute + adjoint over a chunk: -> (h, g = dL/dh, w = g_t a_t h_{t-1}), each (BLOCK_D, BLOCK_L)
    in time order. dyc = dy_t C_t (in time order) and dt_nx (the step size one step ahead; in reverse time order
    with MIRROR) feed the adjoint. With MIRROR the adjoint runs as a forward scan over reversed operands and
    g is reversed back (see _reverse)."""
    a = tl.exp2(dt * (A_i * 1.4426950408889634)[:, None])
    b = x * B_i
    ca, cb = tl.associative_scan((a, b), 1, _fwd_combine)
    h = ca * h0_i[:, None] + cb  # h_t, recomputed
    a_nx = tl.exp2(dt_nx * (A_i * 1.4426950408889634)[:, None])  # a_{t+1}
    if MIRROR:  # column j is step e - j: g(j) = a_nx(j) g(j - 1) + dyc(j) runs forward in j
        pa, pv = tl.associative_scan((a_nx, _reverse(dyc)), 1, _fwd_combine)
        g = _reverse(pv + pa * g1_i[:, None])
    else:
        pa, pv = tl.associative_scan((a_nx, dyc), 1, _rev_combine, reverse=True)
        g = pv + pa * g1_i[:, None]  # dL/dh_t = dy_t C_t + a_{t+1} dL/dh_{t+1}
    return h, g, g * (h - b)


@triton.jit
def _bwd_grads(i, h, g, w, dt, x, dy, A_i, B_i, offs_n, offs_l, offs_t, mask_t,
               G, dx, ddt, dA_acc, dB_acc, dC_acc, dB_row, dC_row, s_dB_n, s_dB_l, s_dC_n, s_dC_l,
               VAR_B: tl.constexpr, VAR_C: tl.constexpr):  # fmt: skip
    """Fold state i's (h, g, w) into the carries and gradients; dB / dC rows of (b, [g,] n, l) go out by atomics."""
    g_start = tl.sum(tl.where(offs_l[None, :] == 0, g, 0.0), axis=1)  # a gather here measured slower (H100)
    G = tl.where(offs_n[None, :] == i, g_start[:, None], G)
    dx += g * B_i
    ddt += w * A_i[:, None]
    dA_acc += tl.where(offs_n[None, :] == i, tl.sum(w * dt, axis=1)[:, None], 0.0)
    if VAR_B:
        tl.atomic_add(dB_row + i * s_dB_n + offs_t * s_dB_l, tl.sum(g * x, axis=0), mask=mask_t, sem="relaxed")
    else:
        dB_acc += tl.where(offs_n[None, :] == i, tl.sum(g * x, axis=1)[:, None], 0.0)
    if VAR_C:
        tl.atomic_add(dC_row + i * s_dC_n + offs_t * s_dC_l, tl.sum(h * dy, axis=0), mask=mask_t, sem="relaxed")
    else:
        dC_acc += tl.where(offs_n[None, :] == i, tl.sum(h * dy, axis=1)[:, None], 0.0)
    return G, dx, ddt, dA_acc, dB_acc, dC_acc


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


@triton.jit
def _scan_bwd_kernel(
    u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, ckpt_ptr, y_ptr, dout_ptr, dlast_ptr,
    du_ptr, ddt_ptr, dz_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr, dbias_ptr, dh0_ptr,
    d, L, n, n_chunks, d_per_group,
    s_u_b, s_u_d, s_u_l,
    s_dt_b, s_dt_d, s_dt_l,
    s_z_b, s_z_d, s_z_l,
    s_y_b, s_y_d, s_y_l,
    s_do_b, s_do_d, s_do_l,
    s_g_b, s_g_d, s_g_l,
    s_A_d, s_A_n,
    s_B_b, s_B_g, s_B_n, s_B_l,
    s_C_b, s_C_g, s_C_n, s_C_l,
    s_dB_b, s_dB_g, s_dB_n, s_dB_l,
    s_dC_b, s_dC_g, s_dC_n, s_dC_l,
    VAR_B: tl.constexpr, VAR_C: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_DLAST: tl.constexpr, STORE_DH0: tl.constexpr, PREFETCH: tl.constexpr, RELOAD: tl.constexpr,
    STATES: tl.constexpr, MIRROR: tl.constexpr,
    ACC: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_L: tl.constexpr,
):  # fmt: skip
    """du, ddelta, dz (b, d, l) share the strides s_g_*; dA / dD / dbias (and dB / dC for (d, n) B / C),
    contiguous, and dB / dC of shape (b, [g,] n, l) are fp32 (or fp64) atomic targets the host zeroes.
    PREFETCH loads the next state's B / C rows during the current state; RELOAD re-reads u and delta
    after the state loop instead of keeping them live in registers through it (register pressure).
    MIRROR runs the adjoint as a forward scan over time-reversed operands and reverses g back (_reverse):
    Triton 3.6 lowers a reverse=True scan by flipping its two operands and two results with five butterfly
    shuffles per register each; MIRROR's three reversals cost one shuffle per register each."""
    pid_b = tl.program_id(0).to(tl.int64)
    pid_d = tl.program_id(1)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    offs_l = tl.arange(0, BLOCK_L)
    mask_d = offs_d < d
    mask_dn = mask_d[:, None] & (offs_n < n)[None, :]
    dn_offs = offs_d[:, None] * n + offs_n[None, :]
    if HAS_D:
        Dv = tl.load(D_ptr + offs_d, mask=mask_d, other=0.0).to(ACC)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(ACC)
    grp = (pid_d * BLOCK_D) // d_per_group
    B_row = B_ptr + pid_b * s_B_b + grp * s_B_g
    C_row = C_ptr + pid_b * s_C_b + grp * s_C_g
    dB_row = dB_ptr + pid_b * s_dB_b + grp * s_dB_g
    dC_row = dC_ptr + pid_b * s_dC_b + grp * s_dC_g
    dA_acc = tl.zeros((BLOCK_D, BLOCK_N), dtype=ACC)
    dB_acc = tl.zeros((BLOCK_D, BLOCK_N), dtype=ACC)
    dC_acc = tl.zeros((BLOCK_D, BLOCK_N), dtype=ACC)
    dD_acc = tl.zeros((BLOCK_D,), dtype=ACC)
    dbias_acc = tl.zeros((BLOCK_D,), dtype=ACC)
    # G[:, i] = g_{e+1} for state i: the adjoint at the first step after the chunk (dlast at the end)
    if HAS_DLAST:
        G = tl.load(dlast_ptr + pid_b * d * n + dn_offs, mask=mask_dn, other=0.0).to(ACC)
    else:
        G = tl.zeros((BLOCK_D, BLOCK_N), dtype=ACC)

    for rev in range(0, n_chunks):
        chunk = n_chunks - 1 - rev
        offs_t = chunk * BLOCK_L + offs_l
        mask_t = offs_t < L
        mask_dt = mask_d[:, None] & mask_t[None, :]
        ckpt_row = ckpt_ptr + (pid_b * n_chunks + chunk) * d * n + offs_d * n  # + i: state i's checkpoint
        u = tl.load(u_ptr + pid_b * s_u_b + offs_d[:, None] * s_u_d + offs_t[None, :] * s_u_l, mask=mask_dt, other=0.0)
        u = u.to(ACC)
        r = tl.load(
            dt_ptr + pid_b * s_dt_b + offs_d[:, None] * s_dt_d + offs_t[None, :] * s_dt_l, mask=mask_dt, other=0.0
        ).to(ACC)
        if HAS_BIAS:
            r = r + bias[:, None]
        if SOFTPLUS:
            dt = _softplus(r)
        else:
            dt = r
        dt = tl.where(mask_dt, dt, 0.0)
        x = dt * u
        # dt one step ahead, for the adjoint's coefficient a_{t+1} (0 past the end: a = 1 there)
        mask_nx = mask_d[:, None] & (offs_t + 1 < L)[None, :]
        dt_nx = tl.load(
            dt_ptr + pid_b * s_dt_b + offs_d[:, None] * s_dt_d + (offs_t + 1)[None, :] * s_dt_l, mask=mask_nx, other=0.0
        ).to(ACC)
        if HAS_BIAS:
            dt_nx = dt_nx + bias[:, None]
        if SOFTPLUS:
            dt_nx = _softplus(dt_nx)
        dt_nx = tl.where(mask_nx, dt_nx, 0.0)
        if MIRROR:  # the adjoint's scan runs in reverse time order (_bwd_state)
            dt_nx = _reverse(dt_nx)
        dy = tl.load(
            dout_ptr + pid_b * s_do_b + offs_d[:, None] * s_do_d + offs_t[None, :] * s_do_l, mask=mask_dt, other=0.0
        ).to(ACC)
        g_offs = pid_b * s_g_b + offs_d[:, None] * s_g_d + offs_t[None, :] * s_g_l
        if HAS_Z:
            zz = tl.load(
                z_ptr + pid_b * s_z_b + offs_d[:, None] * s_z_d + offs_t[None, :] * s_z_l, mask=mask_dt, other=0.0
            ).to(ACC)
            yy = tl.load(
                y_ptr + pid_b * s_y_b + offs_d[:, None] * s_y_d + offs_t[None, :] * s_y_l, mask=mask_dt, other=0.0
            ).to(ACC)
            sig = tl.sigmoid(zz)
            tl.store(
                dz_ptr + g_offs, (dy * yy * sig * (1.0 + zz * (1.0 - sig))).to(dz_ptr.dtype.element_ty), mask=mask_dt
            )
            dy = dy * zz * sig
        dx = tl.zeros((BLOCK_D, BLOCK_L), dtype=ACC)
        ddt = tl.zeros((BLOCK_D, BLOCK_L), dtype=ACC)
        if PREFETCH:
            A_nx, B_nx, C_nx = _load_state_params(
                A_ptr, B_ptr, C_ptr, B_row, C_row, 0, offs_d, offs_t, mask_d, mask_t,
                s_A_d, s_A_n, s_B_g, s_B_n, s_B_l, s_C_g, s_C_n, s_C_l, VAR_B, VAR_C, ACC,
            )  # fmt: skip
        for i in range(0, n, STATES):
            if PREFETCH:
                A_i, B_i, C_i = A_nx, B_nx, C_nx
                A_nx, B_nx, C_nx = _load_state_params(
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
                h0_j = tl.load(ckpt_row + i + 1, mask=mask_d, other=0.0)
                h_j, g_j, w_j = _bwd_state(
                    dt, x, dt_nx, dy * C_j, A_j, B_j, h0_j, _column_sum(G, offs_n, i + 1), MIRROR
                )
            h0_i = tl.load(ckpt_row + i, mask=mask_d, other=0.0)
            h, g, w = _bwd_state(dt, x, dt_nx, dy * C_i, A_i, B_i, h0_i, _column_sum(G, offs_n, i), MIRROR)
            G, dx, ddt, dA_acc, dB_acc, dC_acc = _bwd_grads(
                i, h, g, w, dt, x, dy, A_i, B_i, offs_n, offs_l, offs_t, mask_t,
                G, dx, ddt, dA_acc, dB_acc, dC_acc, dB_row, dC_row, s_dB_n, s_dB_l, s_dC_n, s_dC_l, VAR_B, VAR_C,
            )  # fmt: skip
            if STATES == 2:
                G, dx, ddt, dA_acc, dB_acc, dC_acc = _bwd_grads(
                    i + 1, h_j, g_j, w_j, dt, x, dy, A_j, B_j, offs_n, offs_l, offs_t, mask_t,
                    G, dx, ddt, dA_acc, dB_acc, dC_acc, dB_row, dC_row, s_dB_n, s_dB_l, s_dC_n, s_dC_l, VAR_B, VAR_C,
                )  # fmt: skip
        if RELOAD:
            u = tl.load(
                u_ptr + pid_b * s_u_b + offs_d[:, None] * s_u_d + offs_t[None, :] * s_u_l, mask=mask_dt, other=0.0
            ).to(ACC)
        ddt += u * dx
        du = dx * dt
        if HAS_D:
            du += dy * Dv[:, None]
            dD_acc += tl.sum(dy * u, axis=1)
        if SOFTPLUS:
            if RELOAD:
                r = tl.load(
                    dt_ptr + pid_b * s_dt_b + offs_d[:, None] * s_dt_d + offs_t[None, :] * s_dt_l,
                    mask=mask_dt,
                    other=0.0,
                ).to(ACC)
                if HAS_BIAS:
                    r = r + bias[:, None]
            ddt = ddt * tl.sigmoid(r)
        ddt = tl.where(mask_dt, ddt, 0.0)
        if HAS_BIAS:
            dbias_acc += tl.sum(ddt, axis=1)
        tl.store(du_ptr + g_offs, du.to(du_ptr.dtype.element_ty), mask=mask_dt)
        tl.store(ddt_ptr + g_offs, ddt.to(ddt_ptr.dtype.element_ty), mask=mask_dt)

    # per-channel gradients, summed over the batch by fp32 atomics (b programs add into each channel block)
    tl.atomic_add(dA_ptr + dn_offs, dA_acc, mask=mask_dn, sem="relaxed")
    if not VAR_B:
        tl.atomic_add(dB_ptr + dn_offs, dB_acc, mask=mask_dn, sem="relaxed")
    if not VAR_C:
        tl.atomic_add(dC_ptr + dn_offs, dC_acc, mask=mask_dn, sem="relaxed")
    if HAS_D:
        tl.atomic_add(dD_ptr + offs_d, dD_acc, mask=mask_d, sem="relaxed")
    if HAS_BIAS:
        tl.atomic_add(dbias_ptr + offs_d, dbias_acc, mask=mask_d, sem="relaxed")
    if STORE_DH0:  # dL/dh_{-1} = a_0 g_0
        r0 = tl.load(dt_ptr + pid_b * s_dt_b + offs_d * s_dt_d, mask=mask_d, other=0.0).to(ACC)
        if HAS_BIAS:
            r0 = r0 + bias
        if SOFTPLUS:
            r0 = _softplus(r0)
        A = tl.load(A_ptr + offs_d[:, None] * s_A_d + offs_n[None, :] * s_A_n, mask=mask_dn, other=0.0)
        tl.store(dh0_ptr + pid_b * d * n + dn_offs, tl.exp(r0[:, None] * A.to(ACC)) * G, mask=mask_dn)


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
    ACC: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
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
    h = tl.load(s_ptrs, mask=mask_dn, other=0.0).to(ACC)
    x = tl.load(x_ptr + pid_b * s_x_b + offs_d * s_x_d, mask=mask_d, other=0.0).to(ACC)
    dt = tl.load(dt_ptr + pid_b * s_dt_b + offs_d * s_dt_d, mask=mask_d, other=0.0).to(ACC)
    if HAS_BIAS:
        dt += tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(ACC)
    if SOFTPLUS:
        dt = _softplus(dt)
    A = tl.load(A_ptr + offs_d[:, None] * s_A_d + offs_n[None, :] * s_A_n, mask=mask_dn, other=0.0).to(ACC)
    B = tl.load(B_ptr + pid_b * s_B_b + grp * s_B_g + offs_n * s_B_n, mask=mask_n, other=0.0).to(ACC)
    C = tl.load(C_ptr + pid_b * s_C_b + grp * s_C_g + offs_n * s_C_n, mask=mask_n, other=0.0).to(ACC)
    h = tl.exp(dt[:, None] * A) * h + (dt * x)[:, None] * B[None, :]
    tl.store(s_ptrs, h.to(state_ptr.dtype.element_ty), mask=mask_dn)
    y = tl.sum(h * C[None, :], axis=1)
    if HAS_D:
        y += tl.load(D_ptr + offs_d, mask=mask_d, other=0.0).to(ACC) * x
    if HAS_Z:
        zz = tl.load(z_ptr + pid_b * s_z_b + offs_d * s_z_d, mask=mask_d, other=0.0).to(ACC)
        y = y * zz * tl.sigmoid(zz)
    tl.store(out_ptr + pid_b * s_o_b + offs_d * s_o_d, y.to(out_ptr.dtype.element_ty), mask=mask_d)


# ----------------------------------------------------------------------------------------------
# host side


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _next_pow2(x: int) -> int:
    return 1 << max(0, (x - 1).bit_length())


def _tl_dtype(dt: torch.dtype):
    """Accumulation / state dtype of the kernels: fp32, or fp64 when an input is fp64."""
    return tl.float64 if dt == torch.float64 else tl.float32


# ----------------------------------------------------------------------------------------------
# host side


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


# Tuning hook (benchmarks/tune_ssm_kernels.py): {"fwd" | "bwd": {"BLOCK_D", "BLOCK_L", "num_warps",
# optional "PREFETCH" (bool), "RELOAD" (bool, backward only)}}.
CONFIG_OVERRIDE: dict[str, dict] = {}
# The last compiled kernel launched for "fwd" / "bwd" (its n_regs / n_spills are reported by the tuner).
LAST_COMPILED: dict[str, object] = {}
# Defaults on CUDA, from benchmarks/tune_ssm_kernels.py on an H100 (b=4, d=2048, n=16, bf16; swept at
# l=4096, the best re-timed at 1024 and 16384, then side by side in benchmarks/bench_ssm_kernels.py):
# one warp per program, so the scans and row reductions stay inside a warp, and many programs per SM.
# The backward runs one channel per program and two states per iteration (PAIR: two independent
# scans give the scheduler work while the other waits on its shuffles), 128 regs and no spills;
# at l=1k..16k it beat the best one-state configurations by 3-10% end to end. MIRROR (the adjoint as a
# forward scan over reversed operands) cut the backward kernel's shuffles per state pair from 242 to 102
# (benchmarks/sm90_compile.py) and its time at l=4k from about 2.5 to 1.91 ms (0.56 / 6.96 ms at 1k /
# 16k); with MIRROR on, this configuration was still the best of the sweep (1-2 channels, 64-256 steps,
# 1-2 warps, PAIR, RELOAD) at all three lengths. The forward keeps its 512-step chunks when it stores
# checkpoints for a backward with shorter ones (0.71 ms at 4k, where 128-step chunks took 0.8-0.9).
CUDA_CONFIG = {
    "fwd": dict(BLOCK_D=1, BLOCK_L=512, num_warps=1, PREFETCH=True),
    "bwd": dict(BLOCK_D=1, BLOCK_L=128, num_warps=1, PREFETCH=False, RELOAD=False, PAIR=True, MIRROR=True),
}


_FLAGS = ("PREFETCH", "RELOAD", "PAIR", "MIRROR")  # code-path switches of CUDA_CONFIG (the rest are sizes)


_CONFIGS: dict[tuple, dict] = {}  # scan_config's answers (host time at short l); keyed on the override too


def _override_key() -> tuple:
    return tuple((k, tuple(sorted(v.items()))) for k, v in CONFIG_OVERRIDE.items())


def scan_config(d: int, n: int, L: int, groups: int, backward: bool, device: torch.device) -> dict:
    """Block sizes and warps: small blocks under the interpreter (tests), tuned ones on CUDA.

    The backward must use the forward's BLOCK_L when it reads the forward's checkpoints; the
    callers take care of that. Answers are memoised per shape and CONFIG_OVERRIDE (not CUDA_CONFIG:
    clear ``_CONFIGS`` and ``_PLANS`` after editing it at run time).
    """
    key = (d, n, L, groups, backward, device.type == "cuda", _override_key() if CONFIG_OVERRIDE else ())
    cfg = _CONFIGS.get(key)
    if cfg is None:
        if len(_CONFIGS) > 4096:
            _CONFIGS.clear()
        cfg = _CONFIGS[key] = _scan_config(d, n, L, groups, backward, device)
    return cfg


def _scan_config(d: int, n: int, L: int, groups: int, backward: bool, device: torch.device) -> dict:
    block_n = _next_pow2(n)
    key = "bwd" if backward else "fwd"
    if device.type != "cuda":  # the CUDA code path (its flags, an override's too) on small blocks: tests run it
        over = CONFIG_OVERRIDE.get(key, {})
        flags = {k: v for k, v in {**CUDA_CONFIG[key], **over}.items() if k in _FLAGS}
        # the forward's chunk twice the backward's, as on CUDA: checkpoints inside a chunk are exercised
        block_l = over.get("BLOCK_L", 8 if backward else 16)
        return dict(BLOCK_D=_block_d(d, groups, 4), BLOCK_N=block_n, BLOCK_L=block_l, num_warps=1, **flags)
    cfg = {**CUDA_CONFIG[key], **CONFIG_OVERRIDE.get(key, {})}
    # short sequences: a smaller chunk wastes less work on padding
    block_l = min(cfg["BLOCK_L"], max(16, _next_pow2(L)))
    return dict(cfg, BLOCK_D=_block_d(d, groups, cfg["BLOCK_D"]), BLOCK_N=block_n, BLOCK_L=block_l)


def _states_per_iteration(cfg: dict, n: int) -> int:
    """2 when the config asks for PAIR and n is even; an odd n runs one state per iteration, logged once."""
    if not cfg.get("PAIR", False):
        return 1
    if n % 2:
        once("scan_pair_odd_n", f"selective scan: PAIR needs an even d_state, got n={n}; one state per iteration")
        return 1
    return 2


def _prefetch(cfg: dict, states: int) -> bool:
    """PREFETCH applies to one state per iteration; a config asking for it with PAIR runs without, logged once."""
    if not cfg.get("PREFETCH", True):
        return False
    if states == 2:
        if "PREFETCH" in cfg:
            once("scan_prefetch_pair", "selective scan: PREFETCH does not combine with PAIR; running without")
        return False
    return True


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


# Host path. At l ~ 1k the scan's forward+backward is bound by the host (bench_ssm_kernels.py's host
# column), so what does not change between calls is worked out once: a forward or backward *site*
# holds a launch's grid, integer and constexpr arguments (a _launch.Site, which keeps the compiled
# kernel), and the shapes of the buffers to allocate; a _Plan holds the validated signature's sites.
# A call then allocates, launches and returns views.


class _FwdSite:
    __slots__ = ("site", "out_shape", "store_y", "hlast_shape", "ckpt_shape", "cdt")


class _BwdSite:
    # grads: (count, b, d, l) for du / ddelta (/ dz) in one buffer, or None (separate, mixed dtypes);
    # acc_sizes: the zeroed fp32 (fp64) buffer's parts in order dA, dB, dC, dD, dbias (0 when absent);
    # finish: per part, (shape, dtype to convert to or None); var_tail: convert dB / dC (b, [g,] n, l) at once
    __slots__ = ("site", "grads", "acc", "acc_sizes", "finish", "var_tail", "dh0_shape")


def _forward_site(u, delta, A, B, C, D, z, delta_bias, h0, softplus, store_ckpt, store_last) -> _FwdSite:
    b, d, L = u.shape
    n = A.shape[1]
    groups = _groups(B, C, 4)
    cfg = scan_config(d, n, L, groups, False, u.device)
    # The backward re-reads the checkpoints at its own (shorter) chunk length; the forward keeps its chunks
    # and stores the state every ckpt_l steps inside them (both are powers of two).
    ckpt_l = scan_config(d, n, L, groups, True, u.device)["BLOCK_L"] if store_ckpt else cfg["BLOCK_L"]
    if cfg["BLOCK_L"] < ckpt_l:
        once("scan_fwd_block_l", f"selective scan: forward BLOCK_L={cfg['BLOCK_L']} is below the backward's "
             f"{ckpt_l}; the forward that stores checkpoints runs {ckpt_l}-step chunks")  # fmt: skip
    cfg = dict(cfg, BLOCK_L=max(cfg["BLOCK_L"], ckpt_l))
    n_chunks = _cdiv(L, cfg["BLOCK_L"])
    n_ckpt = _cdiv(L, ckpt_l)
    states = _states_per_iteration(cfg, n)
    fs = _FwdSite()
    fs.out_shape = (b, d, L)
    fs.store_y = store_ckpt and z is not None
    fs.cdt = compute_dtype(u, delta, A, B, C, D, z, delta_bias, h0)
    fs.hlast_shape = (b, d, n) if store_last else None
    fs.ckpt_shape = (b, n_ckpt, d, n) if store_ckpt else None
    var_b, sB = _bc_view(B)
    var_c, sC = _bc_view(C)
    zz = z if z is not None else u
    ints = (
        d, L, n, n_chunks, n_ckpt, d // groups,
        *u.stride(), *delta.stride(), *zz.stride(), *_contig_strides(fs.out_shape), *A.stride(), *sB, *sC,
    )  # fmt: skip
    consts = (
        var_b, var_c, D is not None, z is not None, delta_bias is not None, softplus, h0 is not None,
        store_ckpt, fs.store_y, store_last, _prefetch(cfg, states), states, _tl_dtype(fs.cdt),
        cfg["BLOCK_D"], cfg["BLOCK_N"], cfg["BLOCK_L"], ckpt_l,
    )  # fmt: skip
    grid = (b, _cdiv(d, cfg["BLOCK_D"]))
    # the first 9 pointers are the inputs; the rest are fresh allocations
    fs.site = Site(_scan_fwd_kernel, grid, ints, consts, cfg["num_warps"], u.get_device(), checked=9)
    return fs


def _run_forward(fs: _FwdSite, u, delta, A, B, C, D, z, delta_bias, h0):
    """-> out, last state or None, checkpoints or None, pre-gate y or None (saved for dz)."""
    dev = u.device
    out = torch.empty(fs.out_shape, device=dev, dtype=u.dtype)
    y = torch.empty(fs.out_shape, device=dev, dtype=u.dtype) if fs.store_y else None
    hlast = torch.empty(fs.hlast_shape, device=dev, dtype=fs.cdt) if fs.hlast_shape else None
    ckpt = torch.empty(fs.ckpt_shape, device=dev, dtype=fs.cdt) if fs.ckpt_shape else None
    dummy = out
    ptrs = (
        u, delta, A, B, C,
        dummy if D is None else D, u if z is None else z, dummy if delta_bias is None else delta_bias,
        dummy if h0 is None else h0, out, dummy if y is None else y,
        dummy if hlast is None else hlast, dummy if ckpt is None else ckpt,
    )  # fmt: skip
    LAST_COMPILED["fwd"] = launch_site(fs.site, ptrs, launch)
    return out, hlast, ckpt, y


def _scan_forward(u, delta, A, B, C, D, z, delta_bias, h0, softplus, store_ckpt, store_last):
    """One forward launch, its site built for this call (the tuner's entry; selective_scan_fn plans)."""
    fs = _forward_site(u, delta, A, B, C, D, z, delta_bias, h0, softplus, store_ckpt, store_last)
    return _run_forward(fs, u, delta, A, B, C, D, z, delta_bias, h0)


def _backward_site(u, delta, A, B, C, D, z, delta_bias, ckpt, y, dout, dlast, softplus, need_dh0) -> _BwdSite:
    b, d, L = u.shape
    n = A.shape[1]
    groups = _groups(B, C, 4)
    cfg = scan_config(d, n, L, groups, True, u.device)
    n_chunks = ckpt.shape[1]
    if n_chunks != _cdiv(L, cfg["BLOCK_L"]):
        raise RuntimeError("selective scan: the checkpoints were written with another chunk length")
    states = _states_per_iteration(cfg, n)
    acc = compute_dtype(u, delta, A, B, C, D, z, delta_bias, dout)
    bs = _BwdSite()
    bs.acc = acc
    # du, ddelta (and dz) share one allocation when their dtypes agree.
    count = 3 if z is not None else 2
    same = delta.dtype == u.dtype and (z is None or z.dtype == u.dtype)
    bs.grads = (count, b, d, L) if same else None
    # The per-channel gradients (dA, dD, dbias, a (d, n) dB / dC) are atomic targets summed over the
    # batch, and so is a variable dB / dC (over channels): all in one zeroed buffer, one zero fill, in the
    # order dA, dD, dbias, dB, dC (a part is empty when its input is None). Parts whose offsets are not
    # 16-byte aligned (odd shapes) are correct but launch through launch()'s key every call.
    var_b, sB = _bc_view(B)
    var_c, sC = _bc_view(C)
    bs.acc_sizes = (
        d * n, d if D is not None else 0, d if delta_bias is not None else 0,
        B.numel() if var_b else d * n, C.numel() if var_c else d * n,
    )  # fmt: skip
    conv = lambda t: None if t.dtype == acc else t.dtype  # noqa: E731
    # a variable dB and dC converted to one dtype are converted at once: the buffer's tail
    bs.var_tail = conv(B) if var_b and var_c and B.dtype == C.dtype else None
    bs.finish = (  # (shape to view as, or None: already (d,); dtype to convert to, or None)
        ((d, n), conv(A)),
        (None, conv(D)) if D is not None else None,
        (None, conv(delta_bias)) if delta_bias is not None else None,
        (B.shape, None if bs.var_tail else conv(B)),
        (C.shape, None if bs.var_tail else conv(C)),
    )  # fmt: skip
    bs.dh0_shape = (b, d, n) if need_dh0 else None
    g_strides = _contig_strides((b, d, L))
    sdB = _bc_strides(B.dim(), _contig_strides(B.shape))[1] if var_b else (0, 0, 0, 0)
    sdC = _bc_strides(C.dim(), _contig_strides(C.shape))[1] if var_c else (0, 0, 0, 0)
    zz = z if z is not None else u
    yy = y if y is not None else u
    ints = (
        d, L, n, n_chunks, d // groups,
        *u.stride(), *delta.stride(), *zz.stride(), *yy.stride(), *dout.stride(), *g_strides,
        *A.stride(), *sB, *sC, *sdB, *sdC,
    )  # fmt: skip
    consts = (
        var_b, var_c, D is not None, z is not None, delta_bias is not None, softplus, dlast is not None, need_dh0,
        _prefetch(cfg, states), cfg.get("RELOAD", False), states, cfg.get("MIRROR", False),
        _tl_dtype(acc), cfg["BLOCK_D"], cfg["BLOCK_N"], cfg["BLOCK_L"],
    )  # fmt: skip
    grid = (b, _cdiv(d, cfg["BLOCK_D"]))
    # the first 12 pointers are inputs (or the forward's buffers); the rest are fresh allocations or views
    # of them, whose offsets are checked here
    offsets = [i * b * d * L * u.element_size() for i in range(count)] if same else [0]
    offsets += [sum(bs.acc_sizes[:i]) * acc.itemsize for i in range(5)]
    checked = 12 if all(o % 16 == 0 for o in offsets) else None
    bs.site = Site(_scan_bwd_kernel, grid, ints, consts, cfg["num_warps"], u.get_device(), checked=checked)
    return bs


def _run_backward(bs: _BwdSite, u, delta, A, B, C, D, z, delta_bias, ckpt, y, dout, dlast):
    """-> du, ddelta, dA, dB, dC, dD, dz, dbias, dh0 (None for an absent input)."""
    dev = u.device
    if bs.grads is not None:
        g = torch.empty(bs.grads, device=dev, dtype=u.dtype).unbind(0)
        du, ddelta, dz = g if z is not None else (*g, None)
    else:
        du = torch.empty(u.shape, device=dev, dtype=u.dtype)
        ddelta = torch.empty(u.shape, device=dev, dtype=delta.dtype)
        dz = torch.empty(u.shape, device=dev, dtype=z.dtype) if z is not None else None
    buf = torch.zeros(sum(bs.acc_sizes), device=dev, dtype=bs.acc)
    parts = buf.split_with_sizes(bs.acc_sizes)
    dh0 = torch.empty(bs.dh0_shape, device=dev, dtype=bs.acc) if bs.dh0_shape else None
    dummy = buf
    ptrs = (
        u, delta, A, B, C, dummy if D is None else D, u if z is None else z,
        dummy if delta_bias is None else delta_bias, ckpt, u if y is None else y, dout,
        dummy if dlast is None else dlast, du, ddelta, dummy if dz is None else dz,
        parts[0], parts[3], parts[4], parts[1], parts[2], dummy if dh0 is None else dh0,
    )  # fmt: skip
    LAST_COMPILED["bwd"] = launch_site(bs.site, ptrs, launch)
    if bs.var_tail is not None:
        nb, nc = bs.acc_sizes[3:]
        parts = (*parts[:3], *buf[buf.numel() - nb - nc :].to(bs.var_tail).split_with_sizes((nb, nc)))
    dA, dD, dbias, dB, dC = (_finish(p, f) for p, f in zip(parts, bs.finish, strict=True))
    return du, ddelta, dA, dB, dC, dD, dz, dbias, dh0


def _finish(part: torch.Tensor, how: tuple | None) -> torch.Tensor | None:
    if how is None:
        return None
    shape, dtype = how
    if shape is not None:
        part = part.view(shape)
    return part if dtype is None else part.to(dtype)


def _scan_backward(u, delta, A, B, C, D, z, delta_bias, ckpt, y, dout, dlast, softplus, need_dh0):
    """One backward launch, its site built for this call (the tuner's entry; selective_scan_fn plans)."""
    bs = _backward_site(u, delta, A, B, C, D, z, delta_bias, ckpt, y, dout, dlast, softplus, need_dh0)
    return _run_backward(bs, u, delta, A, B, C, D, z, delta_bias, ckpt, y, dout, dlast)


def _contig_last(t: torch.Tensor | None) -> torch.Tensor | None:
    """Make the last (time) axis unit-stride for coalesced tile loads; other layouts are copied."""
    if t is None or t.stride(-1) == 1:
        return t
    return t.contiguous()


def _sig(t: torch.Tensor | None) -> tuple | None:
    return None if t is None else (t.shape, t.stride(), t.dtype, t.device)


class _Plan:
    """A validated selective_scan_fn signature (the inputs' shapes, strides, dtypes and devices, the flags,
    CONFIG_OVERRIDE) and its sites: forward by whether checkpoints are stored, backward by dout's strides
    and whether dlast / dh0 take part. Built on the first call with the signature; kept in _PLANS."""

    __slots__ = ("cdt", "softplus", "return_last", "copy", "h0_dtype", "fwd", "bwd")


_PLANS: dict[tuple, _Plan] = {}
_PLANS_MAX = 4096  # distinct signatures kept (inference sees many lengths); cleared when full


def _plan(key: tuple, u, delta, A, B, C, D, z, delta_bias, initial_state, softplus, return_last) -> _Plan:
    check_scan(u, delta, A, B, C, D, z, delta_bias, initial_state)
    p = _Plan()
    p.cdt = compute_dtype(u, delta, A, B, C, D, z, delta_bias, initial_state)
    p.softplus, p.return_last = softplus, return_last
    # time not the unit stride: u / delta / z are copied (coalesced tile loads), and so is a variable B / C,
    # whose state rows would otherwise load one sector per step (b * n * l elements, d / n times fewer than u)
    copied = [k for k, t in (("u", u), ("delta", delta), ("z", z)) if t is not None and t.stride(-1) != 1]
    copied += [k for k, t in (("B", B), ("C", C)) if t.dim() >= 3 and t.stride(-1) != 1]
    p.copy = bool(copied)
    if copied:  # said once per layout: an extra pass over each on every call
        msg = (
            f"selective scan: {', '.join(copied)} have time (the last axis) at a stride other than 1 and are "
            "copied on every call; pass them with time contiguous to skip the copy"
        )
        once(f"scan_copy:{copied}", msg)
    p.h0_dtype = initial_state.dtype if initial_state is not None else None
    p.fwd, p.bwd = [None, None], {}
    if len(_PLANS) >= _PLANS_MAX:
        _PLANS.clear()
    _PLANS[key] = p
    return p


class _SelectiveScanFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, h0, plan):
        if plan.copy:
            u, delta, z = _contig_last(u), _contig_last(delta), _contig_last(z)
            B = _contig_last(B) if B.dim() >= 3 else B
            C = _contig_last(C) if C.dim() >= 3 else C
        need_grad = any(ctx.needs_input_grad[:9])
        fs = plan.fwd[need_grad]
        if fs is None:
            fs = plan.fwd[need_grad] = _forward_site(
                u, delta, A, B, C, D, z, delta_bias, h0, plan.softplus, need_grad, plan.return_last
            )
        out, hlast, ckpt, y = _run_forward(fs, u, delta, A, B, C, D, z, delta_bias, h0)
        if need_grad:
            ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, ckpt, y)
        ctx.plan = plan
        return (out, hlast) if plan.return_last else out

    @staticmethod
    def backward(ctx, dout, *rest):
        u, delta, A, B, C, D, z, delta_bias, ckpt, y = ctx.saved_tensors
        plan = ctx.plan
        dlast = rest[0] if plan.return_last else None
        if dout.stride(-1) != 1:
            dout = dout.contiguous()
        if dlast is not None:
            dlast = dlast.to(ckpt.dtype).contiguous()
        need_dh0 = plan.h0_dtype is not None and ctx.needs_input_grad[8]
        key = (dout.stride(), dlast is not None, need_dh0)
        bs = plan.bwd.get(key)
        if bs is None:
            bs = plan.bwd[key] = _backward_site(
                u, delta, A, B, C, D, z, delta_bias, ckpt, y, dout, dlast, plan.softplus, need_dh0
            )
        du, ddelta, dA, dB, dC, dD, dz, dbias, dh0 = _run_backward(
            bs, u, delta, A, B, C, D, z, delta_bias, ckpt, y, dout, dlast
        )
        if dh0 is not None:
            dh0 = dh0.to(plan.h0_dtype)
        return du, ddelta, dA, dB, dC, dD, dz, dbias, dh0, None


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
    initial_state (b, d, n). Returns out (b, d, l) in u's dtype (and the final state (b, d, n) in fp32, or
    fp64 when an input is fp64).
    """
    over = _override_key() if CONFIG_OVERRIDE else ()
    key = (
        _sig(u), _sig(delta), _sig(A), _sig(B), _sig(C), _sig(D), _sig(z), _sig(delta_bias), _sig(initial_state),
        bool(delta_softplus), bool(return_last_state), over,
    )  # fmt: skip
    plan = _PLANS.get(key)
    if plan is None:  # validates: a signature is planned only once it passed
        plan = _plan(key, u, delta, A, B, C, D, z, delta_bias, initial_state, bool(delta_softplus),
                     bool(return_last_state))  # fmt: skip
    h0 = initial_state.to(plan.cdt).contiguous() if initial_state is not None else None
    if u.shape[-1] == 0:
        out = u.new_empty(u.shape)
        if not return_last_state:
            return out
        return out, h0.clone() if h0 is not None else u.new_zeros((*u.shape[:2], A.shape[1]), dtype=plan.cdt)
    return _SelectiveScanFn.apply(u, delta, A, B, C, D, z, delta_bias, h0, plan)


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
    block_n = _next_pow2(n)
    cuda = state.is_cuda
    block_d = _block_d(d, groups, max(1, 2048 // block_n) if cuda else 4)
    out = torch.empty((b, d), device=x.device, dtype=x.dtype)
    sB = (B.stride(0), 0, B.stride(1)) if B.dim() == 2 else B.stride()
    sC = (C.stride(0), 0, C.stride(1)) if C.dim() == 2 else C.stride()
    zz = z if z is not None else x
    dummy = x
    grid = (b, _cdiv(d, block_d))
    ptrs = (state, x, dt, A, B, C, D if D is not None else dummy, zz, dt_bias if dt_bias is not None else dummy, out)
    ints = (
        d, n, d // groups,
        *state.stride(), *x.stride(), *dt.stride(), *zz.stride(), *out.stride(), *A.stride(), *sB, *sC,
    )  # fmt: skip
    consts = (
        D is not None, z is not None, dt_bias is not None, dt_softplus,
        _tl_dtype(compute_dtype(state, x, dt, A, B, C, D, z, dt_bias)), block_d, block_n,
    )  # fmt: skip
    launch(_state_update_kernel, grid, ptrs, ints, consts, 4 if cuda else 1, state.get_device())
    return out
