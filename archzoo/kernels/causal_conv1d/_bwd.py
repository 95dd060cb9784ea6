"""Causal conv1d, backward kernel: dpre recomputed from x, dx by the adjoint taps, dweight / dbias summed per
tile and added by atomics (the step indexing of the group tuples is explained at the end of _layout.py).
"""

from __future__ import annotations

import triton
import triton.language as tl

from ._layout import V, _join8, _load_groups, _load_x, _split8, _store_groups, _weights


@triton.jit
def _dpre(X, D, w, bias, m: tl.constexpr, W: tl.constexpr, SILU: tl.constexpr):
    """dout * act'(pre) at step m of this group (m >= V: the next group); D = (dout here, dout next)."""
    g = D[m // 8][m % 8]  # V = 8
    if SILU:
        pre = bias
        for k in tl.static_range(W):
            pre += w[k] * X[(m - W + 9 + k) // 8][(m - W + 9 + k) % 8]
        s = tl.sigmoid(pre)
        g = g * s * (1.0 + pre * (1.0 - s))
    return g


@triton.jit
def _dx(P, w, j: tl.constexpr, W: tl.constexpr):
    """dx at step j of this group from the dpre tuple P (steps 0 .. 2V-1): sum_k w[k] dpre[j + (W-1) - k]."""
    acc = w[0] * P[j + W - 1]
    for k in tl.static_range(1, W):
        acc += w[k] * P[j + W - 1 - k]
    return acc


@triton.jit
def _tap(P, X, k: tl.constexpr, W: tl.constexpr):
    """sum over this group's steps j of dpre[j] x[j - (W-1) + k] (BD, G): tap k's share of dweight."""
    acc = P[0] * X[(9 - W + k) // 8][(9 - W + k) % 8]
    for j in tl.static_range(1, V):
        acc += P[j] * X[(j - W + 9 + k) // 8][(j - W + 9 + k) % 8]  # dpre[j] x[j - (W-1) + k]
    return acc


@triton.jit
def _conv_bwd_kernel(
    x_ptr, w_ptr, bias_ptr, init_ptr, dout_ptr, dx_ptr, dinit_ptr, part_ptr, db_ptr,
    d, L, n_b, s_x_b, s_x_d, s_x_l, s_g_b, s_g_d, s_g_l,
    W: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_INIT: tl.constexpr, DINIT: tl.constexpr, SILU: tl.constexpr,
    ACC: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr, TILES: tl.constexpr, OWN: tl.constexpr,
    STAGES: tl.constexpr, PREFETCH: tl.constexpr,
):  # fmt: skip
    """dx (b, d, L) and dinit (b, d, W-1) contiguous; part: [dweight (d, W) flattened, dbias (d,)] fp32 (fp64),
    zeroed by the host, to which every program adds its sums by atomics. The groups before and after each group
    (x) and after it (dout) are loaded again as whole tiles shifted by V, from L1 / L2 (gathering them from the tile
    through shared memory instead lost, docs/kernels.md). TILES: consecutive tiles a program walks, summing dweight
    / dbias in registers over all of them before its one cross-thread reduction and atomic add a tap (1: a program a
    tile). n_b: batch rows a program walks (program_id(0) + 0 .. n_b - 1; 1 unless OWN). OWN: the program walks
    its channels' whole rows in every batch (grid (1, channel blocks, 1), n_b = b), so it holds their complete
    sums and stores them, rounded once, into part (dweight (d, W), the weight's dtype) and db_ptr (dbias (d,)): no
    zeroed buffer, no atomics (the same bits every run), no casts after. STAGES: 0, the tile loop as written; k >= 1,
    the loop annotated num_stages=k (Triton pipelines every load of an annotated loop: tile i + 1's x and dout are
    in flight, through shared memory, while tile i computes; 1 annotates without pipelining). PREFETCH: the next
    tile's x and dout (its new bytes) loaded into registers before this tile computes, carried to the next
    iteration, so the memory works while the ALUs do (no shared memory, which STAGES' pipelining goes through); the
    tile's shifted loads (the groups before and after) then hit L1 / L2."""
    G: tl.constexpr = BLOCK_L // V
    pid_d = tl.program_id(1)
    pid_l = tl.program_id(2)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = offs_d < d
    w = _weights(w_ptr, offs_d, mask_d, W, ACC)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(ACC)[:, None]
    else:
        bias = tl.zeros((BLOCK_D, 1), dtype=ACC)
    # this program's dweight[k] (a0 .. a7, k < W) and dbias (ab) sums, per thread until the end; named one by one
    # (and updated and added under `if W > k`, pruned at compile time) because a loop carries tensors, not a tuple
    a0 = tl.zeros((BLOCK_D, G), dtype=ACC)
    a1 = tl.zeros((BLOCK_D, G), dtype=ACC)
    a2 = tl.zeros((BLOCK_D, G), dtype=ACC)
    a3 = tl.zeros((BLOCK_D, G), dtype=ACC)
    a4 = tl.zeros((BLOCK_D, G), dtype=ACC)
    a5 = tl.zeros((BLOCK_D, G), dtype=ACC)
    a6 = tl.zeros((BLOCK_D, G), dtype=ACC)
    a7 = tl.zeros((BLOCK_D, G), dtype=ACC)
    ab = tl.zeros((BLOCK_D, G), dtype=ACC)
    n_all = n_b * TILES
    if PREFETCH:  # the first tile's x and dout; each iteration then loads the next one's
        pid_b, start, first, x_row, i_row, g_row = _tile(0, TILES, pid_l, x_ptr, init_ptr, dout_ptr, offs_d, d, s_x_b,
                                                         s_x_d, s_g_b, s_g_d, W, DINIT, BLOCK_L)  # fmt: skip
        xc_next = _load_x(x_row, s_x_l, i_row, start, L, mask_d, first, G, W, HAS_INIT, ACC)
        dc_next = _load_groups(g_row, s_g_l, start, 0, L, 0, mask_d, G, ACC)
    # batch row i_all // TILES, its tile i; tiles past the end add zeros
    for i_all in tl.range(0, n_all, num_stages=STAGES if STAGES > 0 else None):
        pid_b, start, first, x_row, i_row, g_row = _tile(i_all, TILES, pid_l, x_ptr, init_ptr, dout_ptr, offs_d, d,
                                                         s_x_b, s_x_d, s_g_b, s_g_d, W, DINIT, BLOCK_L)  # fmt: skip
        if PREFETCH:
            xc = xc_next
            dc = dc_next
            _, nstart, nfirst, nx_row, ni_row, ng_row = _tile(i_all + 1, TILES, pid_l, x_ptr, init_ptr, dout_ptr,
                                                              offs_d, d, s_x_b, s_x_d, s_g_b, s_g_d, W, DINIT,
                                                              BLOCK_L)  # fmt: skip
            # past the last tile (another row under OWN): nothing; compared as a vector (the interpreter refuses a
            # mask of a vector and a scalar's comparison)
            nmask = mask_d & (offs_d * 0 + i_all + 1 < n_all)
            xc_next = _load_x(nx_row, s_x_l, ni_row, nstart, L, nmask, nfirst, G, W, HAS_INIT, ACC)
            dc_next = _load_groups(ng_row, s_g_l, nstart, 0, L, 0, nmask, G, ACC)
        else:
            xc = _load_x(x_row, s_x_l, i_row, start, L, mask_d, first, G, W, HAS_INIT, ACC)
            dc = _load_groups(g_row, s_g_l, start, 0, L, 0, mask_d, G, ACC)
        xp = _load_x(x_row, s_x_l, i_row, start - V, L, mask_d, first, G, W, HAS_INIT, ACC)
        xn = _load_x(x_row, s_x_l, i_row, start + V, L, mask_d, first, G, W, HAS_INIT, ACC)
        dn = _load_groups(g_row, s_g_l, start + V, 0, L, 0, mask_d, G, ACC)
        X = (_split8(xp), _split8(xc), _split8(xn))
        D = (_split8(dc), _split8(dn))
        # dpre at the 8 steps of this group and the next group's (only the first W - 1 of those are used)
        P = (
            _dpre(X, D, w, bias, 0, W, SILU), _dpre(X, D, w, bias, 1, W, SILU), _dpre(X, D, w, bias, 2, W, SILU),
            _dpre(X, D, w, bias, 3, W, SILU), _dpre(X, D, w, bias, 4, W, SILU), _dpre(X, D, w, bias, 5, W, SILU),
            _dpre(X, D, w, bias, 6, W, SILU), _dpre(X, D, w, bias, 7, W, SILU), _dpre(X, D, w, bias, 8, W, SILU),
            _dpre(X, D, w, bias, 9, W, SILU), _dpre(X, D, w, bias, 10, W, SILU), _dpre(X, D, w, bias, 11, W, SILU),
            _dpre(X, D, w, bias, 12, W, SILU), _dpre(X, D, w, bias, 13, W, SILU), _dpre(X, D, w, bias, 14, W, SILU),
            _dpre(X, D, w, bias, 15, W, SILU),
        )  # fmt: skip
        dx = _join8((
            _dx(P, w, 0, W), _dx(P, w, 1, W), _dx(P, w, 2, W), _dx(P, w, 3, W),
            _dx(P, w, 4, W), _dx(P, w, 5, W), _dx(P, w, 6, W), _dx(P, w, 7, W),
        ))  # fmt: skip
        _store_groups(dx_ptr + (pid_b * d + offs_d) * L, start, 0, L, 0, mask_d, dx, G)
        if DINIT:
            if first:  # dx at t in [-(W-1), 0) is the gradient of initial_states[..., t + W - 1]
                t = (start + (tl.arange(0, G) * V)[:, None] + tl.arange(0, V)[None, :])[None, :, :]  # (1, G, V)
                di_ptrs = dinit_ptr + ((pid_b * d + offs_d) * (W - 1))[:, None, None] + (t + (W - 1))
                di_mask = mask_d[:, None, None] & (t < 0) & (t >= 1 - W)
                tl.store(di_ptrs, dx.to(dinit_ptr.dtype.element_ty), mask=di_mask)
        # dweight[k] = sum_t dpre[t] x[t - (W-1) + k] and dbias = sum_t dpre[t] over this tile's steps
        a0 += _tap(P, X, 0, W)
        a1 += _tap(P, X, 1, W)
        if W > 2:
            a2 += _tap(P, X, 2, W)
        if W > 3:
            a3 += _tap(P, X, 3, W)
        if W > 4:
            a4 += _tap(P, X, 4, W)
        if W > 5:
            a5 += _tap(P, X, 5, W)
        if W > 6:
            a6 += _tap(P, X, 6, W)
        if W > 7:
            a7 += _tap(P, X, 7, W)
        if HAS_BIAS:
            ab += P[0] + P[1] + P[2] + P[3] + P[4] + P[5] + P[6] + P[7]
    # OWN: the complete sums stored in dweight's / dbias' dtype; else this program's share added by atomics to the
    # host's zeroed buffer (dbias after dweight in it)
    part = part_ptr + offs_d * W
    _put(part + 0, a0, mask_d, OWN)
    _put(part + 1, a1, mask_d, OWN)
    if W > 2:
        _put(part + 2, a2, mask_d, OWN)
    if W > 3:
        _put(part + 3, a3, mask_d, OWN)
    if W > 4:
        _put(part + 4, a4, mask_d, OWN)
    if W > 5:
        _put(part + 5, a5, mask_d, OWN)
    if W > 6:
        _put(part + 6, a6, mask_d, OWN)
    if W > 7:
        _put(part + 7, a7, mask_d, OWN)
    if HAS_BIAS:
        if OWN:
            _put(db_ptr + offs_d, ab, mask_d, OWN)
        else:
            _put(part_ptr + d * W + offs_d, ab, mask_d, OWN)


@triton.jit
def _tile(i_all, TILES: tl.constexpr, pid_l, x_ptr, init_ptr, dout_ptr, offs_d, d, s_x_b, s_x_d, s_g_b, s_g_d,
          W: tl.constexpr, DINIT: tl.constexpr, BLOCK_L: tl.constexpr):  # fmt: skip
    """The program's i_all-th tile: (batch row, first step, whether its groups reach t < 0, the row starts of x,
    initial_states and dout (BD,))."""
    pid_b = tl.program_id(0).to(tl.int64) + i_all // TILES
    start = (pid_l * TILES + i_all % TILES) * BLOCK_L
    if DINIT:  # the first tile also covers [-V, 0)
        start -= V
    first = start < V  # the tile's groups (with the one before) reach t < 0
    x_row = x_ptr + pid_b * s_x_b + offs_d * s_x_d
    i_row = init_ptr + (pid_b * d + offs_d) * (W - 1)
    g_row = dout_ptr + pid_b * s_g_b + offs_d * s_g_d
    return pid_b, start, first, x_row, i_row, g_row


@triton.jit
def _put(ptr, a, mask, OWN: tl.constexpr):
    """One tap's sum over the threads (BD, G) -> (BD,): stored in ptr's dtype (OWN), or added by an atomic."""
    s = tl.sum(a, axis=1)
    if OWN:
        tl.store(ptr, s.to(ptr.dtype.element_ty), mask=mask)
    else:
        tl.atomic_add(ptr, s, mask=mask, sem="relaxed")
