"""Selective scan, backward: the reverse-chunk kernel that recomputes each state from the forward's
checkpoints and runs the adjoint as an associative scan (triton.py has the design).
"""

from __future__ import annotations

import triton
import triton.language as tl

from ._fwd import _fwd_combine, _load_state_params, _softplus


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
