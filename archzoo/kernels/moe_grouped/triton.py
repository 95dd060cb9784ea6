"""Triton kernels of ``moe_grouped_experts``: the routed experts of many tokens (training, prefill) as a plan and two
grouped GEMMs over the assignments sorted by expert, in five launches (the backward's six: ``backward.py``).

Assignments are numbered a = k * N + n (token n's k-th choice: all first choices in token order, then the second
choices ..., the MoE layer's priority order). Each expert's assignments take a segment of sorted rows, in
assignment order (a stable sort), padded to a multiple of BLOCK_M, so that every block of BLOCK_M rows belongs to
one expert:

- ``_count_kernel``, grid (n_chunks,): chunk c of BLOCK_A assignments counts its assignments per expert into
  counts (n_chunks, E) int32.
- ``_place_kernel``, grid (R / BLOCK_A,): every program sums the counts (each expert's load, and its assignments in
  the chunks before this program's), lays the padded segments out (an exclusive scan over the experts), and, going
  through the experts one by one with vectors along its BLOCK_A assignments and rows, writes
  - ``slot_assignment[r]`` (R,) int32: the assignment at sorted row r, for its chunk's assignments (row = the
    expert's start + its assignments in earlier chunks + the rank in this chunk, a scan of a 0/1 vector); -1 on the
    padding rows and the unused tail among its BLOCK_A rows;
  - ``block_expert[b]`` (R / BLOCK_M,) int32: the expert of the blocks starting in its rows, -1 for unused blocks;
  - program 0: ``expert_block[e]`` (E + 1,) int32, expert e's first block, and the used blocks at [E] (the
    backward's weight gradients loop over an expert's blocks ``expert_block[e] .. expert_block[e + 1]``).
  R = N * K + E * (BLOCK_M - 1) rounded up to BLOCK_M (and to BLOCK_A for the buffer): a bound on the padded rows
  that depends on the shapes alone, so no count ever reaches the host and a CUDA graph can capture the launches.
  Assignment rows and padding rows are disjoint sets, each row written by one program: no atomics, no barrier, the
  same bits every run. (An (experts x assignments) one-hot tile with a scan along it took twice the registers, and
  its compared tile left a local-memory bitmask in the SASS.)
- ``_gate_up_kernel``, grid (used and unused blocks x F / BLOCK_N,), one program a (block, column tile): it reads its
  block's expert (an unused block does nothing), gathers its rows of x by token (n = a mod N; padding rows read
  zeros), and runs the gate and the up tiles side by side over d_model (two fp32 accumulators, the x tile loaded
  once for both), then the epilogue with the reference's roundings: gate and up rounded to x's dtype, SiLU(gate)
  rounded, the product rounded, times the routing weight top_w[n, k] (rounded to x's dtype) rounded; a zero weight
  gives exactly 0 (a dropped assignment). Into h (R, F) in x's dtype, every row of a used block (padding rows 0);
  with ``SAVE`` (a training forward, ``save=True``) also gate and up rounded into g, u (R, F) for the backward
  (``backward.py`` says why saved, not recomputed), and zeros in the unused blocks' rows of all three (outputs of a
  custom op: every element defined).
- ``_down_kernel``, same grid over d_model: h's rows of the block against its expert's down rows over d_ff, rounded
  to x's dtype, stored at row a of y (K * N, D) (padding rows are not stored). The backward's dx is the same
  kernel with a second operand pair in its accumulator (``TWO``).
- ``_sum_kernel``, grid over N * D: out = y viewed (K, N, D) summed over the K choices in fp32, in choice order,
  rounded once, as the reference sums its rounded choices (no atomics: the same bits every run). Top-1: y is out.

Why this shape (issue 19: the layer's grouped path took 2.0x a dense SwiGLU of the same active FLOPs on an H200, at
4,096 tokens, d_model 576, d_ff 1,536, 8 experts, top-2, bf16, where 1.3x is the target): that path copies the
gathered rows of x (K * N rows), runs SiLU x up as a kernel of its own over (K * N, F) twice-read products, permutes
the output back with an index_copy, and its grouped GEMMs ran at 60% of the dense GEMM's efficiency. Here the gather
is the first GEMM's row loads, SiLU x up and the routing weight its epilogue, and the permutation the second GEMM's
row stores; the plan is two small launches of elementwise work and scans, where the layer's counting sort and
offsets are a dozen PyTorch ops (eagerly each a launch). The routing weight multiplies h before down, as
``naive_moe_decode_experts`` rounds it (h x w rounded, then down), so the down kernel is a plain GEMM.

The K loops run ``tl.range`` with ``NUM_STAGES`` stages (``_launch.launch`` has no num_stages knob). bf16 / fp16
operands go to the tensor cores as they are (exact products, fp32 sums); fp32 operands use
``input_precision="ieee"`` (no TF32), and under Triton's interpreter, which computes ``tl.dot`` of bf16 operands
wrongly (``decode_attention/triton.py``), every operand is widened to fp32 (``DOT_F32``). Expert ids outside
0..E-1 are not checked (that would read the device): their assignments are never placed, and their rows of y,
so the output, are undefined.
"""

from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl

from .._config_env import json_settings
from .._dispatch import once, triton_interpreting
from .._launch import launch
from .._pdl import gdc_launch_dependents, gdc_wait, pdl_enabled
from .._sizes import cdiv, next_pow2, prev_pow2, sm_count
from ..decode_linear.triton import _round, _swiglu  # roundings to nearest even, also under the interpreter
from ._backward_config import CUDA_CONFIG as BACKWARD_CONFIG

# BLOCK_M: rows of a block (one expert's), shared by the plan and both GEMMs. BLOCK_N x BLOCK_K: the gate-up
# program's weight tiles (two fp32 accumulators BLOCK_M x BLOCK_N), with num_warps / num_stages; DOWN_BLOCK_N x
# DOWN_BLOCK_K, DOWN_WARPS, DOWN_STAGES the down program's (d_model 576 = 9 tiles of 64). PLAN_BLOCK: assignments
# (and sorted rows) a plan program takes, a power of 2 (4,096 tokens at top-2: 16 count programs, 18 place programs;
# 512 since the twenty-fourth session: 1,024 -> 512 / 256 / 128 took the forward 1% less on an H100, the place
# launch 5.6 -> 4.3 us, docs/results/kernels/moe_grouped_tune_h100_2026-12-07s.log);
# COUNTS_TILE: the (chunks x experts) tile of counts a place program sums at a time, at most this many elements;
# PLAN_WARPS: the plan's and the sum's warps; SUM_BLOCK: output elements a sum program takes.
# Timed on an H100 at the students' shape (4,096 tokens, d_model 576, d_ff 1,536, 8 experts, top-2, bf16; CUDA
# graphs; a dense SwiGLU of hidden 3,072 took 116 us): BLOCK_M 64, 4 warps 176 us; BLOCK_M 128, 8 warps 150 us;
# BLOCK_N 128 or 4 stages no better. A first sweep, not a tuning.
# PERSISTENT: 0, the gate-up kernel a program a (block, column tile); k >= 1, _gate_up_persistent_kernel on k
# programs an SM, each walking tiles of the used blocks (then, saving, zeroing the unused ones), with FLATTEN
# (Triton's loop flattening: the next tile's loads pipelined under this tile's epilogue) or not. Why: at d_model 576
# a tile's K loop is nine steps of 64, and the forward's gate-up ran at 287 TFLOP/s where cuBLAS's dense GEMMs of
# the same FLOPs ran at about twice that (docs/kernels.md, "MoE experts as grouped GEMMs"); no tile of the
# one-tile-a-program kernel paid (tools/tune_moe_grouped.py). Written in the twenty-first session, CPU only. Timed
# in the twenty-second on an H100 (docs/results/kernels/moe_grouped_tune_h100_2026-12-07h.log, one process, the
# layer's fused-experts forward in CUDA graphs): it lost every way, 0.159 -> 0.197 ms saving (1 program an SM,
# flattened), 0.202 (2 an SM), 0.184 (1 an SM, nested loops); 0.144 -> 0.180 without saving. Off; kept for other
# shapes (a longer K loop) and GPUs, with its tests.
# ONE_DOT: the gate and up tiles loaded as one (BLOCK_K, 2 BLOCK_N) operand and multiplied by one tl.dot a K step
# (_gate_up_one_dot), where the default runs two dots on the same x tile. Why: the two dots compile to 64x64x16 MMAs
# that each read x's tile from shared memory again; one dot compiles to half as many 64x128x16 MMAs reading it once,
# with the same 128-bit cp.async loads, shared memory (96 KiB) and registers (119) on sm_90 (python
# tools/sm90_compile.py --op moe_grouped --config '{"ONE_DOT": 1}'). Taken only where both weights have d_model
# contiguous. Off: timed on an H100 (twenty-third session, docs/results/kernels/moe_grouped_tune_h100_2026-12-07j.log)
# it was level, 0.989x / 0.976x the default's saving / inference forward (not profiled: its loads, not its MMAs,
# likely set the K loop's pace).
# Tile loads through tensor descriptors (TMA: each program made its descriptors on the device, every operand whose
# rows are not gathered read by bulk copies) were built and timed in the twenty-fourth session on an H100
# (docs/results/kernels/moe_grouped_tune_h100_2026-12-07p.log, one process, CUDA graphs): every switch lost or was
# level (gate|up alone 0.160 -> 0.172 ms saving forward, down alone 0.163, all five 0.175 forward and 0.443 -> 0.475
# backward; larger tiles or more stages worse). Nsight Compute on the same lease
# (docs/results/kernels/moe_grouped_ncu_h100_2026-12-07q.txt) had the GEMMs' issue slots 21-36% busy and their tensor
# pipes under 40%, with 2-3 programs an SM: latency, not the loads' bandwidth. Taken out in review, as dead weight;
# the code and its tests are in commit c6a680f (archzoo/kernels/_tma.py, ``weight_tma``, the TMA constexprs).
# HW_ROUND: the gate|up epilogue's roundings to x's dtype by the conversion instruction (cvt.rn, to nearest even)
# rather than ``_round``'s integer ops, which the interpreter needs (its casts truncate): the same bits on a GPU
# (test_cuda_hw_round_gives_the_same_bits), 6,647 -> 4,392 SASS instructions (tools/sm90_compile.py --op
# moe_grouped); Nsight Compute had the ALU the busiest pipe of the gate|up (35.5%). On since the twenty-fourth
# session: the saving forward 0.160 -> 0.150 ms, inference 0.144 -> 0.134 on an H100
# (docs/results/kernels/moe_grouped_tune_h100_2026-12-07r.log); Nsight Compute then had the tensor pipe the busiest
# (36%; docs/results/kernels/moe_grouped_ncu_h100_2026-12-07u.txt). Never under the interpreter.
# PDL: every launch of the forward with programmatic dependent launch (``use_pdl``; backward.py's BWD_PDL likewise):
# each lets the next start as its own last programs begin and waits for the one before before it reads anything.
# Timed on an H100 (twenty-fourth session, docs/results/kernels/moe_grouped_tune_h100_2026-12-07t.log): the saving
# forward 0.147 -> 0.150 ms, inference 0.132 -> 0.137 (the multi-wave GEMMs gain nothing from an early launch; the
# waiting programs hold their slots); the backward 0.445 -> 0.441, level. Off, both.
CUDA_CONFIG = dict(BLOCK_M=128, BLOCK_N=64, BLOCK_K=64, num_warps=8, num_stages=3, DOWN_BLOCK_N=64, DOWN_BLOCK_K=64,
                   DOWN_WARPS=8, DOWN_STAGES=3, PLAN_BLOCK=512, COUNTS_TILE=4096, PLAN_WARPS=4,
                   SUM_BLOCK=1024, PERSISTENT=0, FLATTEN=1, ONE_DOT=0, HW_ROUND=1,
                   PDL=0, ROUTE_BLOCK=64)  # fmt: skip
# Under the interpreter (tests): tiny tiles, so several blocks an expert, several tiles a row, masked edges and
# several plan chunks run at small shapes. 16 columns, not 8: the tests' d_model (16-40) and d_ff (24-56) still cut
# into 1-4 tiles with masked edges, and the interpreter, which runs program by program, takes half the time.
INTERPRET_CONFIG = dict(BLOCK_M=4, BLOCK_N=16, BLOCK_K=16, num_warps=1, num_stages=1, DOWN_BLOCK_N=16, DOWN_BLOCK_K=16,
                        DOWN_WARPS=1, DOWN_STAGES=1, PLAN_BLOCK=8, COUNTS_TILE=16, PLAN_WARPS=1,
                        SUM_BLOCK=64, PERSISTENT=0, FLATTEN=1, ONE_DOT=0, HW_ROUND=0,
                        PDL=0, ROUTE_BLOCK=4, SM_COUNT=3)  # fmt: skip
CONFIG_OVERRIDE: dict = {}


@triton.jit
def _rnd(v, DT: tl.constexpr, HW: tl.constexpr):
    """v (fp32) rounded to DT, kept in fp32: by the hardware's conversion (HW: round to nearest even, one cvt each
    way) or by ``_round``'s bits (the interpreter's casts truncate); the same values on a GPU."""
    if HW:
        return v.to(DT).to(tl.float32)
    else:
        return _round(v, DT)


@triton.jit
def _count_kernel(
    e_ptr, counts_ptr,
    N, A, E, s_en, s_ek,
    BLOCK_A: tl.constexpr,
    PDL: tl.constexpr,
):  # fmt: skip
    """counts[c, e]: the assignments of chunk c (a in [c * BLOCK_A, (c + 1) * BLOCK_A)) on expert e."""
    if PDL:  # the next launch may start now; all this kernel reads comes after the one before ends (_pdl.py)
        gdc_launch_dependents()
        gdc_wait()
    c = tl.program_id(0)
    offs_a = c * BLOCK_A + tl.arange(0, BLOCK_A)
    ea = tl.load(e_ptr + (offs_a % N) * s_en + (offs_a // N) * s_ek, mask=offs_a < A, other=-1)  # a = k * N + n
    for e in range(0, E):
        tl.store(counts_ptr + c * E + e, tl.sum((ea == e).to(tl.int32), axis=0))


@triton.jit
def _place_kernel(
    e_ptr, counts_ptr, slot_ptr, bexp_ptr, eblk_ptr,
    N, A, E, n_chunks, n_blocks, s_en, s_ek,
    BLOCK_A: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_M: tl.constexpr,
    RATIO: tl.constexpr, PDL: tl.constexpr,
):  # fmt: skip
    """Program p: slot_assignment for chunk p's assignments, -1 on the padding rows among rows [p * BLOCK_A, ...),
    block_expert for the blocks starting there; program 0 also expert_block (each expert's first block, then the
    used blocks' count). counts has RATIO rows a chunk (the routing launch counts finer chunks, ``route.py``)."""
    if PDL:  # the next launch may start now; all this kernel reads comes after the one before ends (_pdl.py)
        gdc_launch_dependents()
        gdc_wait()
    p = tl.program_id(0)
    offs_e = tl.arange(0, BLOCK_E)
    mask_e = offs_e < E
    load = tl.zeros([BLOCK_E], tl.int32)  # assignments per expert
    before = tl.zeros([BLOCK_E], tl.int32)  # ... in the chunks before chunk p
    for c0 in range(0, n_chunks, BLOCK_C):
        offs_c = c0 + tl.arange(0, BLOCK_C)
        t = tl.load(counts_ptr + offs_c[:, None] * E + offs_e[None, :], mask=(offs_c < n_chunks)[:, None] & mask_e,
                    other=0)  # fmt: skip
        load += tl.sum(t, axis=0)
        before += tl.sum(tl.where(offs_c[:, None] < p * RATIO, t, 0), axis=0)
    padded = (load + BLOCK_M - 1) // BLOCK_M * BLOCK_M  # each expert's rows: a whole number of blocks
    start = tl.cumsum(padded, axis=0) - padded  # (BLOCK_E,) where its segment starts

    # Expert by expert (1-D vectors along the chunk: a (experts x assignments) tile and its scan took twice the
    # registers): chunk p's assignments on expert e go to rows start[e] + before[e] + their rank in the chunk
    # (stable); rows [p * BLOCK_A, ...) outside every segment's assignments are padding or the unused tail (-1);
    # a block belongs to the last expert whose segment starts at or before it and is not empty (-1 past the last)
    offs_a = p * BLOCK_A + tl.arange(0, BLOCK_A)
    ea = tl.load(e_ptr + (offs_a % N) * s_en + (offs_a // N) * s_ek, mask=offs_a < A, other=-1)
    offs_r = p * BLOCK_A + tl.arange(0, BLOCK_A)  # this program's rows (the same numbers as its assignments)
    offs_b = p * (BLOCK_A // BLOCK_M) + tl.arange(0, BLOCK_A // BLOCK_M)  # ... and its blocks
    row = tl.zeros([BLOCK_A], tl.int32)
    placed = tl.zeros([BLOCK_A], tl.int32)
    used = tl.zeros([BLOCK_A], tl.int32)
    blk_e = tl.full([BLOCK_A // BLOCK_M], -1, tl.int32)
    for e in range(0, E):
        sel = offs_e == e
        s_e = tl.sum(tl.where(sel, start, 0), axis=0)
        n_e = tl.sum(tl.where(sel, load, 0), axis=0)
        hit = (ea == e).to(tl.int32)
        row += hit * (s_e + tl.sum(tl.where(sel, before, 0), axis=0) + tl.cumsum(hit, axis=0) - 1)
        placed += hit
        used += ((offs_r >= s_e) & (offs_r < s_e + n_e)).to(tl.int32)
        blk_e = tl.where((offs_b * BLOCK_M >= s_e) & (n_e > 0), e, blk_e)
    tl.store(slot_ptr + row, offs_a, mask=placed > 0)  # an id outside 0..E-1 (or past A) is not placed
    tl.store(slot_ptr + offs_r, tl.full([BLOCK_A], -1, tl.int32), mask=used == 0)
    total = tl.sum(padded, axis=0)
    tl.store(bexp_ptr + offs_b, tl.where(offs_b * BLOCK_M < total, blk_e, -1), mask=offs_b < n_blocks)
    if p == 0:
        tl.store(eblk_ptr + offs_e, start // BLOCK_M, mask=mask_e)
        tl.store(eblk_ptr + E, total // BLOCK_M)


@triton.jit
def _block_and_tile(bexp_ptr, n_cols, SPLIT: tl.constexpr = 1):
    """A GEMM program's (row tile, column tile, the expert of the row tile's plan block or -1): consecutive programs
    take one row tile's column tiles (the same rows, the same expert). A row tile is a plan block, or 1 / SPLIT of
    one (the backward's ``DH_SPLIT``)."""
    pid = tl.program_id(0)
    blk = pid // n_cols
    return blk, pid % n_cols, tl.load(bexp_ptr + blk // SPLIT)


@triton.jit
def _gate_up_two_dots(
    x_rows, g_cols, u_cols, valid, mask_n, D, s_xd, s_gd, s_ud,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, EVEN_K: tl.constexpr,
    NUM_STAGES: tl.constexpr, DOT_F32: tl.constexpr, DOT_PRECISION: tl.constexpr,
):  # fmt: skip
    """The gate and up accumulators (BLOCK_M, BLOCK_N) each, fp32: two tl.dot a K step on x's gathered rows."""
    offs_k = tl.arange(0, BLOCK_K)
    acc_g = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    acc_u = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for k0 in tl.range(0, D, BLOCK_K, num_stages=NUM_STAGES):
        kk = k0 + offs_k
        if EVEN_K:
            xt = tl.load(x_rows + kk[None, :] * s_xd, mask=valid[:, None], other=0.0)  # (BLOCK_M, BLOCK_K)
            gt = tl.load(g_cols + kk[:, None] * s_gd, mask=mask_n[None, :], other=0.0)  # (BLOCK_K, BLOCK_N)
            ut = tl.load(u_cols + kk[:, None] * s_ud, mask=mask_n[None, :], other=0.0)
        else:
            mask_k = kk < D
            xt = tl.load(x_rows + kk[None, :] * s_xd, mask=valid[:, None] & mask_k[None, :], other=0.0)
            gt = tl.load(g_cols + kk[:, None] * s_gd, mask=mask_k[:, None] & mask_n[None, :], other=0.0)
            ut = tl.load(u_cols + kk[:, None] * s_ud, mask=mask_k[:, None] & mask_n[None, :], other=0.0)
        if DOT_F32:
            xt = xt.to(tl.float32)
            gt = gt.to(tl.float32)
            ut = ut.to(tl.float32)
        acc_g = tl.dot(xt, gt, acc_g, input_precision=DOT_PRECISION)
        acc_u = tl.dot(xt, ut, acc_u, input_precision=DOT_PRECISION)
    return acc_g, acc_u


@triton.jit
def _gate_up_one_dot(
    x_rows, g_ptr, u_ptr, valid, pid_n, e64, D, F, s_xd, s_ge, s_gf, s_ue, s_uf,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, EVEN_K: tl.constexpr,
    NUM_STAGES: tl.constexpr, DOT_F32: tl.constexpr, DOT_PRECISION: tl.constexpr,
):  # fmt: skip
    """The same accumulators from one tl.dot a K step: columns [0, BLOCK_N) of the operand are gate's rows of the
    tile, [BLOCK_N, 2 BLOCK_N) up's (d_model contiguous in both), split after the loop."""
    c = tl.arange(0, 2 * BLOCK_N)
    cn = pid_n * BLOCK_N + c % BLOCK_N  # the d_ff row of either weight
    mask_c = cn < F
    cols = tl.where((c < BLOCK_N)[None, :], g_ptr + e64 * s_ge + cn.to(tl.int64)[None, :] * s_gf,
                    u_ptr + e64 * s_ue + cn.to(tl.int64)[None, :] * s_uf)  # (1, 2 BLOCK_N)  # fmt: skip
    offs_k = tl.arange(0, BLOCK_K)
    acc = tl.zeros([BLOCK_M, 2 * BLOCK_N], tl.float32)
    for k0 in tl.range(0, D, BLOCK_K, num_stages=NUM_STAGES):
        kk = k0 + offs_k
        if EVEN_K:
            xt = tl.load(x_rows + kk[None, :] * s_xd, mask=valid[:, None], other=0.0)
            wt = tl.load(cols + kk[:, None], mask=mask_c[None, :], other=0.0)  # (BLOCK_K, 2 BLOCK_N)
        else:
            mask_k = kk < D
            xt = tl.load(x_rows + kk[None, :] * s_xd, mask=valid[:, None] & mask_k[None, :], other=0.0)
            wt = tl.load(cols + kk[:, None], mask=mask_k[:, None] & mask_c[None, :], other=0.0)
        if DOT_F32:
            xt = xt.to(tl.float32)
            wt = wt.to(tl.float32)
        acc = tl.dot(xt, wt, acc, input_precision=DOT_PRECISION)
    return tl.split(tl.permute(tl.reshape(acc, (BLOCK_M, 2, BLOCK_N)), (0, 2, 1)))


@triton.jit
def _gate_up_tile(
    x_ptr, g_ptr, u_ptr, w_ptr, slot_ptr, h_ptr, gs_ptr, us_ptr, blk, pid_n, e,
    N, D, F, s_xn, s_xd, s_ge, s_gf, s_gd, s_ue, s_uf, s_ud, s_wn, s_wk,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, EVEN_K: tl.constexpr,
    NUM_STAGES: tl.constexpr, DOT_F32: tl.constexpr, DOT_PRECISION: tl.constexpr, SAVE: tl.constexpr,
    ONE_DOT: tl.constexpr, HW_ROUND: tl.constexpr,
):  # fmt: skip
    """Row block ``blk`` (expert ``e`` >= 0) x column tile ``pid_n`` of h (and with SAVE of g, u). ONE_DOT: the gate
    and up tiles loaded as one (BLOCK_K, 2 BLOCK_N) operand (its columns' pointers from either weight; both with
    d_model contiguous, s_gd == s_ud == 1, so the loads stay vectorised along K) and multiplied by one tl.dot, so x's
    tile is read once a K step and the MMA is twice as wide. HW_ROUND: the epilogue's roundings by conversion
    (``CUDA_CONFIG``)."""
    DT = h_ptr.dtype.element_ty
    offs_m = blk * BLOCK_M + tl.arange(0, BLOCK_M)
    a = tl.load(slot_ptr + offs_m)  # (BLOCK_M,) assignments, -1 on padding rows
    valid = a >= 0
    n = tl.where(valid, a % N, 0)  # token
    k = tl.where(valid, a // N, 0)  # choice
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < F
    x_rows = x_ptr + n.to(tl.int64)[:, None] * s_xn  # (BLOCK_M, 1)
    e64 = e.to(tl.int64)
    g_cols = g_ptr + e64 * s_ge + offs_n.to(tl.int64)[None, :] * s_gf  # (1, BLOCK_N)
    u_cols = u_ptr + e64 * s_ue + offs_n.to(tl.int64)[None, :] * s_uf
    if ONE_DOT:
        acc_g, acc_u = _gate_up_one_dot(x_rows, g_ptr, u_ptr, valid, pid_n, e64, D, F, s_xd, s_ge, s_gf, s_ue,
                                        s_uf, BLOCK_M, BLOCK_N, BLOCK_K, EVEN_K, NUM_STAGES, DOT_F32,
                                        DOT_PRECISION)  # fmt: skip
    else:
        acc_g, acc_u = _gate_up_two_dots(x_rows, g_cols, u_cols, valid, mask_n, D, s_xd, s_gd, s_ud, BLOCK_M, BLOCK_N,
                                         BLOCK_K, EVEN_K, NUM_STAGES, DOT_F32, DOT_PRECISION)  # fmt: skip
    rows = offs_m.to(tl.int64)[:, None] * F + offs_n[None, :]
    w_raw = tl.load(w_ptr + n * s_wn + k * s_wk, mask=valid, other=0.0).to(tl.float32)  # (BLOCK_M,)
    if HW_ROUND:  # the same roundings by the hardware's conversion to x's dtype (cvt.rn: to nearest even)
        g_x, u_x = acc_g.to(DT), acc_u.to(DT)  # gate and up in x's dtype
        g, u = g_x.to(tl.float32), u_x.to(tl.float32)
        h = ((g / (1.0 + tl.exp(-g))).to(DT).to(tl.float32) * u).to(DT).to(tl.float32)
        wk = w_raw.to(DT).to(tl.float32)
        hw = tl.where(wk[:, None] == 0.0, 0.0, (h * wk[:, None]).to(DT).to(tl.float32))
        tl.store(h_ptr + rows, hw.to(DT), mask=mask_n[None, :])
        if SAVE:
            tl.store(gs_ptr + rows, g_x, mask=mask_n[None, :])
            tl.store(us_ptr + rows, u_x, mask=mask_n[None, :])
    else:
        h = _swiglu(acc_g, acc_u, DT)  # gate, up, SiLU(gate), the product: each rounded to x's dtype
        wk = _round(w_raw, DT)
        hw = tl.where(wk[:, None] == 0.0, 0.0, _round(h * wk[:, None], DT))  # padding, dropped: exactly 0
        tl.store(h_ptr + rows, hw.to(DT), mask=mask_n[None, :])
        if SAVE:  # for the backward: gate and up rounded (padding rows 0)
            tl.store(gs_ptr + rows, _round(acc_g, DT).to(DT), mask=mask_n[None, :])
            tl.store(us_ptr + rows, _round(acc_u, DT).to(DT), mask=mask_n[None, :])


@triton.jit
def _zero_tile(h_ptr, gs_ptr, us_ptr, blk, pid_n, F, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """An unused block's tile of the saved outputs h, g, u: zeros, so that every element of them is defined."""
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rows = (blk * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)[:, None] * F + offs_n[None, :]
    zero = tl.zeros([BLOCK_M, BLOCK_N], h_ptr.dtype.element_ty)
    tl.store(h_ptr + rows, zero, mask=(offs_n < F)[None, :])
    tl.store(gs_ptr + rows, zero, mask=(offs_n < F)[None, :])
    tl.store(us_ptr + rows, zero, mask=(offs_n < F)[None, :])


@triton.jit
def _gate_up_kernel(
    x_ptr, g_ptr, u_ptr, w_ptr, slot_ptr, bexp_ptr, h_ptr, gs_ptr, us_ptr,
    N, D, F, s_xn, s_xd, s_ge, s_gf, s_gd, s_ue, s_uf, s_ud, s_wn, s_wk,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, EVEN_K: tl.constexpr,
    NUM_STAGES: tl.constexpr, DOT_F32: tl.constexpr, DOT_PRECISION: tl.constexpr, SAVE: tl.constexpr,
    ONE_DOT: tl.constexpr, HW_ROUND: tl.constexpr, PDL: tl.constexpr,
):  # fmt: skip
    if PDL:  # the next launch may start now; all this kernel reads comes after the one before ends (_pdl.py)
        gdc_launch_dependents()
        gdc_wait()
    blk, pid_n, e = _block_and_tile(bexp_ptr, tl.cdiv(F, BLOCK_N))
    if e >= 0:
        _gate_up_tile(x_ptr, g_ptr, u_ptr, w_ptr, slot_ptr, h_ptr, gs_ptr, us_ptr, blk, pid_n, e, N, D, F, s_xn, s_xd,
                      s_ge, s_gf, s_gd, s_ue, s_uf, s_ud, s_wn, s_wk, BLOCK_M, BLOCK_N, BLOCK_K, EVEN_K, NUM_STAGES,
                      DOT_F32, DOT_PRECISION, SAVE, ONE_DOT, HW_ROUND)  # fmt: skip
    elif SAVE:  # an unused block of the saved outputs
        _zero_tile(h_ptr, gs_ptr, us_ptr, blk, pid_n, F, BLOCK_M, BLOCK_N)


@triton.jit
def _gate_up_persistent_kernel(
    x_ptr, g_ptr, u_ptr, w_ptr, slot_ptr, bexp_ptr, eblk_ptr, h_ptr, gs_ptr, us_ptr,
    N, D, F, E, n_blocks, s_xn, s_xd, s_ge, s_gf, s_gd, s_ue, s_uf, s_ud, s_wn, s_wk,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, EVEN_K: tl.constexpr,
    NUM_STAGES: tl.constexpr, DOT_F32: tl.constexpr, DOT_PRECISION: tl.constexpr, SAVE: tl.constexpr,
    FLATTEN: tl.constexpr, ONE_DOT: tl.constexpr, HW_ROUND: tl.constexpr, PDL: tl.constexpr,
):  # fmt: skip
    """PERSISTENT: a fixed grid of programs walks the used blocks' (block, column tile) pairs, their count read from
    expert_block[E] on the device, consecutive tiles of a program a grid's width apart (one block's column tiles side
    by side in time, as in ``_gate_up_kernel``); FLATTEN lets Triton pipeline the K loop across the tile boundaries,
    so the next tile's first loads overlap this tile's epilogue (d_model 576 is nine K steps of 64: a tile's own
    pipeline barely fills). With SAVE, a second loop zeroes the unused blocks' tiles of h, g and u (of n_blocks)."""
    if PDL:  # the next launch may start now; all this kernel reads comes after the one before ends (_pdl.py)
        gdc_launch_dependents()
        gdc_wait()
    n_cols = tl.cdiv(F, BLOCK_N)
    n_used = tl.load(eblk_ptr + E) * n_cols
    for tile in tl.range(tl.program_id(0), n_used, tl.num_programs(0), flatten=FLATTEN):
        blk = tile // n_cols
        e = tl.load(bexp_ptr + blk)
        _gate_up_tile(x_ptr, g_ptr, u_ptr, w_ptr, slot_ptr, h_ptr, gs_ptr, us_ptr, blk, tile % n_cols, e, N, D, F,
                      s_xn, s_xd, s_ge, s_gf, s_gd, s_ue, s_uf, s_ud, s_wn, s_wk, BLOCK_M, BLOCK_N, BLOCK_K, EVEN_K,
                      NUM_STAGES, DOT_F32, DOT_PRECISION, SAVE, ONE_DOT, HW_ROUND)  # fmt: skip
    if SAVE:
        for tile in range(n_used + tl.program_id(0), n_blocks * n_cols, tl.num_programs(0)):
            _zero_tile(h_ptr, gs_ptr, us_ptr, tile // n_cols, tile % n_cols, F, BLOCK_M, BLOCK_N)


@triton.jit
def _down_step(acc, h_ptr, d_cols, r_rows, kk, mask_n, F, s_df, EVEN_K: tl.constexpr, DOT_F32: tl.constexpr,
               DOT_PRECISION: tl.constexpr):  # fmt: skip
    """One K step of ``_down_kernel``: acc + h's (BLOCK_M, BLOCK_K) tile at columns kk against the weight's
    (BLOCK_K, BLOCK_N) tile (``d_cols`` its columns' pointers, ``s_df`` its stride along d_ff); zeros past F unless
    EVEN_K."""
    if EVEN_K:
        ht = tl.load(h_ptr + r_rows + kk[None, :])
        dt = tl.load(d_cols + kk[:, None] * s_df, mask=mask_n[None, :], other=0.0)
    else:
        mask_k = kk < F
        ht = tl.load(h_ptr + r_rows + kk[None, :], mask=mask_k[None, :], other=0.0)
        dt = tl.load(d_cols + kk[:, None] * s_df, mask=mask_k[:, None] & mask_n[None, :], other=0.0)
    if DOT_F32:
        ht = ht.to(tl.float32)
        dt = dt.to(tl.float32)
    return tl.dot(ht, dt, acc, input_precision=DOT_PRECISION)


@triton.jit
def _down_kernel(
    h_ptr, h2_ptr, d_ptr, d2_ptr, slot_ptr, bexp_ptr, y_ptr,
    D, F, s_de, s_dd, s_df, s_d2e, s_d2d, s_d2f,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, EVEN_K: tl.constexpr,
    NUM_STAGES: tl.constexpr, DOT_F32: tl.constexpr, DOT_PRECISION: tl.constexpr, TWO: tl.constexpr,
    PDL: tl.constexpr,
):  # fmt: skip
    """y[a] (row a = slot_assignment of each sorted row) = the block's rows of h (R, F) against its expert's W_d
    (E, D, F, any strides) over d_ff, rounded once; with TWO also + h2's rows against W_d2 in the same fp32
    accumulator (the backward's dx = dg W_g + du W_u, ``backward.py``)."""
    if PDL:  # the next launch may start now; all this kernel reads comes after the one before ends (_pdl.py)
        gdc_launch_dependents()
        gdc_wait()
    blk, pid_n, e = _block_and_tile(bexp_ptr, tl.cdiv(D, BLOCK_N))
    if e >= 0:
        DT = y_ptr.dtype.element_ty
        offs_m = blk * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        mask_n = offs_n < D
        offs_k = tl.arange(0, BLOCK_K)
        r_rows = offs_m.to(tl.int64)[:, None] * F  # every row of a used block was written (padding: 0)
        e64 = e.to(tl.int64)
        d_cols = d_ptr + e64 * s_de + offs_n.to(tl.int64)[None, :] * s_dd  # (1, BLOCK_N) of W_d[e]^T
        d2_cols = d2_ptr + e64 * s_d2e + offs_n.to(tl.int64)[None, :] * s_d2d
        acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
        for k0 in tl.range(0, F, BLOCK_K, num_stages=NUM_STAGES):
            kk = k0 + offs_k
            acc = _down_step(acc, h_ptr, d_cols, r_rows, kk, mask_n, F, s_df, EVEN_K, DOT_F32, DOT_PRECISION)
            if TWO:
                acc = _down_step(acc, h2_ptr, d2_cols, r_rows, kk, mask_n, F, s_d2f, EVEN_K, DOT_F32, DOT_PRECISION)
        a = tl.load(slot_ptr + offs_m)
        y_rows = y_ptr + a.to(tl.int64)[:, None] * D
        tl.store(y_rows + offs_n[None, :], _round(acc, DT).to(DT), mask=(a >= 0)[:, None] & mask_n[None, :])


@triton.jit
def _sum_kernel(
    y_ptr, out_ptr,
    ND,
    TOP_K: tl.constexpr, BLOCK: tl.constexpr,
    PDL: tl.constexpr,
):  # fmt: skip
    """out = the K choices' outputs y (K, N * D) summed in fp32 in choice order, rounded once (torch's sum over K of
    the reference; its strided reduction took 12 us at the students' shape on an H100, this about half)."""
    if PDL:  # the next launch may start now; all this kernel reads comes after the one before ends (_pdl.py)
        gdc_launch_dependents()
        gdc_wait()
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < ND
    acc = tl.zeros([BLOCK], tl.float32)
    for k in tl.static_range(TOP_K):
        acc += tl.load(y_ptr + k * ND + offs, mask=mask, other=0.0).to(tl.float32)
    DT = out_ptr.dtype.element_ty
    tl.store(out_ptr + offs, _round(acc, DT).to(DT), mask=mask)


# A process started with ARCHZOO_MOE_GROUPED_CONFIG='{"PDL": 1, "SORTED_DW": 1}' (keys of this CUDA_CONFIG or
# backward.py's, integer values) runs the kernels on CUDA with those settings over the defaults (CONFIG_OVERRIDE,
# the tuning tools' hook, still wins): how a benchmark times a setting before it becomes the default. Read once.
CONFIG_ENV = "ARCHZOO_MOE_GROUPED_CONFIG"


def config_from_env(text: str | None) -> dict:
    """CONFIG_ENV's value -> its settings ({} when unset or empty); ValueError naming what is wrong."""
    cfg = json_settings(text, CONFIG_ENV, "MoE grouped settings", set(CUDA_CONFIG) | set(BACKWARD_CONFIG))
    wrong = {k: v for k, v in cfg.items() if isinstance(v, bool) or not isinstance(v, int) or v < 0}
    if wrong:
        raise ValueError(f"{CONFIG_ENV}: values must be integers >= 0; got {wrong}")
    return cfg


@functools.cache
def env_config() -> dict:
    return config_from_env(os.environ.get(CONFIG_ENV))


def _config(device: torch.device) -> dict:
    if device.type != "cuda":
        return {**INTERPRET_CONFIG, **CONFIG_OVERRIDE}
    return {**CUDA_CONFIG, **{k: v for k, v in env_config().items() if k in CUDA_CONFIG}, **CONFIG_OVERRIDE}


def use_pdl(device: torch.device) -> bool:
    """Whether the kernels launch with programmatic dependent launch (``PDL`` in CUDA_CONFIG, and ``_pdl``'s rule):
    each lets the next launch start as its last programs begin, and reads nothing before the launch before it
    ends (``gdc_wait`` first), so the launches of a forward (or backward) overlap their ends and starts."""
    return bool(_config(device)["PDL"]) and pdl_enabled(device)


def plan_sizes(N: int, K: int, E: int, device: torch.device) -> dict:
    """The plan's static sizes: ``rows`` R (sorted rows, padding included: N * K + E * (BLOCK_M - 1) rounded up to
    BLOCK_M), ``blocks`` R / BLOCK_M, ``block_a`` assignments (and rows) a plan program takes (PLAN_BLOCK, at least
    BLOCK_M), ``chunks`` (count programs), ``place`` (place programs: they cover R rows), ``block_e`` and
    ``block_c`` (the tile of counts a place program sums at a time: at most COUNTS_TILE elements, or 2 chunks);
    ``route_block`` (ROUTE_BLOCK, at most block_a: assignments a routing program takes, ``route.py``),
    ``route_chunks`` (its programs, each a row of counts) and ``block_c_route`` (block_c for those rows)."""
    cfg = _config(device)
    bm = cfg["BLOCK_M"]
    block_a = max(bm, cfg["PLAN_BLOCK"])
    if block_a & (block_a - 1) or bm & (bm - 1):
        raise ValueError(f"moe_grouped: BLOCK_M {bm} and PLAN_BLOCK {block_a} must be powers of 2")
    block_e = max(2, next_pow2(E))
    A = N * K
    rows = cdiv(A + E * (bm - 1), bm) * bm
    chunks = cdiv(A, block_a)
    tile = max(2, prev_pow2(max(1, cfg["COUNTS_TILE"] // block_e)))
    block_c = min(max(2, next_pow2(chunks)), tile)
    route_block = min(block_a, cfg["ROUTE_BLOCK"])
    if route_block & (route_block - 1):
        raise ValueError(f"moe_grouped: ROUTE_BLOCK {route_block} must be a power of 2")
    route_chunks = cdiv(A, route_block)
    return dict(rows=rows, blocks=rows // bm, block_a=block_a, chunks=chunks, place=cdiv(rows, block_a),
                block_e=block_e, block_c=block_c, route_block=route_block, route_chunks=route_chunks,
                block_c_route=min(max(2, next_pow2(route_chunks)), tile))  # fmt: skip


def plan(
    top_e: torch.Tensor, n_experts: int, counts: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """top_e (N, K) int32 / int64 -> (slot_assignment (R,) int32, block_expert (R / BLOCK_M,) int32, expert_block
    (E + 1,) int32): the two plan launches (module docstring). Assignment a = k * N + n; -1 on padding rows and
    unused blocks; expert e's blocks are expert_block[e] .. expert_block[e + 1] - 1 (none for an idle expert).
    ``counts``: the count launch's output made elsewhere (``route.route_and_count``, for these top_e and this
    configuration's chunks): only the place launch runs."""
    N, K = top_e.shape
    cfg = _config(top_e.device)
    s = plan_sizes(N, K, n_experts, top_e.device)
    dev = top_e.get_device() if top_e.is_cuda else 0
    given = counts is not None
    ratio = s["block_a"] // s["route_block"] if given else 1  # count rows a chunk
    rows = s["route_chunks"] if given else s["chunks"]
    if given and tuple(counts.shape) != (rows, n_experts):
        raise ValueError(f"counts: shape {tuple(counts.shape)}, where the routing launch's chunks x experts are "
                         f"{(rows, n_experts)}")  # fmt: skip
    if not given:
        counts = torch.empty((s["chunks"], n_experts), device=top_e.device, dtype=torch.int32)
    slot_assignment = torch.empty(s["place"] * s["block_a"], device=top_e.device, dtype=torch.int32)
    block_expert = torch.empty(s["blocks"], device=top_e.device, dtype=torch.int32)
    expert_block = torch.empty(n_experts + 1, device=top_e.device, dtype=torch.int32)
    pdl = use_pdl(top_e.device)
    if not given:
        launch(_count_kernel, (s["chunks"],), (top_e, counts), (N, N * K, n_experts, *top_e.stride()),
               (s["block_a"], pdl), cfg["PLAN_WARPS"], dev, pdl)  # fmt: skip
    launch(_place_kernel, (s["place"],), (top_e, counts, slot_assignment, block_expert, expert_block),
           (N, N * K, n_experts, rows, s["blocks"], *top_e.stride()),
           (s["block_a"], s["block_e"], s["block_c_route"] if given else s["block_c"], cfg["BLOCK_M"], ratio, pdl),
           cfg["PLAN_WARPS"], dev, pdl)  # fmt: skip
    return slot_assignment[: s["rows"]], block_expert, expert_block


def moe_grouped_experts(
    x: torch.Tensor, gate_w: torch.Tensor, up_w: torch.Tensor, down_w: torch.Tensor, top_e: torch.Tensor,
    top_w: torch.Tensor, save: bool = False, counts: torch.Tensor | None = None,
) -> torch.Tensor | tuple[torch.Tensor, ...]:  # fmt: skip
    """The plan, the two GEMMs and the sum over the choices (the dispatcher checked the arguments; N * K >= 1,
    fp16 / bf16 / fp32) -> out (N, D). ``save`` (a forward that the backward follows): -> (out, h, g, u,
    slot_assignment, block_expert, expert_block), h (R, F) the routed h x w that down took, g and u (R, F) gate and
    up rounded to x's dtype, by sorted row (padding rows 0), and the plan (``backward.py``). ``counts``: the plan's
    counts from ``route.route_and_count`` (``plan``)."""
    N, D = x.shape
    E, F, _ = gate_w.shape
    K = top_e.shape[1]
    cfg = _config(x.device)
    dev = x.get_device() if x.is_cuda else 0
    bm = cfg["BLOCK_M"]
    slot_assignment, block_expert, expert_block = plan(top_e, E, counts)
    pdl = use_pdl(x.device)
    R = slot_assignment.shape[0]
    # Triton's interpreter computes tl.dot of bf16 operands wrongly: there, and only there, operands go as fp32
    dot_f32 = x.dtype == torch.float32 or x.device.type != "cuda"
    common = (cfg["num_stages"], dot_f32, "ieee" if dot_f32 else None)
    h = torch.empty((R, F), device=x.device, dtype=x.dtype)
    gs, us = (torch.empty_like(h), torch.empty_like(h)) if save else (h, h)  # unused pointers when not saving
    bn, bk = cfg["BLOCK_N"], cfg["BLOCK_K"]
    strides = (*x.stride(), *gate_w.stride(), *up_w.stride(), *top_w.stride())
    tiles = (R // bm) * cdiv(F, bn)  # the bound: used and unused blocks
    one_dot = bool(cfg["ONE_DOT"]) and gate_w.stride(2) == 1 and up_w.stride(2) == 1  # its loads assume it
    if cfg["ONE_DOT"] and not one_dot:
        once("moe_grouped_one_dot", "moe_grouped_experts: ONE_DOT asked, but the gate / up weights' d_model is "
             f"strided ({gate_w.stride(2)}, {up_w.stride(2)}): the gate|up runs two dots")  # fmt: skip
    hw_round = bool(cfg["HW_ROUND"]) and not triton_interpreting()  # the interpreter's casts truncate
    if cfg["PERSISTENT"]:  # a fixed grid over the used blocks' tiles (CUDA_CONFIG says why it is off)
        sms = cfg.get("SM_COUNT") or (sm_count(dev) if x.is_cuda else 1)  # SM_COUNT: the interpreter's pretend GPU
        launch(_gate_up_persistent_kernel, (min(tiles, sms * cfg["PERSISTENT"]),),
               (x, gate_w, up_w, top_w, slot_assignment, block_expert, expert_block, h, gs, us),
               (N, D, F, E, R // bm, *strides),
               (bm, bn, bk, D % bk == 0, *common, save, bool(cfg["FLATTEN"]), one_dot, hw_round, pdl),
               cfg["num_warps"], dev, pdl)  # fmt: skip
    else:
        launch(_gate_up_kernel, (tiles,), (x, gate_w, up_w, top_w, slot_assignment, block_expert, h, gs, us),
               (N, D, F, *strides), (bm, bn, bk, D % bk == 0, *common, save, one_dot, hw_round, pdl),
               cfg["num_warps"], dev, pdl)  # fmt: skip
    y = torch.empty((K * N, D), device=x.device, dtype=x.dtype)  # each assignment's output, row a = k * N + n
    bn, bk = cfg["DOWN_BLOCK_N"], cfg["DOWN_BLOCK_K"]
    common = (cfg["DOWN_STAGES"], dot_f32, "ieee" if dot_f32 else None)
    launch(_down_kernel, ((R // bm) * cdiv(D, bn),), (h, h, down_w, down_w, slot_assignment, block_expert, y),
           (D, F, *down_w.stride(), *down_w.stride()), (bm, bn, bk, F % bk == 0, *common, False, pdl),
           cfg["DOWN_WARPS"], dev, pdl)  # fmt: skip
    if K == 1:
        out = y
    else:
        out = torch.empty((N, D), device=x.device, dtype=x.dtype)
        launch(_sum_kernel, (cdiv(N * D, cfg["SUM_BLOCK"]),), (y, out), (N * D,), (K, cfg["SUM_BLOCK"], pdl),
               cfg["PLAN_WARPS"], dev, pdl)  # fmt: skip
    return (out, h, gs, us, slot_assignment, block_expert, expert_block) if save else out


__all__ = [
    "CONFIG_ENV",
    "CONFIG_OVERRIDE",
    "CUDA_CONFIG",
    "config_from_env",
    "INTERPRET_CONFIG",
    "moe_grouped_experts",
    "plan",
    "plan_sizes",
]
