"""Causal linear attention in Triton: the chunked form, forward and backward (fla's ``[B, T, H, D]`` layout).

Same signature and semantics as :func:`archzoo.kernels.linear_attention.naive.chunk_linear_attention`:

    S_t = S_0 + sum_{s<=t} k_s v_s^T,  z_t = z_0 + sum_{s<=t} k_s,  o_t = q_t S_t / (q_t z_t + eps)

**Forward.** One program per (value block of ``BV`` columns, batch * head) walks the sequence in chunks of
``BT`` positions, carrying the state slice S (F, BV) and z (F) in fp32 registers. Per chunk:
A = tril(q k^T) (BT, BT); o = q S + A v; den = q z + rowsum(A) + eps; then S += k^T v, z += colsum(k).
The whole feature dim F sits in one block (the normaliser needs all of it).

**Backward.** Nothing but the inputs, o and den (B, H, T) fp32 is saved; the states are recomputed.
With dnum = do / den and dden = -(do . o) / den (zero without normalisation), G = tril(dnum v^T + dden):

    dq = dnum S_prev^T + dden z_prev^T + G k               (forward loop, S recomputed from S_0)
    dk = v dS^T + dz + G^T q;  dv = k dS + A^T dnum        (reverse loop over chunks)
    dS += q^T dnum;  dz += q^T dden                        (dS, dz start at the final state's gradient)

and dS_0, dz_0 are dS, dz after the first chunk. dq and dk are sums over value blocks: each block writes its
partial to an fp32 buffer (NV, B, T, H, F) that the host sums; the dden / dz terms are added by block 0 only.

**Segments (backward, and the forward likewise).** One program per (value block, batch * head) walked all T / BT
chunks twice in a row, so at B * H = 32, Dv = 64 (two value blocks) only 64 programs run, each a long chain of
small matmuls: at T = 16k that backward was 0.80x fla's (H100 and H200, normalised), which splits the sequence. So
does ours now: the sequence is cut into NS segments of whole chunks, and the two loops above run per (value block,
batch * head, segment). What a segment needs from the others is linear in the inputs: S, z at its start are S_0,
z_0 plus the sums of k^T v, k over the segments before it, and dS, dz at its end are the final state's gradient
plus the sums of q^T dnum, q^T dden over the segments after it. A first kernel (``_seg_sums_kernel``, same grid)
computes each segment's four sums, the host turns them into prefix and suffix sums (``torch.cumsum``, a few MB),
and the main kernel starts each segment from them; dS_0, dz_0 are the final gradient plus all the segments' sums.
The cost is one more pass over q, k, v, do (three instead of two), against chains NS times shorter. ``_segments``
picks NS from the grid and the SM count (one segment where the grid already fills the GPU). The forward does the
same with the k^T v, k sums alone (``GRAD`` off: q and do unread), and sums the final state on the host.

**Chunk-parallel backward (normalize=False; ``chunk_parallel.py``).** Even cut into segments, the backward above
is a chain: each program walks its segment's chunks twice, with 250 registers a thread (two programs a SM), so at
B 4, T 16k, H 8, F = Dv = 64 (bf16) it took 1.35 ms against fla's 0.84 ms (H100) while every other cell was
ahead. Without normalisation dq, dk, dv of a chunk depend on the rest of the sequence only through two
(F, Dv) matrices: the state before the chunk, h_c, and the gradient reaching the state after it, dh_c. So a
first kernel walks the chunks with one k^T v (and, beside it, one q^T do in reverse) per step and stores every
h_c and dh_c, and a second runs one program per (chunk, batch * head) with no chain at all. The price is
materialising them: NC x F x Dv values per batch * head each, in fp32 256 chunks x 64 x 64 x 4 B x 32 = 128 MiB
at that shape (stored in the MMAs' dtype: 64 MiB each in bf16; ``chunk_parallel.py`` says why that loses
nothing). With normalisation the chunk's gradient also needs the per-position denominators' terms through z,
and the segmented backward already meets its target there, so it stays. ``BACKWARD`` picks: "segmented" (the default
until an H100 timed both), "chunk_parallel" (normalize=False only; the normalised form keeps the segmented one, logged
once), or "auto" (chunk_parallel for normalize=False from AUTO_MIN_CHUNKS chunks on: the default, from one chunk). The
choice is made in the forward and kept for its backward; ``last_backward()`` says what the latest forward chose."""

from __future__ import annotations

import functools
import logging

import torch
import triton
import triton.language as tl

from .._dispatch import triton_interpreting
from .chunk_parallel import _dot as _mm  # one a @ b for both backwards
from .chunk_parallel import chunk_parallel_backward
from .naive import State, _check

log = logging.getLogger("archzoo.kernels")

MAX_BLOCK_V = 32  # value columns per program: no spills at F = Dv = 64 in bf16 on sm_90 (64 spills in the backward)
NUM_WARPS = 4
# Segments (module docstring, ``_segments``): the count whose grid, in waves of PROGRAMS_PER_SM programs per SM
# (the backward's 250 registers a thread allow two), ends first, each at least MIN_SEGMENT_CHUNKS chunks long.
# ``SEGMENTS`` forces the count (tests, tuners; capped at one per chunk). Under the interpreter a pretend GPU of
# INTERPRET_SM_COUNT SMs and one-chunk segments, so tests cross segments.
PROGRAMS_PER_SM = 2
MIN_SEGMENT_CHUNKS = 8
SEGMENT_SLACK = 1.05
INTERPRET_SM_COUNT = 4
SEGMENTS: int | None = None
# The backward (module docstring): "segmented", "chunk_parallel" (normalize=False only) or "auto" (chunk_parallel
# for normalize=False from AUTO_MIN_CHUNKS chunks on). "auto" from one chunk: on an H100 the chunk-parallel
# backward was 1.7-1.9x the segmented one at T 1k / 4k / 16k and its GPU gradient tests passed
# (docs/kernels.md, docs/results/kernels/la_h100_chunkpar.*, docs/results/gpu-tests/gpu_tests_2026-12-06_h100.log).
BACKWARDS = ("segmented", "chunk_parallel", "auto")
BACKWARD = "auto"
AUTO_MIN_CHUNKS = 1
_last_backward: str | None = None
_NOTED: set[str] = set()


@triton.jit
def _program_layout(i_v, i_bh, T, H, F, DV, BT: tl.constexpr, BF: tl.constexpr, BV: tl.constexpr):
    """What every kernel here derives from its (value block, batch * head) program: the chunk, feature and value
    ranges, the feature and value masks, and the row bases of q / k and v in (B, T, H, .) layouts: (rt, rf, rv,
    mf, mv, qk_base, v_base), (b, t, h, f) living at ((b T + t) H + h) F + f."""
    i_b = i_bh // H
    i_h = i_bh % H
    rf = tl.arange(0, BF)
    rv = i_v * BV + tl.arange(0, BV)
    return tl.arange(0, BT), rf, rv, rf < F, rv < DV, (i_b * T * H + i_h) * F, (i_b * T * H + i_h) * DV


@triton.jit
def _chunk_at(t, qk_base, v_base, rf, rv, mf, mv, T, H, F, DV):
    """The (BT, F) q/k and (BT, Dv) v offsets of the chunk of positions t in (B, T, H, .) layouts, with their masks
    and t's own: (mt, qk_off, v_off, m_qk, m_v). Every kernel here walks chunks this way."""
    mt = t < T
    qk_off = qk_base + t[:, None] * (H * F) + rf[None, :]
    v_off = v_base + t[:, None] * (H * DV) + rv[None, :]
    return mt, qk_off, v_off, mt[:, None] & mf[None, :], mt[:, None] & mv[None, :]


@triton.jit
def _fwd_kernel(
    q_ptr, k_ptr, v_ptr, o_ptr, s0_ptr, z0_ptr, st_ptr, zt_ptr, den_ptr,
    T, H, F, DV, eps, SEG,
    BT: tl.constexpr, BF: tl.constexpr, BV: tl.constexpr,
    HAS_S0: tl.constexpr, STORE_FINAL: tl.constexpr, NORMALIZE: tl.constexpr, STORE_DEN: tl.constexpr,
    LOWP: tl.constexpr,
):  # fmt: skip
    """Program (value block, batch * head, segment): positions [s SEG, (s + 1) SEG) from the segment's start
    state, read at segment s of s0 / z0 ((NS, B, H, F, [Dv]); NS = 1: the initial state itself). STORE_FINAL
    with one segment only (with several the host sums the final state)."""
    i_v = tl.program_id(0)
    i_bh = tl.program_id(1).to(tl.int64)
    i_s = tl.program_id(2)
    t_start = i_s * SEG
    DT = q_ptr.dtype.element_ty
    rt, rf, rv, mf, mv, qk_base, v_base = _program_layout(i_v, i_bh, T, H, F, DV, BT, BF, BV)
    s_off = i_bh * F * DV + rf[:, None] * DV + rv[None, :]
    ms = mf[:, None] & mv[None, :]
    S = tl.zeros([BF, BV], dtype=tl.float32)
    z = tl.zeros([BF], dtype=tl.float32)
    if HAS_S0:
        seg = i_s.to(tl.int64) * tl.num_programs(1)
        S += tl.load(s0_ptr + seg * F * DV + s_off, mask=ms, other=0.0)
        z += tl.load(z0_ptr + seg * F + i_bh * F + rf, mask=mf, other=0.0)
    causal = rt[:, None] >= rt[None, :]
    for t0 in range(t_start, tl.minimum(t_start + SEG, T), BT):
        t = t0 + rt
        mt, qk_off, v_off, m_qk, m_v = _chunk_at(t, qk_base, v_base, rf, rv, mf, mv, T, H, F, DV)
        q = tl.load(q_ptr + qk_off, mask=m_qk, other=0.0)
        k = tl.load(k_ptr + qk_off, mask=m_qk, other=0.0)
        v = tl.load(v_ptr + v_off, mask=m_v, other=0.0)
        if not LOWP:
            q, k, v = q.to(tl.float32), k.to(tl.float32), v.to(tl.float32)
        A = tl.where(causal, _mm(q, tl.trans(k), LOWP), 0.0)  # (BT, BT)
        o = _mm(q, S.to(q.dtype), LOWP) + _mm(A.to(v.dtype), v, LOWP)  # (BT, BV)
        if NORMALIZE:
            den = tl.sum(q.to(tl.float32) * z[None, :], 1) + tl.sum(A, 1) + eps  # (BT,)
            o = o / den[:, None]
            if STORE_DEN:
                tl.store(den_ptr + i_bh * T + t, den, mask=mt & (rt * 0 + i_v == 0))
        tl.store(o_ptr + v_off, o.to(DT), mask=m_v)
        S += _mm(tl.trans(k), v, LOWP)
        z += tl.sum(k.to(tl.float32), 0)
    if STORE_FINAL:
        tl.store(st_ptr + s_off, S, mask=ms)
        tl.store(zt_ptr + i_bh * F + rf, z, mask=mf & (rf * 0 + i_v == 0))


@triton.jit
def _dnum_dden(do_ptr, den_ptr, delta_ptr, v_off, m_v, row, t, mt, scale, BT: tl.constexpr, NORMALIZE: tl.constexpr):
    """A chunk's output gradient split as the backward uses it: dnum = do / den (BT, BV) and dden = -(do . o) / den
    * ``scale`` (BT,) (``delta`` holds do . o; ``scale`` 0 on the value blocks that do not count the dden terms);
    without normalisation dnum = do and dden = 0. ``row``: the (batch, head)'s offset into den / delta (B, H, T)."""
    dnum = tl.load(do_ptr + v_off, mask=m_v, other=0.0).to(tl.float32)
    if NORMALIZE:
        den = tl.load(den_ptr + row + t, mask=mt, other=1.0)
        dden = -tl.load(delta_ptr + row + t, mask=mt, other=0.0) / den * scale
        dnum = dnum / den[:, None]
    else:
        dden = tl.zeros([BT], dtype=tl.float32)
    return dnum, dden


@triton.jit
def _seg_sums_kernel(
    q_ptr, k_ptr, v_ptr, do_ptr, den_ptr, delta_ptr, sum_s_ptr, sum_z_ptr, sum_ds_ptr, sum_dz_ptr,
    T, H, F, DV, SEG,
    BT: tl.constexpr, BF: tl.constexpr, BV: tl.constexpr, NORMALIZE: tl.constexpr, LOWP: tl.constexpr,
    GRAD: tl.constexpr,
):  # fmt: skip
    """Segment ``program_id(2)``'s sums over its chunks: k^T v (F, BV) and colsum k (F), and with GRAD q^T dnum
    (F, BV) and q^T dden (F), into buffers (NS, B, H, F, [Dv]) fp32; the z sums by value block 0 only (the same
    for all). Without GRAD (the forward) q and do are not read."""
    i_v = tl.program_id(0)
    i_bh = tl.program_id(1).to(tl.int64)
    i_s = tl.program_id(2).to(tl.int64)
    n_bh = tl.num_programs(1)
    rt, rf, rv, mf, mv, qk_base, v_base = _program_layout(i_v, i_bh, T, H, F, DV, BT, BF, BV)
    sS = tl.zeros([BF, BV], dtype=tl.float32)
    sz = tl.zeros([BF], dtype=tl.float32)
    sdS = tl.zeros([BF, BV], dtype=tl.float32)
    sdz = tl.zeros([BF], dtype=tl.float32)
    for t0 in range(i_s * SEG, tl.minimum(i_s * SEG + SEG, T), BT):
        t = t0 + rt
        mt, qk_off, v_off, m_qk, m_v = _chunk_at(t, qk_base, v_base, rf, rv, mf, mv, T, H, F, DV)
        k = tl.load(k_ptr + qk_off, mask=m_qk, other=0.0)
        v = tl.load(v_ptr + v_off, mask=m_v, other=0.0)
        if not LOWP:
            k, v = k.to(tl.float32), v.to(tl.float32)
        sS += _mm(tl.trans(k), v, LOWP)
        sz += tl.sum(k.to(tl.float32), 0)
        if GRAD:
            q = tl.load(q_ptr + qk_off, mask=m_qk, other=0.0)
            dnum, dden = _dnum_dden(do_ptr, den_ptr, delta_ptr, v_off, m_v, i_bh * T, t, mt, 1.0, BT, NORMALIZE)
            if NORMALIZE:  # dden is zero without normalisation
                sdz += tl.sum(q.to(tl.float32) * dden[:, None], 0)
            if not LOWP:
                q = q.to(tl.float32)
            sdS += _mm(tl.trans(q), dnum.to(v.dtype), LOWP)
    s_off = (i_s * n_bh + i_bh) * F * DV + rf[:, None] * DV + rv[None, :]
    ms = mf[:, None] & mv[None, :]
    tl.store(sum_s_ptr + s_off, sS, mask=ms)
    z_off = (i_s * n_bh + i_bh) * F + rf
    first = mf & (rf * 0 + i_v == 0)
    tl.store(sum_z_ptr + z_off, sz, mask=first)
    if GRAD:
        tl.store(sum_ds_ptr + s_off, sdS, mask=ms)
        tl.store(sum_dz_ptr + z_off, sdz, mask=first)


@triton.jit
def _bwd_kernel(
    q_ptr, k_ptr, v_ptr, do_ptr, den_ptr, delta_ptr, s0_ptr, z0_ptr, dst_ptr, dzt_ptr,
    dq_ptr, dk_ptr, dv_ptr, ds0_ptr, dz0_ptr,
    T, H, F, DV, N_QK, SEG,
    BT: tl.constexpr, BF: tl.constexpr, BV: tl.constexpr,
    HAS_S0: tl.constexpr, HAS_DFINAL: tl.constexpr, NORMALIZE: tl.constexpr, LOWP: tl.constexpr,
):  # fmt: skip
    """Program (value block, batch * head, segment): the segment's chunks [s SEG, (s + 1) SEG), its start state
    and end gradient read at segment s of s0 / z0 and dst / dzt ((NS, B, H, F, [Dv]); NS = 1: the initial state
    and the final state's gradient themselves); each writes dS, dz at its start to ds0 / dz0 (NS, B, H, F, [Dv]),
    segment 0's being dS_0, dz_0."""
    i_v = tl.program_id(0)
    i_bh = tl.program_id(1).to(tl.int64)
    i_s = tl.program_id(2)  # int32, as the positions: registers are tight here (248 of 255 before segments)
    t_start = i_s * SEG
    t_end = tl.minimum(t_start + SEG, T)
    rt, rf, rv, mf, mv, qk_base, v_base = _program_layout(i_v, i_bh, T, H, F, DV, BT, BF, BV)
    firstf = (i_v == 0).to(tl.float32)  # the dden / dz terms are counted once, by value block 0
    part = i_v.to(tl.int64) * N_QK  # this block's slice of the (NV, B, T, H, F) partial dq / dk buffers
    s_off = i_bh * F * DV + rf[:, None] * DV + rv[None, :]
    ms = mf[:, None] & mv[None, :]
    causal = rt[:, None] >= rt[None, :]

    # ---- forward over chunks: dq, with S and z recomputed from the segment's start state
    S = tl.zeros([BF, BV], dtype=tl.float32)
    z = tl.zeros([BF], dtype=tl.float32)
    if HAS_S0:  # this segment's slice of the per-segment start states
        seg = i_s.to(tl.int64) * tl.num_programs(1)
        S += tl.load(s0_ptr + seg * F * DV + s_off, mask=ms, other=0.0)
        z += tl.load(z0_ptr + seg * F + i_bh * F + rf, mask=mf, other=0.0)
    for t0 in range(t_start, t_end, BT):
        t = t0 + rt
        mt, qk_off, v_off, m_qk, m_v = _chunk_at(t, qk_base, v_base, rf, rv, mf, mv, T, H, F, DV)
        k = tl.load(k_ptr + qk_off, mask=m_qk, other=0.0)
        v = tl.load(v_ptr + v_off, mask=m_v, other=0.0)
        dnum, dden = _dnum_dden(do_ptr, den_ptr, delta_ptr, v_off, m_v, i_bh * T, t, mt, firstf, BT, NORMALIZE)
        if not LOWP:
            k, v = k.to(tl.float32), v.to(tl.float32)
        G = tl.where(causal, _mm(dnum.to(v.dtype), tl.trans(v), LOWP) + dden[:, None], 0.0)  # (BT, BT)
        dq = _mm(dnum.to(v.dtype), tl.trans(S).to(v.dtype), LOWP) + dden[:, None] * z[None, :]
        dq += _mm(G.to(k.dtype), k, LOWP)
        tl.store(dq_ptr + part + qk_off, dq, mask=m_qk)
        S += _mm(tl.trans(k), v, LOWP)
        z += tl.sum(k.to(tl.float32), 0)

    # ---- reverse over chunks: dk, dv, carrying the state's gradient (dS, dz)
    dS = tl.zeros([BF, BV], dtype=tl.float32)
    dz = tl.zeros([BF], dtype=tl.float32)
    if HAS_DFINAL:
        seg = i_s.to(tl.int64) * tl.num_programs(1)
        dS += tl.load(dst_ptr + seg * F * DV + s_off, mask=ms, other=0.0)
        dz += tl.load(dzt_ptr + seg * F + i_bh * F + rf, mask=mf, other=0.0) * firstf
    n_chunks = tl.cdiv(t_end - t_start, BT)
    for i in range(0, n_chunks):
        t = t_start + (n_chunks - 1 - i) * BT + rt
        mt, qk_off, v_off, m_qk, m_v = _chunk_at(t, qk_base, v_base, rf, rv, mf, mv, T, H, F, DV)
        q = tl.load(q_ptr + qk_off, mask=m_qk, other=0.0)
        k = tl.load(k_ptr + qk_off, mask=m_qk, other=0.0)
        v = tl.load(v_ptr + v_off, mask=m_v, other=0.0)
        dnum, dden = _dnum_dden(do_ptr, den_ptr, delta_ptr, v_off, m_v, i_bh * T, t, mt, firstf, BT, NORMALIZE)
        if not LOWP:
            q, k, v = q.to(tl.float32), k.to(tl.float32), v.to(tl.float32)
        dnum_l = dnum.to(v.dtype)
        A = tl.where(causal, _mm(q, tl.trans(k), LOWP), 0.0)  # (BT, BT)
        G = tl.where(causal, _mm(dnum_l, tl.trans(v), LOWP) + dden[:, None], 0.0)
        dv = _mm(k, dS.to(k.dtype), LOWP) + _mm(tl.trans(A).to(v.dtype), dnum_l, LOWP)
        dk = _mm(v, tl.trans(dS).to(v.dtype), LOWP) + dz[None, :] + _mm(tl.trans(G).to(q.dtype), q, LOWP)
        tl.store(dv_ptr + v_off, dv, mask=m_v)
        tl.store(dk_ptr + part + qk_off, dk, mask=m_qk)
        dS += _mm(tl.trans(q), dnum_l, LOWP)
        dz += tl.sum(q.to(tl.float32) * dden[:, None], 0)
    # every segment writes its dS, dz at its start; the host keeps segment 0's (dS_0, dz_0)
    seg = tl.program_id(2).to(tl.int64) * tl.num_programs(1)
    tl.store(ds0_ptr + seg * F * DV + s_off, dS, mask=ms)
    tl.store(dz0_ptr + seg * F + i_bh * F + rf, dz, mask=mf & (rf * 0 + i_v == 0))


def _blocks(F: int, Dv: int, chunk_size: int) -> tuple[int, int, int]:
    """(BT, BF, BV): chunk length and feature / value tiles, powers of two >= 16 (tl.dot's minimum)."""
    BT = max(16, min(128, triton.next_power_of_2(chunk_size)))
    BF = max(16, triton.next_power_of_2(F))
    BV = max(16, min(MAX_BLOCK_V, triton.next_power_of_2(Dv)))
    return BT, BF, BV


def _segments(n_programs: int, n_chunks: int, device: torch.device) -> int:
    """Segments for a grid of ``n_programs`` (value blocks x batch x heads) over ``n_chunks`` chunks: the count
    whose grid finishes first, counted in waves of PROGRAMS_PER_SM programs a SM, each wave as long as a segment
    (ceil(NS programs / slots) x ceil(chunks / NS)), segments of at least MIN_SEGMENT_CHUNKS chunks (one chunk
    under the interpreter), the fewest segments within SEGMENT_SLACK of the best (each segment adds a pass over its
    chunks for the sums and the host's prefix sums); ``SEGMENTS`` where set; 1 <= NS <= n_chunks.

    Why waves: every program walks its segment's chunks one after another, so a grid's time is its number of
    waves times a segment's length. At T 16k, B 4, H 8 (64 programs, 256 chunks, 264 slots on an H100) filling
    the SMs by rounding up gave 5 segments: 320 programs, of which 56 ran in a second wave as long as the first,
    104 chunk-times where 4 segments (256 programs, one wave of 64 chunks) take 64."""
    if SEGMENTS is not None:
        return max(1, min(SEGMENTS, n_chunks))
    if device.type == "cuda":
        from .._sizes import sm_count

        sms = sm_count(device.index if device.index is not None else torch.cuda.current_device())
        min_chunks = MIN_SEGMENT_CHUNKS
    else:
        sms, min_chunks = INTERPRET_SM_COUNT, 1
    return _wave_segments(sms * PROGRAMS_PER_SM, max(1, n_programs), n_chunks, min_chunks, SEGMENT_SLACK)


@functools.lru_cache(maxsize=256)
def _wave_segments(slots: int, programs: int, n_chunks: int, min_chunks: int, slack: float) -> int:
    """``_segments``' choice (a loop over the counts: cached, as every call of the op asks it)."""
    costs = {ns: -(-ns * programs // slots) * -(-n_chunks // ns) for ns in range(1, max(1, n_chunks // min_chunks) + 1)}
    best = min(costs.values())
    return min(ns for ns, c in costs.items() if c <= slack * best)  # the fewest within the slack


def _choose_backward(normalize: bool, n_chunks: int) -> str:
    """The backward a forward of ``n_chunks`` chunks will run, by ``BACKWARD`` (module docstring)."""
    if BACKWARD not in BACKWARDS:
        raise ValueError(f"unknown linear attention BACKWARD {BACKWARD!r}; expected one of {', '.join(BACKWARDS)}")
    if BACKWARD == "segmented" or normalize:
        if BACKWARD == "chunk_parallel" and "normalize" not in _NOTED:
            _NOTED.add("normalize")
            log.warning("linear attention: the chunk_parallel backward takes normalize=False only; "
                        "normalize=True runs the segmented backward")  # fmt: skip
        return "segmented"
    return "chunk_parallel" if BACKWARD == "chunk_parallel" or n_chunks >= AUTO_MIN_CHUNKS else "segmented"


def last_backward() -> str | None:
    """The backward ("segmented" or "chunk_parallel") that the latest forward chose for its backward, or None."""
    return _last_backward


def _lowp(dtype: torch.dtype) -> bool:
    # Triton's interpreter computes tl.dot of bf16 operands wrongly (see docs/kernels.md, decode attention):
    # there the tiles are widened to fp32 before every product; compiled, bf16 / fp16 tiles go to the MMAs.
    return dtype in (torch.bfloat16, torch.float16) and not triton_interpreting()


class _LinearAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, S0, z0, output_final_state, normalize, eps, chunk_size):
        B, T, H, F = q.shape
        Dv = v.shape[-1]
        BT, BF, BV = _blocks(F, Dv, chunk_size)
        NV = triton.cdiv(Dv, BV)
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        has_s0 = S0 is not None
        s0 = S0.detach().float().contiguous() if has_s0 else None
        z0c = z0.detach().float().contiguous() if has_s0 else None
        o = torch.empty_like(v)
        ST = q.new_empty(B, H, F, Dv, dtype=torch.float32) if output_final_state else None
        zT = q.new_empty(B, H, F, dtype=torch.float32) if output_final_state else None
        store_den = normalize  # den (B, H, T) fp32 is what the backward needs besides the inputs and o
        den = q.new_empty(B, H, T, dtype=torch.float32) if store_den else None
        # Segments, as in the backward (module docstring): each starts from S_0 plus the sums of k^T v, k of the
        # segments before it; the final state is S_0 plus all of them.
        n_chunks = triton.cdiv(T, BT)
        NS = _segments(NV * B * H, n_chunks, q.device)
        SEG = triton.cdiv(n_chunks, NS) * BT
        NS = triton.cdiv(T, SEG)
        s_start, z_start = s0, z0c
        if NS > 1:
            s_sum, z_sum = (
                q.new_empty(NS, B, H, F, Dv, dtype=torch.float32),
                q.new_empty(NS, B, H, F, dtype=torch.float32),
            )
            _seg_sums_kernel[(NV, B * H, NS)](
                q, k, v, v, o, o, s_sum, z_sum, s_sum, z_sum, T, H, F, Dv, SEG,
                BT=BT, BF=BF, BV=BV, NORMALIZE=False, LOWP=_lowp(q.dtype), GRAD=False, num_warps=NUM_WARPS,
            )  # fmt: skip
            s_start, z_start = torch.cumsum(s_sum, 0) - s_sum, torch.cumsum(z_sum, 0) - z_sum
            if has_s0:
                s_start, z_start = s_start + s0, z_start + z0c
            if output_final_state:
                ST.copy_(s_sum.sum(0) + (s0 if has_s0 else 0))
                zT.copy_(z_sum.sum(0) + (z0c if has_s0 else 0))
        seg_start = NS > 1 or has_s0
        _fwd_kernel[(NV, B * H, NS)](
            q, k, v, o, s_start if seg_start else o, z_start if seg_start else o, ST if output_final_state else o,
            zT if output_final_state else o, den if store_den else o,
            T, H, F, Dv, float(eps), SEG,
            BT=BT, BF=BF, BV=BV, HAS_S0=seg_start, STORE_FINAL=output_final_state and NS == 1, NORMALIZE=normalize,
            STORE_DEN=store_den, LOWP=_lowp(q.dtype), num_warps=NUM_WARPS,
        )  # fmt: skip
        global _last_backward
        _last_backward = backward = _choose_backward(normalize, n_chunks)
        ctx.save_for_backward(q, k, v, o, den, s0, z0c)
        ctx.cfg = (normalize, BT, BF, BV, NV, has_s0, None if S0 is None else (S0.dtype, z0.dtype), backward)
        return o, ST, zT

    @staticmethod
    def backward(ctx, do, dST, dzT):
        q, k, v, o, den, s0, z0 = ctx.saved_tensors
        normalize, BT, BF, BV, NV, has_s0, s0_dtypes, backward = ctx.cfg
        B, T, H, F = q.shape
        Dv = v.shape[-1]
        do = do.contiguous()
        has_dfinal = dST is not None or dzT is not None
        if has_dfinal:
            dST = torch.zeros(B, H, F, Dv, device=q.device) if dST is None else dST.float().contiguous()
            dzT = torch.zeros(B, H, F, device=q.device) if dzT is None else dzT.float().contiguous()
        if backward == "chunk_parallel":  # normalize=False (_choose_backward): z reaches nothing but z_T
            dq, dk, dv, ds0 = chunk_parallel_backward(q, k, v, do.to(v.dtype), s0, dST, dzT, BT, _lowp(q.dtype))
            dS0 = dz0_out = None
            if has_s0:
                dS0 = ds0.to(s0_dtypes[0])
                dz0_out = (dzT if has_dfinal else torch.zeros_like(z0)).to(s0_dtypes[1])
            return dq, dk, dv, dS0, dz0_out, None, None, None, None
        delta = (do.float() * o.float()).sum(-1).transpose(1, 2).contiguous() if normalize else None  # (B, H, T)
        dq = q.new_empty(NV, B, T, H, F, dtype=torch.float32)
        dk = q.new_empty(NV, B, T, H, F, dtype=torch.float32)
        dv = q.new_empty(B, T, H, Dv, dtype=torch.float32)
        n_chunks = triton.cdiv(T, BT)
        NS = _segments(NV * B * H, n_chunks, q.device)
        SEG = triton.cdiv(n_chunks, NS) * BT  # positions per segment, whole chunks
        NS = triton.cdiv(T, SEG)
        ds0 = q.new_empty(NS, B, H, F, Dv, dtype=torch.float32)  # each segment's dS, dz at its start
        dz0 = q.new_empty(NS, B, H, F, dtype=torch.float32)
        s_start, z_start, ds_end, dz_end = s0, z0, dST, dzT  # NS = 1: the states themselves
        if NS > 1:
            sums = [q.new_empty(NS, B, H, F, *d, dtype=torch.float32) for d in ((Dv,), (), (Dv,), ())]
            _seg_sums_kernel[(NV, B * H, NS)](
                q, k, v, do, den if normalize else do, delta if normalize else do, *sums,
                T, H, F, Dv, SEG, BT=BT, BF=BF, BV=BV, NORMALIZE=normalize, LOWP=_lowp(q.dtype), GRAD=True,
                num_warps=NUM_WARPS,
            )  # fmt: skip
            s_sum, z_sum, ds_sum, dz_sum = sums
            s_start = torch.cumsum(s_sum, 0) - s_sum  # the sums of the segments before each
            z_start = torch.cumsum(z_sum, 0) - z_sum
            ds_end = ds_sum.sum(0, keepdim=True) - torch.cumsum(ds_sum, 0)  # ... and of those after it
            dz_end = dz_sum.sum(0, keepdim=True) - torch.cumsum(dz_sum, 0)
            if has_s0:
                s_start, z_start = s_start + s0, z_start + z0
            if has_dfinal:
                ds_end, dz_end = ds_end + dST, dz_end + dzT
        seg_start, seg_end = NS > 1 or has_s0, NS > 1 or has_dfinal
        _bwd_kernel[(NV, B * H, NS)](
            q, k, v, do, den if normalize else do, delta if normalize else do, s_start if seg_start else do,
            z_start if seg_start else do, ds_end if seg_end else do, dz_end if seg_end else do,
            dq, dk, dv, ds0, dz0,
            T, H, F, Dv, B * T * H * F, SEG,
            BT=BT, BF=BF, BV=BV, HAS_S0=seg_start, HAS_DFINAL=seg_end, NORMALIZE=normalize,
            LOWP=_lowp(q.dtype), num_warps=NUM_WARPS,
        )  # fmt: skip
        dq = dq.sum(0) if NV > 1 else dq[0]
        dk = dk.sum(0) if NV > 1 else dk[0]
        dS0 = dz0_out = None
        if has_s0:
            dS0, dz0_out = ds0[0].to(s0_dtypes[0]), dz0[0].to(s0_dtypes[1])
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), dS0, dz0_out, None, None, None, None


def linear_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    initial_state: State | None = None,
    output_final_state: bool = False,
    normalize: bool = True,
    eps: float = 1e-6,
    *,
    chunk_size: int = 64,
) -> tuple[torch.Tensor, State | None]:
    """Triton chunked linear attention: o_t = phi(q_t) S_t / (phi(q_t) z_t + eps), differentiable.

    q, k (B, T, H, F) feature-mapped; v (B, T, H, Dv); q, k, v share one dtype (fp32, bf16 or fp16).
    initial_state (S (B, H, F, Dv), z (B, H, F)) or None for zeros. ``chunk_size`` is rounded up to a
    power of two in [16, 128] (it changes rounding, not the result). Returns o (B, T, H, Dv) in q's dtype
    and, with ``output_final_state``, the final state (S, z) in fp32; gradients reach q, k, v and both
    parts of initial_state.
    """
    _check(q, k, v, initial_state, eps)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if q.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"q must be float32, bfloat16 or float16 for the Triton kernel, got {q.dtype}")
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(f"q, k and v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    S0, z0 = initial_state if initial_state is not None else (None, None)
    o, ST, zT = _LinearAttention.apply(q, k, v, S0, z0, output_final_state, normalize, eps, chunk_size)
    return o, ((ST, zT) if output_final_state else None)
