"""The persistent layer-stack kernel of ``persistent_step_bench.py`` with each stage's weights loaded one stage ahead,
held in registers across the barrier. (archzoo's PDL chain loads early too: the decode GEMV reads its first weight
tile, or asks L2 for its slice, before ``gdc_wait``; but only once the kernel is resident beside the one before.)

A program takes one row tile a stage (tile ``pid``; programs without one idle through it; tiles beyond the grid are
looped over, loading inline) and holds its next stage's tile in registers, whole along K (K padded to a power of
two): Q|K|V's before the layer (loaded at the end of the previous layer's down stage), O's before attention,
gate|up's after O, down's after gate|up. By default the tile is loaded before the barrier; with ``split_sync`` after
this program arrives and before it waits, so the arrival's release fence does not wait for the tile's loads. Each
stage then reads only its activation vector (x, o or h, from L2) before its FMAs. Attention runs as (head, split)
tasks over the cache, their partials merged by every program as O begins (at position 255 in tiles of 64: 36 tasks
where the plain form has 9, each a quarter as long). The stages, roundings, layouts and scratch vectors are
``persistent_step_bench``'s; so is the reference.

A stalled barrier (a grid larger than what is resident) sets the flag and goes on after MAX_SPIN polls, so a run
that cannot complete ends in seconds with the flag set, its output undefined.
"""

from __future__ import annotations

import os
import sys

import torch
import triton
import triton.language as tl

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _persistent_stages import (  # noqa: E402
    _attention_stage,
    _gate_up_tile,
    _normed,
    _qkv_tile,
    _vec,
    _w_tile,
    launch_stack,
    merged_attention,
    residual_stage_ahead,
)
from grid_sync_bench import grid_arrive, grid_sync, grid_wait  # noqa: E402

MAX_SPIN = 1 << 16  # polls before a barrier gives up: 150 of them a step, so a stall ends in seconds


@triton.jit
def _arrive_early(counter_ptr, SPLIT_SYNC: tl.constexpr):
    """With ``SPLIT_SYNC``, arrive at the coming barrier before the next stage's weight tile is loaded: the arrival's
    release fence then waits for this stage's stores alone, not for the tile's loads from HBM, which run while the
    other programs arrive. Without it the tile is loaded before the whole barrier."""
    if SPLIT_SYNC:
        grid_arrive(counter_ptr)


@triton.jit
def _meet(counter_ptr, target, flag_ptr, ARRIVED: tl.constexpr, POLL_LOAD: tl.constexpr, MAX_SPIN: tl.constexpr):
    """The rest of the barrier: the wait alone after ``_arrive_early``, else the whole barrier."""
    if ARRIVED:
        grid_wait(counter_ptr, target, flag_ptr, POLL_LOAD, MAX_SPIN)
    else:
        grid_sync(counter_ptr, target, flag_ptr, POLL_LOAD, MAX_SPIN)


@triton.jit
def _prefetch_stack_kernel(
    x_ptr, n1_ptr, wqkv_ptr, kc_ptr, vc_ptr, wo_ptr, n2_ptr, wgu_ptr, wd_ptr, q_ptr, o_ptr, h_ptr, cos_ptr, sin_ptr,
    counter_ptr, flag_ptr, n_layers, pos, T_max, eps, scale,
    D: tl.constexpr, H: tl.constexpr, HKV: tl.constexpr, HD: tl.constexpr, F: tl.constexpr, ROWS_QKV: tl.constexpr,
    ROWS_D: tl.constexpr, ROWS_GU: tl.constexpr, DP: tl.constexpr, AP: tl.constexpr, FP: tl.constexpr,
    BLOCK_T: tl.constexpr, SPLITS: tl.constexpr, MAX_SPIN: tl.constexpr, SPLIT_SYNC: tl.constexpr = False,
    POLL_LOAD: tl.constexpr = True,
):  # fmt: skip
    DT = x_ptr.dtype.element_ty
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    A: tl.constexpr = H * HD  # attention's output width (O's K)
    NQKV: tl.constexpr = (H + 2 * HKV) * HD
    n_qkv: tl.constexpr = NQKV // ROWS_QKV
    n_d: tl.constexpr = D // ROWS_D
    n_gu: tl.constexpr = 2 * F // ROWS_GU
    syncs = 0
    wq = _w_tile(wqkv_ptr, pid, n_qkv, ROWS_QKV, D, DP)  # layer 0's Q|K|V tile
    for layer in range(0, n_layers):
        kc = kc_ptr + layer * (HKV * T_max * HD)
        vc = vc_ptr + layer * (HKV * T_max * HD)
        # 1. Q|K|V with RoPE and the cache write; O's tile loads meanwhile
        xn = _normed(x_ptr, n1_ptr + layer * D, eps, DT, D, DP)
        if pid < n_qkv:
            _qkv_tile(wq, pid, xn, q_ptr, kc, vc, cos_ptr, sin_ptr, pos, T_max, DT, H, HKV, HD, ROWS_QKV)
        for t in tl.range(pid + nprog, n_qkv, nprog):
            w = _w_tile(wqkv_ptr + layer * (NQKV * D), t, n_qkv, ROWS_QKV, D, DP)
            _qkv_tile(w, t, xn, q_ptr, kc, vc, cos_ptr, sin_ptr, pos, T_max, DT, H, HKV, HD, ROWS_QKV)
        syncs += 1
        _arrive_early(counter_ptr, SPLIT_SYNC)
        wo = _w_tile(wo_ptr + layer * (D * A), pid, n_d, ROWS_D, A, AP)
        _meet(counter_ptr, syncs * nprog, flag_ptr, SPLIT_SYNC, POLL_LOAD, MAX_SPIN)
        # 2. attention
        _attention_stage(q_ptr, kc, vc, o_ptr, pid, nprog, pos, T_max, scale, DT, H, HKV, HD, BLOCK_T, SPLITS)
        syncs += 1
        grid_sync(counter_ptr, syncs * nprog, flag_ptr, POLL_LOAD, MAX_SPIN)
        # 3. O with the residual; gate|up's tile loads meanwhile
        residual_stage_ahead(
            wo,
            wo_ptr + layer * (D * A),
            merged_attention(o_ptr, DT, H, HD, SPLITS, AP),
            x_ptr,
            pid,
            nprog,
            n_d,
            DT,
            ROWS_D,
            A,
            AP,
        )
        syncs += 1
        _arrive_early(counter_ptr, SPLIT_SYNC)
        wgu = _w_tile(wgu_ptr + layer * (2 * F * D), pid, n_gu, ROWS_GU, D, DP)
        _meet(counter_ptr, syncs * nprog, flag_ptr, SPLIT_SYNC, POLL_LOAD, MAX_SPIN)
        # 4. gate|up with the norm and SwiGLU; down's tile loads meanwhile
        xn = _normed(x_ptr, n2_ptr + layer * D, eps, DT, D, DP)
        if pid < n_gu:
            _gate_up_tile(wgu, pid, xn, h_ptr, DT, ROWS_GU)
        for t in tl.range(pid + nprog, n_gu, nprog):
            _gate_up_tile(_w_tile(wgu_ptr + layer * (2 * F * D), t, n_gu, ROWS_GU, D, DP), t, xn, h_ptr, DT, ROWS_GU)
        syncs += 1
        _arrive_early(counter_ptr, SPLIT_SYNC)
        wd = _w_tile(wd_ptr + layer * (D * F), pid, n_d, ROWS_D, F, FP)
        _meet(counter_ptr, syncs * nprog, flag_ptr, SPLIT_SYNC, POLL_LOAD, MAX_SPIN)
        # 5. down with the residual; the next layer's Q|K|V tile loads meanwhile (none after the last layer)
        residual_stage_ahead(
            wd, wd_ptr + layer * (D * F), _vec(h_ptr, F, FP), x_ptr, pid, nprog, n_d, DT, ROWS_D, F, FP
        )
        last = layer + 1 >= n_layers
        syncs += 1
        _arrive_early(counter_ptr, SPLIT_SYNC)
        wq = _w_tile(wqkv_ptr + (layer + 1) * (NQKV * D), pid + last * n_qkv, n_qkv, ROWS_QKV, D, DP)  # none: masked
        _meet(counter_ptr, syncs * nprog, flag_ptr, SPLIT_SYNC, POLL_LOAD, MAX_SPIN)


def rows_for(n: int, programs: int, at_least: int = 2) -> int:
    """The fewest rows a tile (a power of two, at least ``at_least``) for which n rows make at most ``programs``
    tiles: one tile a program, so each is prefetched."""
    r = at_least
    while n // r > programs and r < n:
        r *= 2
    return r


def run_prefetch(st: dict, prep: dict, H: int, HKV: int, pos: int, eps: float, programs: int,
                 rows: tuple[int, int, int] | None = None, block_t: int = 64, splits: int | None = None,
                 num_warps: int = 8, max_spin: int = MAX_SPIN, split_sync: bool = False, poll_load: bool = True,
                 ) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """One launch over the stack on ``persistent_step_bench.prepare``'s tensors: (x after it, flag). ``rows``: the
    Q|K|V, O / down and gate|up rows a tile (default: one tile a program, ``rows_for``); ``splits``: attention's
    splits of the cache a head (default: as many as its tiles of ``block_t`` positions, within the programs), merged
    by every program at the start of O; ``split_sync``: arrive at each barrier before loading the next stage's tile
    (``_arrive_early``), not after; ``poll_load``: wait by volatile loads of the counter (else by acquire atomics:
    ``grid_sync_bench`` times both)."""
    L, NQKV, D = prep["wqkv"].shape
    HD = NQKV // (H + 2 * HKV)
    F, T_max = st["wd"].shape[2], prep["kc"].shape[2]
    rq, rd, rg = rows or (min(rows_for(NQKV, programs), HD), rows_for(D, programs), rows_for(2 * F, programs))
    if HD % rq or rq % 2 or (2 * F) % rg or rg % 2 or D % rd or H % HKV or not 0 <= pos < T_max:
        raise ValueError(
            f"run_prefetch: Q|K|V rows {rq} (even) must divide head_dim {HD}, gate|up rows {rg} (even) 2F, O / down "
            f"rows {rd} D = {D}, HKV {HKV} H = {H}, and 0 <= pos {pos} < T_max {T_max}"
        )
    p2 = triton.next_power_of_2
    if splits is None:
        splits = max(1, min(programs // H, triton.cdiv(pos + 1, block_t)))
    consts = dict(ROWS_QKV=rq, ROWS_D=rd, ROWS_GU=rg, DP=p2(D), AP=p2(H * HD), FP=p2(F), BLOCK_T=block_t,
                  SPLITS=splits, MAX_SPIN=max_spin, SPLIT_SYNC=split_sync,
                  POLL_LOAD=poll_load)  # fmt: skip
    return launch_stack(_prefetch_stack_kernel, st, prep, H, HKV, pos, eps, programs, consts, num_warps)
