"""Decode GEMV in Triton: y = (RMSNorm(x) * norm_weight, or x) @ weight.T for a few rows x (M <= 64).

At decode sizes the weights are nearly all the bytes (the teacher's Q|K|V: 1.1 MB of weights, 1.2 KB of x at
M = 1), so the kernel is built to read every weight element exactly once, with loads along K (weight's
contiguous dim, 16 bytes a thread), and to start enough programs that every SM has loads in flight.

Two kernels:

- ``_gemv_kernel``, grid (n_blocks, n_splits). Program (j, s) owns rows [j * BLOCK_N, (j + 1) * BLOCK_N) of
  weight and columns [s * chunk, (s + 1) * chunk) of K: it reads that (BLOCK_N, chunk) slice of weight once, in
  (BLOCK_N, BLOCK_K) tiles, and the matching (M, chunk) slice of x. With ``HAS_NORM`` it first computes the rms
  of each of the M rows over the *whole* K itself (x is tiny and sits in L2; every program recomputes it, in
  fp32), so a split program normalises its K slice with the full row's rms: the result does not depend on the
  split. The norm repeats ``RMSNorm``'s roundings (``naive.rms_norm``): x * rstd rounded to x's dtype, times
  norm_weight rounded to their promoted dtype. Products accumulate in fp32:
  - M < ``DOT_MIN_M``: element-wise products into an fp32 (BLOCK_M, BLOCK_N, BLOCK_K) accumulator (a 2-D
    (BLOCK_N, BLOCK_K) one at M = 1, the plain GEMV form), reduced over K once at the end;
  - M >= ``DOT_MIN_M``: ``tl.dot`` with M padded to 16 (at M = 16 the element-wise form would need 16 FMAs per
    weight element, as many as the CUDA cores do per byte the HBM delivers; the tensor cores make it free).
    bf16 / fp16 operands go to the MMA as they are (the products are exact in fp32); fp32 operands, and a norm
    whose output is wider than weight's dtype, use fp32 with ``input_precision="ieee"`` (no TF32).
  With one split the program writes y in x's dtype; with several it writes its fp32 partial to a workspace
  (n_splits, M, N), summed in split order by
- ``_reduce_kernel``, grid over M * N, a second launch; or, with ``FIXUP``, by the last of a column block's split
  programs to finish (``kernels/_fixup.py``: a ticket from an acq_rel atomic counter), one launch. ``FIXUP`` is
  off: decode attention's fixup measured slower than its second launch on an H100 with PDL (docs/decode.md), and
  this one has not been timed. Both forms sum in split order, unrolled (a fixed order, so the result is the same
  from run to run, eager equals compiled, and the two forms give the same bits).

Epilogues (``HAS_BIAS``, ``HAS_RES``, ``SWIGLU``), applied by whichever kernel writes y: ``bias`` (F.linear's) and
``residual + y`` added to the fp32 sum, in that order, before the one rounding; or, with weight's rows interleaved
(gate, up), the (M, N // 2) silu(g) * u with the unfused path's roundings (``_swiglu``). BLOCK_N is a power of
2 >= 2, so a program holds whole pairs.

Why a merge in split order and not fp32 atomics into the output: atomics add the splits in whatever order they
finish, so the low bits change from run to run (the decode invariants compare a compiled step with an eager one),
and they need a zeroed fp32 buffer and a cast afterwards.

The plan (``launch_plan``) is a function of (M, N, K) and the device only: BLOCK_N starts at ``BLOCK_N`` and is
halved (down to ``MIN_BLOCK_N``; 16 on the ``tl.dot`` path) while the N blocks are fewer than ``PROGRAMS_PER_SM``
programs per SM; if they are still fewer than ``SPLIT_BELOW_PER_SM`` per SM, K is split into enough chunks to
reach that many programs (at most ``MAX_SPLITS``, chunks a multiple of ``SPLIT_ALIGN``). BLOCK_K covers a
program's whole chunk where the accumulator fits ``MAX_TILE`` elements, so a program issues its loads at once.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from .._config_env import json_settings
from .._fixup import counters
from .._launch import launch
from .._pdl import gdc_launch_dependents, gdc_wait, pdl_enabled
from .._sizes import cdiv as _cdiv
from .._sizes import next_pow2 as _next_pow2
from .._sizes import prev_pow2 as _prev_pow2
from .._sizes import sm_count as _sm_count
from ._checks import MAX_M, check_conv_epilogue, check_decode_linear

# Sizes on CUDA (first guesses, untuned; a tuner sets CONFIG_OVERRIDE):
# BLOCK_N / MIN_BLOCK_N: rows of weight per program, halved down to the minimum while programs are few;
# MAX_BLOCK_K: K per tile at most; MAX_TILE: BLOCK_M * BLOCK_N * BLOCK_K at most on the element-wise path (its fp32
# accumulator: 8192 elements are 64 registers a thread at 4 warps), BLOCK_N * BLOCK_K on the tl.dot path;
# DOT_MIN_M: from this M on, tl.dot; FIXUP: split-K's partials summed by the last split program (one launch)
# instead of by _reduce_kernel (two; the default, see the docstring: in the teacher's step on an H100 FIXUP lost
# at batch 8 / 16, 9,664 -> 9,509 and 18,611 -> 17,216 tokens/s, level at 1, twenty-second session,
# docs/results/decode/gemvstep_h100_2026-12-07h_*.md); PROGRAMS_PER_SM: the programs aimed at;
# SPLIT_BELOW_PER_SM: split K only when the N blocks are fewer than this many per SM (a split costs a second
# launch); MAX_SPLITS, SPLIT_ALIGN: at most this many splits, chunks a multiple of this many K columns (aligned,
# vectorised loads). Run on GPUs since (docs/decode.md): batch 1 and 4 win against cuBLAS, 64 loses.
# WIDE_M, WIDE_MIN_BLOCK_N: from WIDE_M rows on (tl.dot path, not the Q|K|V+RoPE epilogue, which never splits),
# BLOCK_N is not halved below WIDE_MIN_BLOCK_N, and split-K fills the GPU instead: every program reads x's rows of
# its K chunk, so at 64 rows 16-row blocks of weight read x from L2 four times as often as the weight bytes
# (64 rows lost to cuBLAS with 16-row blocks on an H100; this wider form lost too: 45,134 against 54,733 tokens/s
# at 64 x 128, docs/results/decode/decode_h100_gemv_wide_b64.md; tools/tune_gemv.py --rows 64 sweeps its tiles).
# L2_PREFETCH: with PDL on the tl.dot path (M >= DOT_MIN_M), each program asks L2 for its weight slice (one
# `prefetch.global.L2::evict_last` a 128-byte line, no registers held) before it waits on the kernel before, so
# the slice streams in from HBM while that kernel finishes and the products after the wait read it from L2. The
# element-wise path (M < DOT_MIN_M) already loads its first tile early (below); the dot path cannot (an early
# tile spills). On since 2026-12-06: on an H200 the teacher shape's step with it ran 8,690 / 16,314 tokens/s at
# batch 8 / 16 against 8,474 / 16,044 without (MQA 8,959 / 17,237 against 8,825 / 16,859), one process
# (`archzoo bench decode --decode-linear auto,kernel-pdl,kernel-pdl-l2`, docs/results/decode/decode_h200_l2ab.md).
# M_TILE: on the tl.dot path, rows of x a program takes (None: all of them, one row block). At 64 rows one block
# gives Q|K|V with RoPE (never split along K) 60 programs for 132 SMs, each reading all 64 rows of x; tiles of 16
# rows give 240, each reading the weight rows again from L2 (cuBLAS tiles its batch-64 GEMVs 8 rows at a time).
# Off: it lost on an H200 (teacher shape at 64 x 128: 33,253 tokens/s against 38,978 with one row block, and cuBLAS
# 48,071; docs/results/decode/decode_h200_m16.md), so the tl.dot path at 64 rows stays behind cuBLAS.
# EPILOGUE_PLANS: on the tl.dot path below WIDE_M rows (a decode step at batch 8-31), the keys of EPILOGUE_PLAN for
# the projection's epilogue override the ones above and CONFIG_OVERRIDE's ({"EPILOGUE_PLANS": false} turns them off,
# so an override's keys apply to every projection, as the tuner's flat configurations do).
CUDA_CONFIG = dict(BLOCK_N=16, MIN_BLOCK_N=4, MAX_BLOCK_K=1024, MAX_TILE=8192, DOT_MIN_M=8, PROGRAMS_PER_SM=2,
                   SPLIT_BELOW_PER_SM=1.0, MAX_SPLITS=16, SPLIT_ALIGN=64, FIXUP=False, WIDE_M=32, WIDE_MIN_BLOCK_N=64,
                   L2_PREFETCH=True, M_TILE=None, EPILOGUE_PLANS=True, ROPE_SPLIT=False, NORM_UNROLL=8,
                   num_warps=4)  # fmt: skip
# NORM_UNROLL: a norm's sum of squares (HAS_NORM: every program computes its rows' rms over the whole K first) in
# an unrolled loop where K takes 2 to this many BLOCK_K tiles, else a loop (0: always a loop). Why:
# the loop's tiles are loaded one after the other, each an L2 round trip before the products can start (Triton
# software-pipelines only loops that feed tl.dot), and at 16 rows the two normed projections are the two that lose
# to cuBLAS (on an H200, gemv_tune_h200_m16_ew.log: Q|K|V with RoPE 5.49 us against 3.70, gate|up 6.11 against
# 4.10, each in 3 tiles of 256; O and down, without a norm, win: 2.70 against 3.65, 3.16 against 5.08). Unrolled,
# the three loads are independent and issue together (one tile stays the loop: one load either way). Timed in the
# twentieth session in a step on an H100, each setting its own process with cuBLAS beside it
# (docs/results/decode/normunroll_h100_run2_*.md): the teacher 17,986 -> 18,356 tokens/s at batch 16, MQA 18,947 ->
# 19,515, batch 1 level (2,094 / 2,087); on since. tools/tune_gemv.py's grid has a "normloop" row (the loop).
# The tl.dot path's configuration at 8-31 rows by the projection's epilogue: "rope" (Q|K|V with RoPE and the cache
# write), "swiglu" (gate|up), "residual" (O, down, and every projection that adds the residual); a projection
# without an epilogue keeps CUDA_CONFIG. Why per epilogue: no one configuration was within 1% of the best on all
# four of the teacher's projections (tools/tune_gemv.py --rows 16,8 on an H100, fifteenth session,
# docs/results/kernels/gemv_tune_h100_16_8.log), and each projection's best differs in the one key that matters
# for its shape: Q|K|V (never split along K) wants its 576 columns in three pipelined 256-column tiles, not one
# (7.87 -> 5.21 us at 16 rows); O and down want 64-column tiles on 2 warps (4.33 -> 2.70 and 4.63 -> 3.31 us); gate|up
# 32-row weight blocks (7.72 -> 6.02 us). Summed over a layer's four at 16 rows: 24.5 -> 17.2 us (cuBLAS 16.3 us,
# without the norm, RoPE, cache-write, SwiGLU and residual kernels the epilogues save); at 8 rows 24.4 -> 17.7 us.
# In the step at batch 16 they took the teacher from 16,410 to 17,768 tokens/s on an H100 (sixteenth session) and
# from 16,370 to 17,894 on an H200 (nineteenth; docs/results/decode/gemvstep_h200_m16_*.md), cuBLAS beside each.
# ROPE_SPLIT: Q|K|V with RoPE splits K as the other projections do, the last split program of each column block
# summing the partials and writing q and the caches (one launch, FIXUP's ticket; the reduce kernel has no RoPE). Why:
# at 8-31 rows the tl.dot path's column blocks are 16 wide, so the teacher's 960 Q|K|V rows make 60 programs for
# 132 SMs, and Q|K|V with RoPE took 5.5 us at 16 rows against cuBLAS's 3.7 (without RoPE and the cache write) on an
# H200 (docs/results/kernels/gemv_tune_h200_m16_ew.log). Timed in the nineteenth session in a step on an H100 (the
# teacher, cuBLAS beside it, each setting its own process; docs/results/decode/ropesplit_h100_*.md): it lost, 17,944
# -> 17,672 tokens/s at batch 16 and 9,501 -> 9,162 at 8 (the ticket's atomics and the partials' round trip cost more
# than the idle SMs did); off. The tuner's FIXUP rows split Q|K|V with it, for a per-projection view on other GPUs.
EPILOGUE_PLAN = {
    "rope": dict(MAX_BLOCK_K=256),
    "swiglu": dict(BLOCK_N=32, MIN_BLOCK_N=32),
    "residual": dict(MAX_BLOCK_K=64, num_warps=2),
}
# Under the interpreter (tests): tiny tiles and a pretend GPU of 4 "SMs", so the halving of BLOCK_N, several
# K tiles per program and the split are all exercised at K, N below 100.
INTERPRET_CONFIG = dict(BLOCK_N=8, MIN_BLOCK_N=2, MAX_BLOCK_K=32, MAX_TILE=2048, DOT_MIN_M=8, PROGRAMS_PER_SM=2,
                        SPLIT_BELOW_PER_SM=1.0, MAX_SPLITS=4, SPLIT_ALIGN=16, SM_COUNT=4, FIXUP=False, WIDE_M=32,
                        WIDE_MIN_BLOCK_N=16, L2_PREFETCH=False, M_TILE=None, EPILOGUE_PLANS=False,
                        ROPE_SPLIT=False, NORM_UNROLL=0, num_warps=1)  # fmt: skip
# Overrides of either (tests, tuners): any key above, and "SPLIT_K" to force the split count (capped at one
# split per SPLIT_ALIGN columns). Plans are keyed on it, so no cache needs clearing. It starts from the environment
# variable CONFIG_ENV, a JSON object of such keys (what tools/tune_gemv.py suggests for a GPU), so a configuration
# tuned for another GPU applies without editing the code, and a process started with it runs the tuned plans.
CONFIG_ENV = "ARCHZOO_DECODE_LINEAR_CONFIG"


def config_from_env(text: str | None) -> dict:
    """CONFIG_ENV's value -> the override it asks for ({} when unset or empty); ValueError naming what is wrong."""
    cfg = json_settings(text, CONFIG_ENV, "decode GEMV settings", set(CUDA_CONFIG) | {"SPLIT_K"})
    bad = {k: v for k, v in cfg.items() if not (v is None or isinstance(v, (bool, int, float)))}
    if bad:
        raise ValueError(f"{CONFIG_ENV}: values must be numbers, booleans or null; got {bad}")
    return cfg


CONFIG_OVERRIDE: dict = config_from_env(os.environ.get(CONFIG_ENV))

_TL_DTYPE = {torch.float16: tl.float16, torch.bfloat16: tl.bfloat16, torch.float32: tl.float32}


@triton.jit
def _round(v, DTYPE: tl.constexpr):
    """v (fp32) rounded to DTYPE's precision, to nearest even, kept in fp32. bf16 by its bits (exact for finite
    values; NaN stays NaN): Triton 3.9's interpreter truncates fp32 -> bf16 casts, so tests could not check the
    norm's roundings otherwise; on a GPU it costs a few integer ops per element of x or y (not of weight)."""
    if DTYPE == tl.bfloat16:
        b = v.to(tl.uint32, bitcast=True)
        r = ((b + 0x7FFF + ((b >> 16) & 1)) & 0xFFFF0000).to(tl.float32, bitcast=True)
    elif DTYPE == tl.float16:
        r = v.to(tl.float16).to(tl.float32)
    else:
        r = v
    return r


@triton.jit
def _sum_sq(x_rows, offs_k, s_xk, mask_m, K):
    """Each row's sum of squares over one K tile of x, in fp32: (BLOCK_M,)."""
    xt = tl.load(x_rows + offs_k[None, :] * s_xk, mask=mask_m[:, None] & (offs_k < K)[None, :], other=0.0)
    xt = xt.to(tl.float32)
    return tl.sum(xt * xt, axis=1)


@triton.jit
def _swiglu(g, u, DTYPE: tl.constexpr):
    """silu(g) * u from fp32 accumulators, with the unfused path's roundings (F.linear's g and u in DTYPE, then
    F.silu in DTYPE, then the product in DTYPE); returns fp32 holding a DTYPE value."""
    g = _round(g, DTYPE)
    u = _round(u, DTYPE)
    s = _round(g / (1.0 + tl.exp(-g)), DTYPE)
    return _round(s * u, DTYPE)


@triton.jit
def _rope_store(
    y, pid_n, offs_m, mask_m, out_ptr, pos_ptr, freq_ptr, kc_ptr, vc_ptr, N, NQ, NK, HD, slots,
    s_kb, s_kh, s_kt, s_kd, s_vb, s_vh, s_vt, s_vd, TOK, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    """The Q|K|V epilogue (``decode_qkv_rope``): y (BLOCK_M, BLOCK_N) fp32 holds rows (2i, 2i + 1) of the
    program's block as one pair each: RoPE pair j (dims j and j + HD/2) of a Q or K head, or dims (r, r + 1) of a
    V head. Q and K pairs are rotated by each row's position with the unfused path's roundings (the projection
    rounded, cos and sin rounded, each product and the sum rounded, as ``apply_rope`` in x's dtype), then Q is
    stored in the usual head layout and K, V straight into the caches' slot ``position % slots`` of cache row
    m // TOK (TOK tokens a cache row: a speculative verify's)."""
    DT = out_ptr.dtype.element_ty
    a, b = tl.split(tl.reshape(y, [BLOCK_M, BLOCK_N // 2, 2]))
    a = _round(a, DT)
    b = _round(b, DT)
    n0 = pid_n * BLOCK_N + 2 * tl.arange(0, BLOCK_N // 2)  # the pair's first row
    valid = n0 < N
    is_q = n0 < NQ
    is_v = n0 >= NQ + NK
    is_k = valid & (~is_q) & (~is_v)
    r = n0 - tl.where(is_q, 0, tl.where(is_v, NQ + NK, NQ))
    head = r // HD
    within = r % HD  # even
    j = within // 2
    pos = tl.load(pos_ptr + offs_m, mask=mask_m, other=0)  # (BLOCK_M,)
    f = tl.load(freq_ptr + j, mask=valid & (~is_v), other=0.0)
    ang = pos.to(tl.float32)[:, None] * f[None, :]
    c = _round(tl.cos(ang), DT)
    s = _round(tl.sin(ang), DT)
    o1 = _round(_round(a * c, DT) - _round(b * s, DT), DT)
    o2 = _round(_round(b * c, DT) + _round(a * s, DT), DT)
    rot = (~is_v)[None, :]
    o1 = tl.where(rot, o1, a)
    o2 = tl.where(rot, o2, b)
    d1 = tl.where(is_v, within, j)
    d2 = tl.where(is_v, within + 1, j + HD // 2)
    m2 = mask_m[:, None] & valid[None, :]
    q_at = out_ptr + offs_m[:, None] * NQ + (head * HD)[None, :]
    tl.store(q_at + d1[None, :], o1.to(DT), mask=m2 & is_q[None, :])
    tl.store(q_at + d2[None, :], o2.to(DT), mask=m2 & is_q[None, :])
    slot = (pos % slots).to(tl.int64)
    rows = offs_m.to(tl.int64) // TOK
    k_at = kc_ptr + rows[:, None] * s_kb + head[None, :] * s_kh + slot[:, None] * s_kt
    KT = kc_ptr.dtype.element_ty
    tl.store(k_at + d1[None, :] * s_kd, o1.to(KT), mask=m2 & is_k[None, :])
    tl.store(k_at + d2[None, :] * s_kd, o2.to(KT), mask=m2 & is_k[None, :])
    v_at = vc_ptr + rows[:, None] * s_vb + head[None, :] * s_vh + slot[:, None] * s_vt
    VT = vc_ptr.dtype.element_ty
    tl.store(v_at + d1[None, :] * s_vd, o1.to(VT), mask=m2 & is_v[None, :])
    tl.store(v_at + d2[None, :] * s_vd, o2.to(VT), mask=m2 & is_v[None, :])


PF_COLS: tl.constexpr = tl.constexpr(16)  # lines a row each prefetch instruction batch covers


@triton.jit
def _prefetch_l2(ptrs):
    """Ask L2 for the 128-byte line of each address (``prefetch.global.L2::evict_last``, sm_80 and later): no
    data comes back to the program and nothing waits on it. CUDA only (the interpreter cannot run inline PTX)."""
    tl.inline_asm_elementwise(
        "prefetch.global.L2::evict_last [$1];\n\tmov.u32 $0, 0;",
        "=r,l",
        [ptrs],
        dtype=tl.int32,
        is_pure=False,
        pack=1,
    )


@triton.jit
def _conv_epilogue(y, offs_m, mask_m, offs_n, cs_ptr, cw_ptr, cb_ptr, CD, s_cm, s_cn, s_ck,
                   W: tl.constexpr, HAS_CB: tl.constexpr):  # fmt: skip
    """Mamba's in_proj -> conv: columns n < CD of y (fp32 holding values rounded to the output dtype, the x half) go
    through one causal conv step with SiLU, as ``causal_conv1d_update`` computes it (fp32, bias first, the taps
    oldest first, this step's x last); the state (M, CD, W - 1) shifts by one step, x appended. Every (row, column)
    belongs to one program (no split-K) and its old taps are read before they are overwritten. Columns >= CD (z)
    come back as they are."""
    is_x = offs_n < CD
    m2 = mask_m[:, None] & is_x[None, :]
    st = cs_ptr + offs_m.to(tl.int64)[:, None] * s_cm + offs_n[None, :] * s_cn
    wrow = cw_ptr + offs_n * W
    if HAS_CB:
        acc = tl.load(cb_ptr + offs_n, mask=is_x, other=0.0).to(tl.float32)[None, :] + tl.zeros_like(y)
    else:
        acc = tl.zeros_like(y)
    for k in tl.static_range(W - 1):
        v = tl.load(st + k * s_ck, mask=m2, other=0.0)
        acc += tl.load(wrow + k, mask=is_x, other=0.0).to(tl.float32)[None, :] * v.to(tl.float32)
        if k > 0:  # the state shifted: tap k - 1 takes tap k's old value, read above
            tl.store(st + (k - 1) * s_ck, v, mask=m2)
    acc += tl.load(wrow + (W - 1), mask=is_x, other=0.0).to(tl.float32)[None, :] * y
    tl.store(st + (W - 2) * s_ck, y.to(cs_ptr.dtype.element_ty), mask=m2)
    return tl.where(is_x[None, :], acc * tl.sigmoid(acc), y)


@triton.jit
def _gemv_kernel(
    x_ptr, w_ptr, nw_ptr, out_ptr, part_ptr, res_ptr, b_ptr, pos_ptr, freq_ptr, kc_ptr, vc_ptr, cnt_ptr,
    cs_ptr, cw_ptr, cb_ptr,
    M, N, K, chunk,
    s_xm, s_xk, s_wn, s_wk, s_nk, s_rm, s_rn,
    NQ, NK, HD, slots, s_kb, s_kh, s_kt, s_kd, s_vb, s_vh, s_vt, s_vd, TOK,
    CD, s_cm, s_cn, s_ck,
    HAS_NORM: tl.constexpr, EPS: tl.constexpr, H_DTYPE: tl.constexpr, SPLIT: tl.constexpr, FIXUP: tl.constexpr,
    HAS_RES: tl.constexpr, HAS_BIAS: tl.constexpr, SWIGLU: tl.constexpr, ROPE: tl.constexpr,
    USE_DOT: tl.constexpr, DOT_F32: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_S: tl.constexpr, PDL: tl.constexpr,
    L2_PREFETCH: tl.constexpr = False, PF_LINE: tl.constexpr = 64, CONV_W: tl.constexpr = 0,
    CONV_BIAS: tl.constexpr = False, NORM_TILES: tl.constexpr = 0,
):  # fmt: skip
    """CONV_W > 0 (with cs / cw / cb, CD and the state's strides): Mamba's in_proj with its conv step in the epilogue
    (``_conv_epilogue``; the plan never splits K then). NORM_TILES > 0 (``NORM_UNROLL``): the norm's K tiles, the
    loop over them unrolled."""
    if PDL:  # the next kernel may launch now: its programs load their weights while this one runs
        gdc_launch_dependents()
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    pid_m = tl.program_id(2)  # row block (M_TILE; 0 when one block takes all rows)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = offs_m < M
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    offs_kb = tl.arange(0, BLOCK_K)
    x_rows = x_ptr + offs_m[:, None] * s_xm
    w_rows = w_ptr + offs_n.to(tl.int64)[:, None] * s_wn  # (BLOCK_N, 1): N * K may pass 2**31
    k_start = pid_k * chunk
    k_end = tl.minimum(k_start + chunk, K)
    # PDL on the element-wise path (batch 1-7): the first weight tile, which no kernel of the step writes, is
    # loaded before waiting on the kernel before (it may still be running; at batch 1 the tile is the program's
    # whole slice up to K = 1,024); x, the residual and the caches are that kernel's outputs (or read by it), so
    # they come after the wait. The tl.dot path waits first: an early tile there spills and upsets its pipeline.
    EARLY: tl.constexpr = PDL and not USE_DOT
    if EARLY:
        offs_k = k_start + offs_kb
        w_first = tl.load(w_rows + offs_k[None, :] * s_wk, mask=mask_n[:, None] & (offs_k < k_end)[None, :],
                          other=0.0)  # fmt: skip
    if L2_PREFETCH:  # (PDL, tl.dot path) this program's weight slice into L2 while the kernel before finishes
        pf_rows = w_ptr + tl.minimum(offs_n, N - 1).to(tl.int64)[:, None] * s_wn  # masked rows: the last row again
        for k0 in range(k_start, k_end, PF_COLS * PF_LINE):
            pf_k = tl.minimum(k0 + tl.arange(0, PF_COLS) * PF_LINE, k_end - 1)  # one address a 128-byte line
            _prefetch_l2(pf_rows + pf_k[None, :] * s_wk)
    if PDL:
        gdc_wait()

    if HAS_NORM:  # the rms of each row over the whole K, whatever this program's slice
        ss = tl.zeros([BLOCK_M], tl.float32)
        if NORM_TILES > 0:  # unrolled: the tiles' loads are independent, so they issue together (one round trip)
            for t in tl.static_range(NORM_TILES):
                ss += _sum_sq(x_rows, t * BLOCK_K + offs_kb, s_xk, mask_m, K)
        else:  # a loop: each tile's load waits for the one before (Triton pipelines only loops that feed tl.dot)
            for k0 in range(0, K, BLOCK_K):
                ss += _sum_sq(x_rows, k0 + offs_kb, s_xk, mask_m, K)
        rstd = tl.math.rsqrt(ss / K + EPS)

    if USE_DOT:
        acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    elif BLOCK_M == 1:
        acc = tl.zeros([BLOCK_N, BLOCK_K], tl.float32)
    else:
        acc = tl.zeros([BLOCK_M, BLOCK_N, BLOCK_K], tl.float32)
    for k0 in range(k_start, k_end, BLOCK_K):
        offs_k = k0 + offs_kb
        mask_k = offs_k < k_end
        h = tl.load(x_rows + offs_k[None, :] * s_xk, mask=mask_m[:, None] & mask_k[None, :], other=0.0)
        h = h.to(tl.float32)  # (BLOCK_M, BLOCK_K)
        if HAS_NORM:  # RMSNorm's roundings: x * rstd to x's dtype, then * norm_weight to the promoted dtype
            nw = tl.load(nw_ptr + offs_k * s_nk, mask=mask_k, other=0.0).to(tl.float32)
            h = _round(h * rstd[:, None], x_ptr.dtype.element_ty)
            h = _round(h * nw[None, :], H_DTYPE)
        if EARLY:
            if k0 == k_start:
                w_this = w_first
            else:
                w_this = tl.load(w_rows + offs_k[None, :] * s_wk, mask=mask_n[:, None] & mask_k[None, :], other=0.0)
        else:
            w_this = tl.load(w_rows + offs_k[None, :] * s_wk, mask=mask_n[:, None] & mask_k[None, :], other=0.0)
        if USE_DOT:
            if DOT_F32:
                acc += tl.dot(h, tl.trans(w_this.to(tl.float32)), input_precision=DOT_PRECISION)
            else:
                acc += tl.dot(h.to(w_this.dtype), tl.trans(w_this))
        elif BLOCK_M == 1:
            acc += w_this.to(tl.float32) * tl.reshape(h, [BLOCK_K])[None, :]
        else:
            acc += h[:, None, :] * w_this.to(tl.float32)[None, :, :]
    if USE_DOT:
        y = acc
    elif BLOCK_M == 1:
        y = tl.reshape(tl.sum(acc, axis=1), [1, BLOCK_N])
    else:
        y = tl.sum(acc, axis=2)  # (BLOCK_M, BLOCK_N)

    mask = mask_m[:, None] & mask_n[None, :]
    if SPLIT:  # workspace (n_splits, M, N), fp32, contiguous
        part_at = part_ptr + offs_m[:, None] * N + offs_n[None, :]
        tl.store(part_at + pid_k * M * N, y, mask=mask)
        if FIXUP:  # the last of the column block's split programs sums them (kernels/_fixup.py)
            cnt_at = cnt_ptr + pid_m * tl.num_programs(0) + pid_n  # one counter a (row block, column block)
            ticket = tl.atomic_add(cnt_at, 1, sem="acq_rel", scope="gpu")
            last = ticket == tl.num_programs(1) - 1
            if last:
                tl.store(cnt_at, 0)  # zero again for the next call
                y = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
                for s in tl.static_range(BLOCK_S):  # in split order, as _reduce_kernel (the same bits); unrolled,
                    # so the loads issue together
                    y += tl.load(part_at + s * M * N, mask=tl.where(s < tl.num_programs(1), mask, False), other=0.0,
                                 cache_modifier=".cg")  # fmt: skip
            mask_m = tl.where(last, mask_m, False)  # only the last program writes y
            mask = mask_m[:, None] & mask_n[None, :]
    if SPLIT and not FIXUP:
        pass  # _reduce_kernel writes y
    elif ROPE:  # Q|K|V rows, the Q and K heads' by RoPE pair: q -> out (M, NQ), k and v -> the caches
        _rope_store(y, pid_n, offs_m, mask_m, out_ptr, pos_ptr, freq_ptr, kc_ptr, vc_ptr, N, NQ, NK, HD, slots,
                    s_kb, s_kh, s_kt, s_kd, s_vb, s_vh, s_vt, s_vd, TOK, BLOCK_M, BLOCK_N)  # fmt: skip
    elif SWIGLU:  # weight rows interleaved [g0, u0, g1, u1, ...]: out (M, N // 2), contiguous
        g, u = tl.split(tl.reshape(y, [BLOCK_M, BLOCK_N // 2, 2]))
        a = _swiglu(g, u, out_ptr.dtype.element_ty).to(out_ptr.dtype.element_ty)  # exact: already rounded
        offs_f = pid_n * (BLOCK_N // 2) + tl.arange(0, BLOCK_N // 2)
        F = N // 2
        tl.store(out_ptr + offs_m[:, None] * F + offs_f[None, :], a, mask=mask_m[:, None] & (offs_f < F)[None, :])
    else:  # out (M, N), contiguous
        if HAS_BIAS:  # F.linear's bias, in fp32 before the rounding (and before the residual)
            y += tl.load(b_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
        if HAS_RES:  # residual + y in fp32, one rounding
            r = tl.load(res_ptr + offs_m[:, None] * s_rm + offs_n[None, :] * s_rn, mask=mask, other=0.0)
            y += r.to(tl.float32)
        y = _round(y, out_ptr.dtype.element_ty)
        if CONV_W > 0:  # in_proj's x half through the conv step, from its rounded values (as the unfused step)
            y = _conv_epilogue(y, offs_m, mask_m, offs_n, cs_ptr, cw_ptr, cb_ptr, CD, s_cm, s_cn, s_ck, CONV_W,
                               CONV_BIAS)  # fmt: skip
            y = _round(y, out_ptr.dtype.element_ty)  # the conv's output (z's columns: already rounded)
        y = y.to(out_ptr.dtype.element_ty)  # exact: already rounded
        tl.store(out_ptr + offs_m[:, None] * N + offs_n[None, :], y, mask=mask)


@triton.jit
def _reduce_kernel(
    part_ptr, out_ptr, res_ptr, b_ptr, MN, N, S, s_rm, s_rn,
    HAS_RES: tl.constexpr, HAS_BIAS: tl.constexpr, SWIGLU: tl.constexpr, BLOCK_S: tl.constexpr,
    BLOCK_R: tl.constexpr, PDL: tl.constexpr,
):  # fmt: skip
    """Sums the splits' fp32 partials (n_splits, M, N) in split order and applies the epilogue. Program i owns
    BLOCK_R outputs: of the (M, N) y, or with SWIGLU of the (M, N // 2) activation (MN = M * N // 2 then)."""
    if PDL:  # everything it reads is the kernel before's: nothing to load early
        gdc_launch_dependents()
        gdc_wait()
    offs = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    mask = offs < MN
    if SWIGLU:  # output (m, f) reads the partials of (m, 2f) and (m, 2f + 1)
        F = N // 2
        src = (offs // F) * N + 2 * (offs % F)
        stride_s = MN * 2  # the partials' (M, N)
        g = tl.zeros([BLOCK_R], tl.float32)
        u = tl.zeros([BLOCK_R], tl.float32)
        for s in tl.static_range(BLOCK_S):  # in split order, unrolled (the loads issue together)
            g += tl.load(part_ptr + s * stride_s + src, mask=tl.where(s < S, mask, False), other=0.0)
            u += tl.load(part_ptr + s * stride_s + src + 1, mask=tl.where(s < S, mask, False), other=0.0)
        y = _swiglu(g, u, out_ptr.dtype.element_ty)
    else:
        y = tl.zeros([BLOCK_R], tl.float32)
        for s in tl.static_range(BLOCK_S):
            y += tl.load(part_ptr + s * MN + offs, mask=tl.where(s < S, mask, False), other=0.0)
        if HAS_BIAS:
            y += tl.load(b_ptr + offs % N, mask=mask, other=0.0).to(tl.float32)
        if HAS_RES:
            r = tl.load(res_ptr + (offs // N) * s_rm + (offs % N) * s_rn, mask=mask, other=0.0)
            y += r.to(tl.float32)
        y = _round(y, out_ptr.dtype.element_ty)
    tl.store(out_ptr + offs, y.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _rope_write_kernel(
    y_ptr, out_ptr, pos_ptr, freq_ptr, kc_ptr, vc_ptr, M, N, s_ym, NQ, NK, HD, slots,
    s_kb, s_kh, s_kt, s_kd, s_vb, s_vh, s_vt, s_vd, TOK,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, PDL: tl.constexpr,
):  # fmt: skip
    """``decode_rope_write``: program (j, i) loads rows [i * BLOCK_M, ...) x columns [j * BLOCK_N, ...) of y, the
    fused Q|K|V copy's output (columns in rope_pair_order, already rounded to y's dtype: cuBLAS's), and runs the
    Q|K|V GEMV's RoPE + cache-write epilogue on them (``_rope_store``: the same roundings)."""
    if PDL:  # y is the kernel before's output
        gdc_launch_dependents()
        gdc_wait()
    pid_n = tl.program_id(0)
    offs_m = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = offs_m < M
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    y = tl.load(y_ptr + offs_m[:, None] * s_ym + offs_n[None, :], mask=mask_m[:, None] & (offs_n < N)[None, :],
                other=0.0).to(tl.float32)  # fmt: skip
    _rope_store(y, pid_n, offs_m, mask_m, out_ptr, pos_ptr, freq_ptr, kc_ptr, vc_ptr, N, NQ, NK, HD, slots,
                s_kb, s_kh, s_kt, s_kd, s_vb, s_vh, s_vt, s_vd, TOK, BLOCK_M, BLOCK_N)  # fmt: skip


# decode_rope_write's tile: BLOCK_M rows x BLOCK_N columns (a power of 2, so whole RoPE pairs) a program
ROPE_WRITE_CONFIG = dict(BLOCK_M=16, BLOCK_N=64, num_warps=4)


def rope_write(y: torch.Tensor, rope: Rope) -> torch.Tensor:
    """The launch of ``_rope_write_kernel`` (the dispatcher validated): y (M, N) with unit column stride -> q (M,
    rope.n_q) in y's dtype; the caches written."""
    M, N = y.shape
    out = torch.empty((M, rope.n_q), device=y.device, dtype=y.dtype)
    cfg = ROPE_WRITE_CONFIG
    bm, bn = min(cfg["BLOCK_M"], max(2, _next_pow2(M))), cfg["BLOCK_N"]
    pdl = pdl_enabled(y.device)
    grid = (_cdiv(N, bn), _cdiv(M, bm))
    launch(_rope_write_kernel, grid, (y, out, rope.positions, rope.inv_freq, rope.k_cache, rope.v_cache),
           (M, N, y.stride(0), *rope.ints()), (bm, bn, pdl), cfg["num_warps"], y.get_device(), pdl)  # fmt: skip
    return out


REDUCE_BLOCK = 256  # outputs per program of the reduction


def _config(device: torch.device) -> dict:
    base = CUDA_CONFIG if device.type == "cuda" else INTERPRET_CONFIG
    return {**base, **CONFIG_OVERRIDE}


def epilogue_of(swiglu: bool = False, rope: bool = False, residual: bool = False) -> str | None:
    """The EPILOGUE_PLAN key of a projection's epilogue (None: no epilogue)."""
    return "rope" if rope else "swiglu" if swiglu else "residual" if residual else None


def launch_plan(
    M: int,
    N: int,
    K: int,
    device: torch.device,
    swiglu: bool = False,
    rope: bool = False,
    residual: bool = False,
    conv: bool = False,
) -> dict:
    """-> {BLOCK_M, BLOCK_N, BLOCK_K, n_blocks, n_splits, chunk, use_dot, m_blocks, num_warps, fixup} for x (M, K)
    and weight (N, K); a function of the shape, the epilogue and the device only (see the module docstring). With
    ``swiglu`` or ``rope`` BLOCK_N is at least 2 (a power of 2, so even: a program holds whole row pairs); ``rope``
    splits K only with ``ROPE_SPLIT``, its partials then summed by the last split program of a column block, which
    runs the epilogue that writes the caches; ``conv`` never splits (its epilogue rewrites the conv state: Mamba's
    in_proj has 2 d_inner rows). On the tl.dot path below WIDE_M rows the epilogue's EPILOGUE_PLAN keys apply where
    EPILOGUE_PLANS is on. ``fixup``: split-K's partials summed by the last split program (FIXUP, or RoPE's split)
    rather than by the reduce kernel's second launch. ``norm_tiles``: the norm's K tiles where NORM_UNROLL unrolls
    them (0: a loop)."""
    cfg = _config(device)
    use_dot = M >= cfg["DOT_MIN_M"]
    epi = epilogue_of(swiglu, rope, residual)
    if use_dot and cfg.get("EPILOGUE_PLANS") and epi in EPILOGUE_PLAN and M < cfg["WIDE_M"]:
        cfg = {**cfg, **EPILOGUE_PLAN[epi]}
    m_tile = cfg.get("M_TILE")
    rows = min(M, m_tile) if use_dot and m_tile else M  # rows of x a program takes
    block_m = max(16, _next_pow2(rows)) if use_dot else _next_pow2(M)
    m_blocks = _cdiv(M, block_m) if use_dot and m_tile else 1
    if device.type == "cuda":
        sms = _sm_count(device.index if device.index is not None else torch.cuda.current_device())
    else:
        sms = cfg["SM_COUNT"]
    target = _cdiv(sms * cfg["PROGRAMS_PER_SM"], m_blocks)  # column blocks aimed at, per row block
    min_bn = max(16, cfg["MIN_BLOCK_N"]) if use_dot else cfg["MIN_BLOCK_N"]
    if swiglu or rope:
        min_bn = max(2, min_bn)
    if use_dot and not rope and rows >= cfg["WIDE_M"]:
        min_bn = max(min_bn, cfg["WIDE_MIN_BLOCK_N"])
    block_n = max(min_bn, min(cfg["BLOCK_N"], _next_pow2(N)))
    while block_n > min_bn and _cdiv(N, block_n) < target:
        block_n //= 2
    n_blocks = _cdiv(N, block_n)
    align = cfg["SPLIT_ALIGN"]
    if conv or (rope and not cfg["ROPE_SPLIT"]):
        want = 1
    elif "SPLIT_K" in cfg:
        want = cfg["SPLIT_K"]
    elif n_blocks < cfg["SPLIT_BELOW_PER_SM"] * sms:
        want = min(_cdiv(target, n_blocks), cfg["MAX_SPLITS"])
    else:
        want = 1
    want = max(1, min(want, _cdiv(K, align)))
    chunk = _cdiv(_cdiv(K, want), align) * align
    n_splits = _cdiv(K, chunk)
    # elements per K column of the largest tile: the element-wise accumulator (BLOCK_M, BLOCK_N, BLOCK_K); on the
    # tl.dot path the weight tile (BLOCK_N, BLOCK_K) or x's (BLOCK_M, BLOCK_K), whichever is taller (M up to 64)
    per_k = max(block_n, block_m) if use_dot else block_m * block_n
    block_k = max(16, min(cfg["MAX_BLOCK_K"], _prev_pow2(max(1, cfg["MAX_TILE"] // per_k)), _next_pow2(chunk)))
    # split-K's partials summed by the last split program (FIXUP), always for RoPE (_reduce_kernel has no RoPE)
    fixup = n_splits > 1 and bool(cfg["FIXUP"] or rope)
    # the norm's sum of squares over the whole K in NORM_TILES unrolled tiles (0: a loop), where there are 2 to
    # NORM_UNROLL (one tile is one load either way)
    norm_tiles = _cdiv(K, block_k) if 2 <= _cdiv(K, block_k) <= cfg.get("NORM_UNROLL", 0) else 0
    return dict(BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, n_blocks=n_blocks, n_splits=n_splits,
                chunk=chunk, use_dot=use_dot, m_blocks=m_blocks, num_warps=cfg["num_warps"], fixup=fixup,
                norm_tiles=norm_tiles)  # fmt: skip


class _Plan:
    """What a call signature needs besides the tensors: shapes, grids, integer and constexpr arguments."""

    __slots__ = ("M", "N", "n_splits", "grid", "ints", "consts", "warps", "red_grid", "red_ints", "red_consts",
                 "rope_ints", "pdl", "fixup", "n_blocks")  # fmt: skip


_PLANS: dict[tuple, _Plan] = {}


def _plan(
    x: torch.Tensor, weight: torch.Tensor, norm_weight: torch.Tensor | None, eps: float,
    residual: torch.Tensor | None = None, swiglu: bool = False, rope: Rope | None = None, bias: bool = False,
    conv: Conv | None = None,
) -> _Plan:  # fmt: skip
    nw_key = None if norm_weight is None else (norm_weight.dtype, norm_weight.stride())
    res_key = None if residual is None else residual.stride()
    rope_key = None if rope is None else rope.key()
    conv_key = None if conv is None else conv.key()
    pdl = pdl_enabled(x.device)
    key = (x.shape, x.stride(), weight.shape, weight.stride(), x.dtype, nw_key, x.device, eps, res_key, swiglu,
           rope_key, tuple(sorted(CONFIG_OVERRIDE.items())), pdl, bias, conv_key)  # fmt: skip
    p = _PLANS.get(key)
    if p is not None:
        return p
    M, K = x.shape
    N = weight.shape[0]
    lp = launch_plan(M, N, K, x.device, swiglu, rope is not None, residual is not None, conv is not None)
    h_dtype = x.dtype if norm_weight is None else torch.promote_types(x.dtype, norm_weight.dtype)
    # Triton 3.9's interpreter computes tl.dot of bf16 operands wrongly (see decode_attention/triton.py): there,
    # and only there, bf16 operands are widened to fp32 for the dot. fp32, or a norm output wider than weight's
    # dtype, always takes the fp32 dot.
    dot_f32 = x.dtype == torch.float32 or h_dtype != x.dtype or (x.device.type != "cuda" and x.dtype == torch.bfloat16)
    p = _Plan()
    p.M, p.N, p.n_splits = M, N // 2 if swiglu else (rope.n_q if rope is not None else N), lp["n_splits"]
    p.fixup = lp["fixup"]
    p.n_blocks = lp["n_blocks"] * lp["m_blocks"]  # column-block groups: the fixup's counters
    p.grid = (lp["n_blocks"], lp["n_splits"], lp["m_blocks"])
    r_strides = residual.stride() if residual is not None else (0, 0)
    p.ints = (M, N, K, lp["chunk"], *x.stride(), *weight.stride(), norm_weight.stride(0) if norm_weight is not None
              else 0, *r_strides)  # fmt: skip
    p.rope_ints = rope.ints() if rope is not None else (0, 0, 2, 1, 0, 0, 0, 0, 0, 0, 0, 0, 1)
    p.rope_ints += conv.ints() if conv is not None else (0, 0, 0, 0)  # then CD and the conv state's strides
    p.consts = (
        norm_weight is not None, float(eps), _TL_DTYPE[h_dtype], lp["n_splits"] > 1, p.fixup, residual is not None,
        bias, swiglu,
        rope is not None,
        lp["use_dot"], dot_f32,
        "ieee" if dot_f32 else None, lp["BLOCK_M"], lp["BLOCK_N"], lp["BLOCK_K"],
        _next_pow2(lp["n_splits"]) if lp["n_splits"] > 1 else 1, pdl,
        # L2_PREFETCH: only launched with PDL (so on CUDA; nothing to overlap without it), on the tl.dot path
        pdl and lp["use_dot"] and bool(_config(x.device)["L2_PREFETCH"]),
        128 // weight.element_size(),
        conv.width if conv is not None else 0, conv is not None and conv.bias is not None,
        lp["norm_tiles"] if norm_weight is not None else 0,
    )  # fmt: skip
    p.pdl = pdl
    p.warps = lp["num_warps"]
    p.red_grid = (_cdiv(M * p.N, REDUCE_BLOCK),)
    p.red_ints = (M * p.N, N, lp["n_splits"], *r_strides)
    p.red_consts = (residual is not None, bias, swiglu, _next_pow2(lp["n_splits"]), REDUCE_BLOCK, pdl)
    if len(_PLANS) > 1024:
        _PLANS.clear()
    _PLANS[key] = p
    return p


class Rope:
    """What the Q|K|V epilogue needs (``decode_qkv_rope``): each row's position (M,), the RoPE inverse frequencies
    (head_dim / 2,) fp32, the K and V caches (M // tokens, n_kv_heads, slots, head_dim), the Q and K widths,
    head_dim, and the tokens a cache row (1 in a step, k+1 in a speculative verify)."""

    __slots__ = ("positions", "inv_freq", "k_cache", "v_cache", "n_q", "n_k", "head_dim", "tokens")

    def __init__(self, positions, inv_freq, k_cache, v_cache, n_q: int, n_k: int, head_dim: int, tokens: int = 1):
        self.positions, self.inv_freq, self.k_cache, self.v_cache = positions, inv_freq, k_cache, v_cache
        self.n_q, self.n_k, self.head_dim, self.tokens = n_q, n_k, head_dim, tokens

    def key(self) -> tuple:
        return (self.n_q, self.n_k, self.head_dim, self.k_cache.shape, self.k_cache.stride(), self.k_cache.dtype,
                self.v_cache.stride(), self.v_cache.dtype, self.positions.dtype, self.tokens)  # fmt: skip

    def ints(self) -> tuple:
        return (self.n_q, self.n_k, self.head_dim, self.k_cache.shape[2], *self.k_cache.stride(),
                *self.v_cache.stride(), self.tokens)  # fmt: skip


class Conv:
    """What Mamba's in_proj -> conv epilogue needs: the conv state (M, D, W - 1), updated in place, the conv weight
    (D, W) contiguous and its bias (D,) or None; the first D output columns go through the conv step."""

    __slots__ = ("state", "weight", "bias", "width")

    def __init__(self, state: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None):
        self.state, self.weight, self.bias, self.width = state, weight.contiguous(), bias, weight.shape[1]

    def key(self) -> tuple:
        return (self.state.shape, self.state.stride(), self.state.dtype, self.weight.shape, self.weight.dtype,
                None if self.bias is None else self.bias.dtype)  # fmt: skip

    def ints(self) -> tuple:
        return (self.weight.shape[0], *self.state.stride())


def _run(
    x: torch.Tensor, weight: torch.Tensor, norm_weight: torch.Tensor | None, eps: float,
    residual: torch.Tensor | None = None, swiglu: bool = False, rope: Rope | None = None,
    bias: torch.Tensor | None = None, conv: Conv | None = None,
) -> torch.Tensor:  # fmt: skip
    """The launches, without validation (the dispatcher validated; 1 <= M <= MAX_M, fp16 / bf16 / fp32)."""
    p = _plan(x, weight, norm_weight, eps, residual, swiglu, rope, bias is not None, conv)
    out = torch.empty((p.M, p.N), device=x.device, dtype=x.dtype)
    N = weight.shape[0]
    part = torch.empty((p.n_splits, p.M, N), device=x.device, dtype=torch.float32) if p.n_splits > 1 else out
    dev = x.get_device()
    nw = norm_weight if norm_weight is not None else x  # unused (HAS_NORM off): a dummy tensor, never None
    res = residual if residual is not None else x  # likewise (HAS_RES off)
    b = bias if bias is not None else x  # likewise (HAS_BIAS off)
    rp = (rope.positions, rope.inv_freq, rope.k_cache, rope.v_cache) if rope is not None else (x, x, x, x)
    cnt = counters(x.device, p.n_blocks) if p.fixup else x  # unused without the fixup
    cp = (x, x, x)  # unused without the conv epilogue
    if conv is not None:
        cp = (conv.state, conv.weight, conv.bias if conv.bias is not None else conv.weight)
    launch(_gemv_kernel, p.grid, (x, weight, nw, out, part, res, b, *rp, cnt, *cp), (*p.ints, *p.rope_ints),
           p.consts, p.warps, dev, p.pdl)  # fmt: skip
    if p.n_splits > 1 and not p.fixup:
        launch(_reduce_kernel, p.red_grid, (part, out, res, b), p.red_ints, p.red_consts, p.warps, dev, p.pdl)
    return out


def decode_linear(
    x: torch.Tensor, weight: torch.Tensor, norm_weight: torch.Tensor | None = None, eps: float = 1e-5,
    residual: torch.Tensor | None = None, swiglu: bool = False, bias: torch.Tensor | None = None,
) -> torch.Tensor:  # fmt: skip
    """The Triton GEMV; same semantics as ``naive_decode_linear`` for 1 <= M <= 64 and fp16 / bf16 / fp32."""
    M, _, _ = check_decode_linear(x, weight, norm_weight, eps, residual, swiglu, bias)
    if not 1 <= M <= MAX_M or x.dtype == torch.float64 or (norm_weight is not None and norm_weight.dtype ==
                                                              torch.float64):  # fmt: skip
        raise ValueError(f"the Triton kernel takes 1..{MAX_M} rows in float16, bfloat16 or float32, got M={M}, "
                         f"x {x.dtype}, norm_weight {None if norm_weight is None else norm_weight.dtype}")  # fmt: skip
    return _run(x, weight, norm_weight, eps, residual, swiglu, bias=bias)


def decode_linear_conv(
    x: torch.Tensor, weight: torch.Tensor, norm_weight: torch.Tensor | None, eps: float, bias: torch.Tensor | None,
    conv_state: torch.Tensor, conv_weight: torch.Tensor, conv_bias: torch.Tensor | None,
) -> torch.Tensor:  # fmt: skip
    """The Triton GEMV with Mamba's conv step in its epilogue; same semantics as ``naive_decode_linear_conv``."""
    M, _, N = check_decode_linear(x, weight, norm_weight, eps, bias=bias)
    check_conv_epilogue(x, N, conv_state, conv_weight, conv_bias)
    if not 1 <= M <= MAX_M or x.dtype == torch.float64 or (norm_weight is not None and norm_weight.dtype ==
                                                              torch.float64):  # fmt: skip
        raise ValueError(f"the Triton kernel takes 1..{MAX_M} rows in float16, bfloat16 or float32, got M={M}, "
                         f"x {x.dtype}, norm_weight {None if norm_weight is None else norm_weight.dtype}")  # fmt: skip
    return _run(x, weight, norm_weight, eps, bias=bias, conv=Conv(conv_state, conv_weight, conv_bias))


__all__ = ["CONFIG_ENV", "CONFIG_OVERRIDE", "CUDA_CONFIG", "EPILOGUE_PLAN", "INTERPRET_CONFIG", "MAX_M",
           "ROPE_WRITE_CONFIG", "Conv", "decode_linear", "decode_linear_conv", "epilogue_of", "launch_plan",
           "rope_write"]  # fmt: skip
