"""Causal linear attention's backward without normalisation, parallel over chunks (``triton.BACKWARD``).

For o_t = q_t S_t, S_t = S_0 + sum_{s<=t} k_s v_s^T (q, k (B, T, H, F), v (B, T, H, Dv)) and the output
gradient do, cut the sequence into chunks c of BT positions. Let h_c be the state before chunk c (S_0 plus the
k^T v of the chunks before it) and dh_c the gradient reaching the state after chunk c from everything later:
the final state's gradient dS_T plus q^T do of the chunks after c. Inside chunk c, o = q h_c + tril(q k^T) v,
and k_s v_s^T reaches both the chunk's own later outputs and, through the state after c, dh_c; so with
A = tril(q k^T) and G = tril(do v^T) (BT, BT):

    dq_c = do h_c^T + G k          (BT, F)
    dk_c = v dh_c^T + G^T q        (BT, F)   (+ dz_T: z_T = z_0 + sum k, when the final z has a gradient)
    dv_c = k dh_c + A^T do         (BT, Dv)
    dS_0 = dS_T + sum_c q_c^T do_c;  dz_0 = dz_T   (z does not enter o without normalisation)

Two kernels. ``_states_kernel`` walks the chunks one after another, one small matmul a step, and stores every
h_c and dh_c: one launch, its programs (feature tile x value tile, batch * head, direction) running the forward
chain (h: k^T v from S_0) beside the reverse one (dh: q^T do from dS_T, ending at dS_0). ``_grads_kernel``
then runs one program per (chunk, batch * head), independent of all others, each reading its chunk's q, k, v,
do, h_c and dh_c once and writing dq, dk, dv in the inputs' dtype (the whole feature dim in one tile; the value
dim in a loop of ``GRAD_TILES`` columns, so G and the dq / dk sums need no partial buffers).

Why materialise the states rather than recompute them per program (the segmented backward, ``triton.py``): the
sequential part shrinks to one k^T v (or q^T do) per chunk, split over 2 x (F / STATE_BLOCK_F) x
(Dv / STATE_BLOCK_V) programs per batch * head, and everything heavy (the BT x BT products, dq, dk, dv) runs
over NC x B x H programs with no chain at all. The price is memory and traffic: h and dh hold NC x F x Dv
values per batch * head each. In fp32 that is 256 chunks x 64 x 64 x 4 B x 32 (B 4, H 8) = 128 MiB each at
T 16k, F = Dv = 64, chunks of 64; they are stored in the dtype the MMAs read them in (bf16 / fp16 for such
inputs, exactly the rounding ``tl.dot`` applied to the state in registers; fp32 otherwise), 64 MiB each there.
The chains still carry the state in fp32."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

# Tiles of the state chains: each (batch * head, direction) is split into (F / STATE_BLOCK_F) x (Dv /
# STATE_BLOCK_V) independent programs (at F = Dv = 64: 4, so 2 x 4 x 32 = 256 programs at B 4, H 8).
STATE_BLOCK_F = 32
STATE_BLOCK_V = 32
STATE_WARPS = 4
# The gradient kernel's (value columns per step of its loop (a power of two >= 16), warps, pipeline stages), for
# bf16 / fp16 MMAs (True) and fp32 ones (False); its feature tile is all of F. Untimed; chosen from the sm_90
# compile at F = Dv = 64 (tools/sm90_compile.py --op la_cp, Triton 3.6 as on the GPU machine): bf16 (32, 4, 1)
# 212 registers, no spill, 40 KiB shared, two programs a SM ((64, 4, 1): 255 registers, no margin; (64, 8, 1):
# 171 with 8 warps, one a SM; a second stage only adds shared memory where the loop runs once or twice). fp32's
# tf32x3 spills at every tile tried, least at (32, 8, 1) (680 B a thread), as the segmented backward's fp32 form
# does (about 1.9 KB).
GRAD_TILES = {True: (32, 4, 1), False: (32, 8, 1)}


@triton.jit
def _dot(a, b, LOWP: tl.constexpr):
    """a @ b with fp32 accumulation: bf16 / fp16 MMAs for low-precision tiles; fp32 ones as tf32x3 (three TF32
    MMAs, about fp32's accuracy; "ieee" lowers to FMAs and spills kilobytes per thread on sm_90). triton.py's
    kernels use it too (as ``_mm``)."""
    if LOWP:
        return tl.dot(a, b)
    return tl.dot(a, b, input_precision="tf32x3")


@triton.jit
def _states_kernel(
    q_ptr, k_ptr, v_ptr, do_ptr, s0_ptr, dst_ptr, h_ptr, dh_ptr, ds0_ptr,
    T, H, F, DV, NC,
    BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    HAS_S0: tl.constexpr, HAS_DST: tl.constexpr, STORE_DS0: tl.constexpr, LOWP: tl.constexpr,
):  # fmt: skip
    """Program (feature tile x value tile, batch * head, direction). Direction 0: h_c (the state before chunk c)
    for c = 0 .. NC-1, from S_0, adding k_c^T v_c. Direction 1: dh_c (the gradient into the state after chunk c)
    for c = NC-1 .. 0, from dS_T, adding q_c^T do_c; then dS_0 (fp32) to ds0. h / dh: (B * H, NC, F, Dv) in their
    pointers' dtype; s0, dst, ds0: (B * H, F, Dv) fp32."""
    i_kv = tl.program_id(0)
    i_bh = tl.program_id(1).to(tl.int64)
    rev = tl.program_id(2)
    n_v = tl.cdiv(DV, BV)
    i_b = i_bh // H
    i_h = i_bh % H
    rt = tl.arange(0, BT)
    rk = (i_kv // n_v) * BK + tl.arange(0, BK)
    rv = (i_kv % n_v) * BV + tl.arange(0, BV)
    mk = rk < F
    mv = rv < DV
    ms = mk[:, None] & mv[None, :]
    s_off = i_bh * F * DV + rk[:, None] * DV + rv[None, :]  # this tile of the (B * H, F, Dv) states
    h_off = i_bh * NC * F * DV + rk[:, None] * DV + rv[None, :]  # ... of chunk 0's (B * H, NC, F, Dv) entry
    x_base = (i_b * T * H + i_h) * F  # row bases of q / k and v / do in (B, T, H, .)
    y_base = (i_b * T * H + i_h) * DV
    acc = tl.zeros([BK, BV], dtype=tl.float32)
    if rev == 0:
        if HAS_S0:
            acc += tl.load(s0_ptr + s_off, mask=ms, other=0.0)
        for c in range(0, NC - 1):  # the state after the last chunk is the forward's business, not needed here
            tl.store(h_ptr + h_off + c * F * DV, acc.to(h_ptr.dtype.element_ty), mask=ms)
            t = c * BT + rt
            mt = t < T
            k = tl.load(k_ptr + x_base + t[:, None] * (H * F) + rk[None, :], mask=mt[:, None] & mk[None, :], other=0.0)
            v = tl.load(v_ptr + y_base + t[:, None] * (H * DV) + rv[None, :], mask=mt[:, None] & mv[None, :], other=0.0)
            if not LOWP:
                k, v = k.to(tl.float32), v.to(tl.float32)
            acc += _dot(tl.trans(k), v, LOWP)
        tl.store(h_ptr + h_off + (NC - 1) * F * DV, acc.to(h_ptr.dtype.element_ty), mask=ms)
    else:
        if HAS_DST:
            acc += tl.load(dst_ptr + s_off, mask=ms, other=0.0)
        for i in range(0, NC):
            c = NC - 1 - i
            tl.store(dh_ptr + h_off + c * F * DV, acc.to(dh_ptr.dtype.element_ty), mask=ms)
            t = c * BT + rt
            mt = t < T
            q = tl.load(q_ptr + x_base + t[:, None] * (H * F) + rk[None, :], mask=mt[:, None] & mk[None, :], other=0.0)
            do = tl.load(
                do_ptr + y_base + t[:, None] * (H * DV) + rv[None, :], mask=mt[:, None] & mv[None, :], other=0.0
            )
            if not LOWP:
                q, do = q.to(tl.float32), do.to(tl.float32)
            acc += _dot(tl.trans(q), do, LOWP)
        if STORE_DS0:
            tl.store(ds0_ptr + s_off, acc, mask=ms)


@triton.jit
def _grads_kernel(
    q_ptr, k_ptr, v_ptr, do_ptr, h_ptr, dh_ptr, dzt_ptr, dq_ptr, dk_ptr, dv_ptr,
    T, H, F, DV, NC,
    BT: tl.constexpr, BF: tl.constexpr, BV: tl.constexpr, HAS_DZT: tl.constexpr, LOWP: tl.constexpr,
):  # fmt: skip
    """Program (chunk, batch * head): dq, dk, dv of the chunk's positions (module docstring) from its q, k, v, do
    and its h_c, dh_c, written in the inputs' dtype; the value dim in steps of BV columns."""
    i_c = tl.program_id(0)
    i_bh = tl.program_id(1).to(tl.int64)
    i_b = i_bh // H
    i_h = i_bh % H
    DT = q_ptr.dtype.element_ty
    rt = tl.arange(0, BT)
    t = i_c * BT + rt
    mt = t < T
    rf = tl.arange(0, BF)
    mf = rf < F
    qk_off = (i_b * T * H + i_h) * F + t[:, None] * (H * F) + rf[None, :]  # (BT, BF) in (B, T, H, F)
    m_qk = mt[:, None] & mf[None, :]
    v_base = (i_b * T * H + i_h) * DV + t[:, None] * (H * DV)
    h_base = (i_bh * NC + i_c) * F * DV + rf[:, None] * DV  # chunk c's (F, Dv) in (B * H, NC, F, Dv)
    q = tl.load(q_ptr + qk_off, mask=m_qk, other=0.0)
    k = tl.load(k_ptr + qk_off, mask=m_qk, other=0.0)
    if not LOWP:
        q, k = q.to(tl.float32), k.to(tl.float32)
    causal = rt[:, None] >= rt[None, :]
    At = tl.trans(tl.where(causal, _dot(q, tl.trans(k), LOWP), 0.0)).to(q.dtype)  # A^T (BT, BT)
    G = tl.zeros([BT, BT], dtype=tl.float32)
    dq = tl.zeros([BT, BF], dtype=tl.float32)
    dk = tl.zeros([BT, BF], dtype=tl.float32)
    for v0 in range(0, DV, BV):
        rv = v0 + tl.arange(0, BV)
        mv = rv < DV
        m_v = mt[:, None] & mv[None, :]
        m_h = mf[:, None] & mv[None, :]
        v = tl.load(v_ptr + v_base + rv[None, :], mask=m_v, other=0.0)
        do = tl.load(do_ptr + v_base + rv[None, :], mask=m_v, other=0.0)
        h = tl.load(h_ptr + h_base + rv[None, :], mask=m_h, other=0.0)  # (BF, BV)
        dh = tl.load(dh_ptr + h_base + rv[None, :], mask=m_h, other=0.0)
        if not LOWP:
            v, do, h, dh = v.to(tl.float32), do.to(tl.float32), h.to(tl.float32), dh.to(tl.float32)
        G += _dot(do, tl.trans(v), LOWP)
        dq += _dot(do, tl.trans(h), LOWP)
        dk += _dot(v, tl.trans(dh), LOWP)
        dv = _dot(At, do, LOWP) + _dot(k, dh, LOWP)  # (BT, BV)
        tl.store(dv_ptr + v_base + rv[None, :], dv.to(DT), mask=m_v)
    G = tl.where(causal, G, 0.0).to(q.dtype)
    dq += _dot(G, k, LOWP)
    dk += _dot(tl.trans(G), q, LOWP)
    if HAS_DZT:
        dk += tl.load(dzt_ptr + i_bh * F + rf, mask=mf, other=0.0)[None, :]
    tl.store(dq_ptr + qk_off, dq.to(DT), mask=m_qk)
    tl.store(dk_ptr + qk_off, dk.to(DT), mask=m_qk)


def chunk_parallel_backward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    do: torch.Tensor,
    S0: torch.Tensor | None,
    dST: torch.Tensor | None,
    dzT: torch.Tensor | None,
    BT: int,
    lowp: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """dq, dk, dv (in q's dtype) and dS_0 (fp32, or None without ``S0``) of o = q S (no normalisation).

    q, k (B, T, H, F), v, do (B, T, H, Dv), contiguous, one dtype; S0, dST (B, H, F, Dv) and dzT (B, H, F) fp32
    contiguous or None; ``BT`` the chunk (a power of two >= 16); ``lowp``: bf16 / fp16 MMAs (else fp32 tiles,
    as triton.py's ``_lowp`` decides). dz_0 is dz_T itself: the caller's."""
    B, T, H, F = q.shape
    Dv = v.shape[-1]
    NC = triton.cdiv(T, BT)
    state_dtype = q.dtype if lowp else torch.float32
    h = q.new_empty(B, H, NC, F, Dv, dtype=state_dtype)
    dh = q.new_empty(B, H, NC, F, Dv, dtype=state_dtype)
    dS0 = q.new_empty(B, H, F, Dv, dtype=torch.float32) if S0 is not None else None
    BK = max(16, min(STATE_BLOCK_F, triton.next_power_of_2(F)))
    BVs = max(16, min(STATE_BLOCK_V, triton.next_power_of_2(Dv)))
    tiles = triton.cdiv(F, BK) * triton.cdiv(Dv, BVs)
    _states_kernel[(tiles, B * H, 2)](
        q, k, v, do, S0 if S0 is not None else h, dST if dST is not None else h, h, dh,
        dS0 if dS0 is not None else h, T, H, F, Dv, NC,
        BT=BT, BK=BK, BV=BVs, HAS_S0=S0 is not None, HAS_DST=dST is not None, STORE_DS0=dS0 is not None,
        LOWP=lowp, num_warps=STATE_WARPS,
    )  # fmt: skip
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    BF = max(16, triton.next_power_of_2(F))
    block_v, warps, stages = GRAD_TILES[lowp]
    BV = max(16, min(block_v, triton.next_power_of_2(Dv)))
    _grads_kernel[(NC, B * H)](
        q, k, v, do, h, dh, dzT if dzT is not None else h, dq, dk, dv, T, H, F, Dv, NC,
        BT=BT, BF=BF, BV=BV, HAS_DZT=dzT is not None, LOWP=lowp, num_warps=warps, num_stages=stages,
    )  # fmt: skip
    return dq, dk, dv, dS0
