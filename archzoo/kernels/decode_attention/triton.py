"""Decode attention in Triton: flash-decoding (split-K over the cache length), GQA by head groups.

Two launches per call with several splits (one with ``FIXUP``):

- ``_split_kernel``, grid (B, H_kv, n_splits). Program (b, j, s) owns positions [s * chunk, (s + 1) * chunk)
  of row b's cache and *all* G = H / H_kv query heads of KV head j: it loads each (BLOCK_T, D) tile of K and V
  once and multiplies it with the group's (G, D) queries (``tl.dot``, G padded to 16), keeping an online
  softmax (running max m, sum l, accumulator acc) in fp32. It walks only up to the row's valid length, so a
  program whose chunk starts at or beyond it reads nothing and writes nothing; positions at or past the length
  are masked out of every load (they may hold garbage or NaN). It writes its (m, l, acc) to a workspace.
  With one split (``SINGLE``) it normalises and writes the output itself.
- The merge of the splits' partials (``_combine_head``: the usual rescaling by exp(m_s - max m) over the splits
  that ran, whose count follows from the row's length, read on the device; zeros for a row that saw nothing):
  - ``_combine_kernel``, grid (B, H), a second launch (the default).
  - ``FIXUP``: by the last split program of each (b, j) to finish, as split-K GEMMs do their
    "fixup". After its stores, each program adds 1 to the group's counter (an atomic with release and acquire
    semantics, GPU scope); the one that draws the last ticket merges the group's G heads, reading the others'
    partials through L2, and sets the counter back to zero (``kernels/_fixup.py``: one buffer per device, zero
    again for the next layer and the next replay of a captured step). Why: at batch 1 a step is launch-bound
    (30 layers of 6 kernels: docs/decode.md), and the merge's own launch looked dearer than its work. The
    result does not depend on which program is last: the merge reads every partial from memory in split order,
    with the same code as the second kernel, so both do the same arithmetic (the same bits under the interpreter and,
    in the sixth session, on an H100; on 2026-12-06, after ``BALANCE``, the H100's 8,192-position case differed from
    the two-launch form's bits, each call still giving the same ones). Measured on an H100 with PDL
    (2026-12-05, the teacher's step at batch 1, ``tools/decode_profile.py --attention kernel,kernel-2launch``):
    the split kernel with the fixup took 5.2 us a layer, against 2.7 + 1.6 us for the two launches (the
    ticket's fence and atomic, and one program merging the group's heads in turn, sit on the critical path;
    the combine kernel's launch overlaps under PDL), and the step 0.629 ms against 0.601: so it is off.

The number of splits is planned on the host from the shape alone (T_max, B, H_kv, the SM count), never from
``lengths``: no ``.item()``, no synchronisation, so a call can be captured in a CUDA graph; lengths are read
by the kernels. ``lengths`` beyond T_max are clamped to it, negative ones count as 0.

The ring variant (``decode_attention_ring``) is the same kernel with ``RING``: slot t holds position
p = last - ((last - t) mod slots), last = lengths[b] - 1, visible when p > last - window (and written: t <
lengths[b]). It reads min(lengths[b], slots) slots.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._fixup import COUNTERS as _COUNTERS  # noqa: F401 (tests read it)
from .._fixup import counters as _counters
from .._launch import launch
from .._pdl import gdc_launch_dependents, gdc_wait, pdl_enabled
from .._sizes import cdiv as _cdiv
from .._sizes import next_pow2 as _next_pow2
from .._sizes import sm_count as _sm_count
from ._checks import check_decode, check_one_query, check_window

LOG2E = 1.4426950408889634

# Sizes on CUDA (not yet tuned on a GPU): BLOCK_T positions per tile, warps, and the split policy: aim for
# PROGRAMS_PER_SM programs per SM over (B, H_kv, splits), at most MAX_SPLITS splits of at least one tile.
CUDA_CONFIG = dict(
    BLOCK_T=64, num_warps=4, PROGRAMS_PER_SM=4, MAX_SPLITS=128, FIXUP=False, BALANCE=True, MIN_SPLIT_TILES=1,
    SINGLE_MAX_T=0,
)  # fmt: skip
# Under the interpreter (tests): tiny tiles and a pretend GPU of 2 "SMs", so several splits are exercised.
INTERPRET_CONFIG = dict(
    BLOCK_T=16, num_warps=1, PROGRAMS_PER_SM=4, MAX_SPLITS=16, SM_COUNT=2, FIXUP=False, BALANCE=True,
    MIN_SPLIT_TILES=1, SINGLE_MAX_T=0,
)  # fmt: skip
# SINGLE_MAX_T: a buffer of at most this many positions (T_max, the captured step's cache) takes one split of one
# tile covering it (BLOCK_T = next_pow2(T_max)): one program a (row, KV head) that loads its whole K and V at once,
# normalises its own output and needs no merge. 0 (the default): off until timed. Why: with a short cache the
# step's attention is two launches of latency, not bytes (H100, teacher at batch 16 x 128, a 256-position buffer:
# split 3.9 us + merge 1.9 us a layer for 0.8 MB, docs/results/decode/profile_h100_stepprof_b1_16_64.log), and the
# one-split form tried before (MIN_SPLIT_TILES 4: four 64-position tiles in a loop) paid the loop's round trips
# what it saved on the merge (docs/decode.md). ``tools/decode_profile.py --attention kernel,kernel-single``
# times it (256).
# MIN_SPLIT_TILES: at least this many tiles of T_max a split. At batch 1 with a short cache (the teacher's step at
# 128-token prompts: a 256-position buffer, 4 splits of one tile) the split kernel took 2.7 us and the merge's
# launch 1.6 us a layer on an H100 (docs/decode.md): one split of 4 tiles needs no merge (the program normalises
# its own output). 1 (every tile its own split where programs are few) until a GPU has timed 4 beside it:
# ``tools/decode_profile.py --attention kernel,kernel-long-splits``.
# FIXUP: the splits' merge done by the last split program of each (row, KV head) (one launch) instead of by
# _combine_kernel (two; the default: measured faster, see the docstring; in the step on an H100 too, twenty-second
# session: the teacher 0.865 -> 0.945 ms at batch 16, 1.196 -> 1.198 at 64, MQA 0.835 -> 0.945 and 1.093 -> 1.207,
# docs/results/decode/attnfixup_h100_2026-12-07h.log). Overrides of either (tests, tuners);
# "N_SPLITS" forces the split count. Plans are keyed on CONFIG_OVERRIDE.
# BALANCE: each row's splits share that row's valid length (whole tiles of it), not T_max: the split count is
# planned on the host from T_max (no read of the lengths), so with a cache half full the last splits of every
# row read nothing and the first do all the work (see row_chunk). Off: the plan's chunk, as before.
CONFIG_OVERRIDE: dict = {}


@triton.jit
def row_chunk(n_valid, chunk, n_splits, BLOCK_T: tl.constexpr, BALANCE: tl.constexpr):
    """Positions per split of a row that reads ``n_valid`` positions (slots for a ring). With ``BALANCE`` the
    row's own length over the ``n_splits`` splits in whole tiles (at least one tile): at batch 64 with 4,096 of
    8,192 positions valid and 3 splits, ``chunk`` (planned from T_max) gave 2,752 positions to split 0, 1,344
    to split 1 and none to split 2, where balanced splits read 1,408 / 1,408 / 1,280. Else the plan's ``chunk``.
    The split kernel and the merge call it alike, so they agree on which splits wrote partials."""
    if BALANCE:
        per = tl.cdiv(tl.cdiv(n_valid, n_splits), BLOCK_T) * BLOCK_T
        return tl.maximum(per, BLOCK_T)
    return chunk


WIDE_BLOCK_T = 32  # positions per tile for head dims in (256, 512]


@triton.jit
def _split_kernel(
    q_ptr, k_ptr, v_ptr, len_ptr, out_ptr, ml_ptr, acc_ptr, cnt_ptr,
    H, G, T, D, DV, chunk, window,
    s_qb, s_qh, s_qd,
    s_kb, s_kh, s_kt, s_kd,
    s_vb, s_vh, s_vt, s_vd,
    s_ob, s_oh, s_od,
    QK_SCALE: tl.constexpr, RING: tl.constexpr, SINGLE: tl.constexpr, FIXUP: tl.constexpr,
    DOT_PRECISION: tl.constexpr, DOT_F32: tl.constexpr,
    BLOCK_G: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
    BLOCK_S: tl.constexpr, PDL: tl.constexpr, BALANCE: tl.constexpr, NQ: tl.constexpr,
    LOOP_STAGES: tl.constexpr = None,
):  # fmt: skip
    if PDL:  # q, the caches and the lengths are the step's earlier kernels' outputs: wait before any load
        gdc_launch_dependents()
        gdc_wait()
    b = tl.program_id(0).to(tl.int64)
    kv = tl.program_id(1)
    sp = tl.program_id(2)
    n_splits = tl.num_programs(2)
    length = tl.maximum(tl.load(len_ptr + b).to(tl.int32), 0)
    n_valid = tl.minimum(length, T)  # positions (ring: slots) that may be read
    last = length - 1
    chunk = row_chunk(n_valid, chunk, n_splits, BLOCK_T, BALANCE)
    start = sp * chunk
    end = tl.minimum(start + chunk, n_valid)

    offs_g = tl.arange(0, BLOCK_G)
    mask_g = offs_g < G
    heads = kv * G + offs_g
    if NQ > 1:  # NQ query tokens a row, folded into the group (head h, token i -> h * NQ + i): token i's bound
        q_end = length - (NQ - 1) + offs_g % NQ  # (BLOCK_G,) positions < q_end are visible to that query
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < D
    offs_dv = tl.arange(0, BLOCK_DV)
    mask_dv = offs_dv < DV
    q = tl.load(
        q_ptr + b * s_qb + heads[:, None] * s_qh + offs_d[None, :] * s_qd,
        mask=mask_g[:, None] & mask_d[None, :],
        other=0.0,
    )  # (BLOCK_G, BLOCK_D)
    if DOT_F32:
        q = q.to(tl.float32)
    k_base = k_ptr + b * s_kb + kv * s_kh
    v_base = v_ptr + b * s_vb + kv * s_vh

    m_i = tl.full([BLOCK_G], float("-inf"), tl.float32)  # running max of the scores, in log2 units
    l_i = tl.zeros([BLOCK_G], tl.float32)
    acc = tl.zeros([BLOCK_G, BLOCK_DV], tl.float32)
    # empty when the chunk starts at or past the row's length. LOOP_STAGES: None, Triton's software pipelining; 1 for
    # a plan of one tile a program (SINGLE_MAX_T), whose one iteration has nothing to overlap (no staging buffers)
    for t0 in tl.range(start, end, BLOCK_T, num_stages=LOOP_STAGES):
        offs_t = t0 + tl.arange(0, BLOCK_T)
        vis = offs_t < end
        if RING:
            pos = last - (last - offs_t) % T  # last >= offs_t wherever vis holds
            vis = vis & (pos > last - window)
        k = tl.load(k_base + offs_t[:, None] * s_kt + offs_d[None, :] * s_kd, mask=vis[:, None] & mask_d[None, :],
                    other=0.0)  # fmt: skip
        if DOT_F32:
            k = k.to(tl.float32)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * QK_SCALE  # (BLOCK_G, BLOCK_T)
        if NQ > 1:
            s = tl.where(vis[None, :] & (offs_t[None, :] < q_end[:, None]), s, float("-inf"))
        else:
            s = tl.where(vis[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # a ring tile may be wholly outside the window
        alpha = tl.exp2(m_i - m_safe)
        p = tl.exp2(s - m_safe[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        v = tl.load(v_base + offs_t[:, None] * s_vt + offs_dv[None, :] * s_vd, mask=vis[:, None] & mask_dv[None, :],
                    other=0.0)  # fmt: skip
        pv = p.to(v.dtype)  # flash attention's rounding of p to the inputs' dtype
        if DOT_F32:
            pv, v = pv.to(tl.float32), v.to(tl.float32)
        acc = acc * alpha[:, None] + tl.dot(pv, v, input_precision=DOT_PRECISION)
        m_i = m_new

    if SINGLE:
        o = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]  # length 0: acc = 0 -> zeros
        tl.store(out_ptr + b * s_ob + heads[:, None] * s_oh + offs_dv[None, :] * s_od,
                 o.to(out_ptr.dtype.element_ty), mask=mask_g[:, None] & mask_dv[None, :])  # fmt: skip
    elif start < n_valid:
        row = (b * H + heads) * n_splits + sp  # workspace (B, H, n_splits, [2 | DV]), contiguous
        tl.store(ml_ptr + row * 2, m_i, mask=mask_g)
        tl.store(ml_ptr + row * 2 + 1, l_i, mask=mask_g)
        tl.store(acc_ptr + row[:, None] * DV + offs_dv[None, :], acc, mask=mask_g[:, None] & mask_dv[None, :])
        if FIXUP:  # the last of the group's splits to finish merges them (see the module docstring)
            group = b * (H // G) + kv
            ticket = tl.atomic_add(cnt_ptr + group, 1, sem="acq_rel", scope="gpu")  # the stores above go first
            if ticket == tl.cdiv(n_valid, chunk) - 1:
                tl.store(cnt_ptr + group, 0)  # zero again for the next call (a captured graph's next replay)
                for g in range(G):
                    _combine_head(out_ptr, ml_ptr, acc_ptr, b, kv * G + g, H, DV, n_valid, chunk, n_splits,
                                  s_ob, s_oh, s_od, BLOCK_S, BLOCK_DV, True)  # fmt: skip
    elif FIXUP and sp == 0:  # a row of length 0: no split ran, its heads get zeros
        zero = tl.zeros([BLOCK_G, BLOCK_DV], tl.float32)
        tl.store(out_ptr + b * s_ob + heads[:, None] * s_oh + offs_dv[None, :] * s_od,
                 zero.to(out_ptr.dtype.element_ty), mask=mask_g[:, None] & mask_dv[None, :])  # fmt: skip


@triton.jit
def _combine_head(
    out_ptr, ml_ptr, acc_ptr, b, h, H, DV, n_valid, chunk, n_splits, s_ob, s_oh, s_od,
    BLOCK_S: tl.constexpr, BLOCK_DV: tl.constexpr, BYPASS_L1: tl.constexpr,
):  # fmt: skip
    """Head h of row b: merges the partials of the splits that ran (their count follows from n_valid) with the usual
    rescaling by exp(m_s - max m) and writes the output; zeros for a row that saw nothing. One function for the combine
    kernel and the split kernel's fixup, so both do the same arithmetic (the interpreter gives the same bits; compiled
    into two kernels they may round differently: tests/kernels/test_decode_attention.py). ``BYPASS_L1``: the partials of
    other programs are read through L2 (``.cg``), never from a stale L1 line."""
    CACHE: tl.constexpr = ".cg" if BYPASS_L1 else ""
    n_used = tl.cdiv(n_valid, chunk)  # the splits that wrote partials
    offs_s = tl.arange(0, BLOCK_S)
    mask_s = offs_s < n_used
    offs_dv = tl.arange(0, BLOCK_DV)
    mask_dv = offs_dv < DV
    row = (b * H + h) * n_splits + offs_s
    m = tl.load(ml_ptr + row * 2, mask=mask_s, other=float("-inf"), cache_modifier=CACHE)
    l = tl.load(ml_ptr + row * 2 + 1, mask=mask_s, other=0.0, cache_modifier=CACHE)  # noqa: E741
    m_max = tl.max(m, axis=0)
    w = tl.exp2(m - tl.where(m_max == float("-inf"), 0.0, m_max))  # 0 for unused splits
    denom = tl.sum(l * w, axis=0)
    acc = tl.load(acc_ptr + row[:, None] * DV + offs_dv[None, :], mask=mask_s[:, None] & mask_dv[None, :], other=0.0,
                  cache_modifier=CACHE)  # fmt: skip
    o = tl.sum(acc * w[:, None], axis=0) / tl.where(denom > 0, denom, 1.0)
    tl.store(out_ptr + b * s_ob + h * s_oh + offs_dv * s_od, o.to(out_ptr.dtype.element_ty), mask=mask_dv)


@triton.jit
def _combine_kernel(
    len_ptr, out_ptr, ml_ptr, acc_ptr,
    H, T, DV, chunk, n_splits,
    s_ob, s_oh, s_od,
    BLOCK_S: tl.constexpr, BLOCK_DV: tl.constexpr, PDL: tl.constexpr, BLOCK_T: tl.constexpr, BALANCE: tl.constexpr,
):  # fmt: skip
    if PDL:
        gdc_launch_dependents()
        gdc_wait()
    b = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1)
    n_valid = tl.minimum(tl.maximum(tl.load(len_ptr + b).to(tl.int32), 0), T)
    chunk = row_chunk(n_valid, chunk, n_splits, BLOCK_T, BALANCE)
    _combine_head(out_ptr, ml_ptr, acc_ptr, b, h, H, DV, n_valid, chunk, n_splits, s_ob, s_oh, s_od, BLOCK_S,
                  BLOCK_DV, False)  # fmt: skip


def _config(device: torch.device) -> dict:
    base = CUDA_CONFIG if device.type == "cuda" else INTERPRET_CONFIG
    return {**base, **CONFIG_OVERRIDE}


def split_plan(B: int, Hkv: int, T: int, device: torch.device, head_dim: int = 0) -> tuple[int, int, int]:
    """-> (n_splits, chunk, BLOCK_T) for a cache of T_max = T positions; a function of the shape only.

    A buffer of at most SINGLE_MAX_T positions (head dims up to 256) takes one split of one tile of next_pow2(T)
    positions: one program a (row, KV head), no loop and no merge.

    Head dims above 256 (MLA's latent key: rank + RoPE dim, e.g. 256 + 32) take tiles of at most
    WIDE_BLOCK_T positions, so the pipelined K and V tiles still fit in shared memory.

    Enough splits that B * H_kv * n_splits fills PROGRAMS_PER_SM programs per SM, at most MAX_SPLITS and at
    most one per MIN_SPLIT_TILES BLOCK_T tiles; chunk (positions per split) is a whole number of tiles.
    """
    cfg = _config(device)
    block_t = cfg["BLOCK_T"] if head_dim <= 256 else min(cfg["BLOCK_T"], WIDE_BLOCK_T)
    single = cfg.get("SINGLE_MAX_T", 0)
    if T <= single and head_dim <= 256 and "N_SPLITS" not in cfg:  # one split, one tile: no loop, no merge
        wide = max(block_t, _next_pow2(T))
        return 1, wide, wide
    n_blocks = max(1, _cdiv(T, block_t))
    if "N_SPLITS" in cfg:
        n = cfg["N_SPLITS"]
    else:
        sms = _sm_count(device.index if device.index is not None else torch.cuda.current_device()) if (
            device.type == "cuda") else cfg["SM_COUNT"]  # fmt: skip
        n = _cdiv(sms * cfg["PROGRAMS_PER_SM"], max(1, B * Hkv))
    n = max(1, min(n, _cdiv(n_blocks, cfg.get("MIN_SPLIT_TILES", 1)), cfg["MAX_SPLITS"]))
    per = _cdiv(n_blocks, n)  # tiles per split
    return _cdiv(n_blocks, per), per * block_t, block_t


class _Plan:
    """What a call signature needs besides the tensors: grids, integer and constexpr arguments."""

    __slots__ = ("B", "H", "Dv", "n_splits", "split_grid", "split_ints", "split_consts", "warps", "comb_ints",
                 "comb_consts", "pdl", "fixup", "groups")  # fmt: skip


_PLANS: dict[tuple, _Plan] = {}


def _plan(q, k, v, scale: float | None, ring: bool, nq: int = 1) -> _Plan:
    pdl = pdl_enabled(q.device)
    key = (q.shape, q.stride(), k.shape, k.stride(), v.shape, v.stride(), q.dtype, q.device, scale, ring,
           tuple(sorted(CONFIG_OVERRIDE.items())), pdl, nq)  # fmt: skip
    p = _PLANS.get(key)
    if p is not None:
        return p
    B, H, D = q.shape  # H: heads x query tokens (nq of them a head, folded by _run)
    _, Hkv, T, _ = k.shape
    Dv = v.shape[3]
    n_splits, chunk, block_t = split_plan(B, Hkv, T, q.device, max(D, Dv))
    scale = D**-0.5 if scale is None else float(scale)
    # Triton 3.9's interpreter computes tl.dot of bf16 operands wrongly (garbage, checked on 16x16 tiles): there,
    # and only there, the bf16 operands are widened to fp32 for the dot (after the same rounding of p).
    dot_f32 = q.device.type != "cuda" and q.dtype == torch.bfloat16
    p = _Plan()
    p.B, p.H, p.Dv, p.n_splits = B, H, Dv, n_splits
    p.fixup = n_splits > 1 and bool(_config(q.device)["FIXUP"])
    p.groups = B * Hkv
    p.split_grid = (B, Hkv, n_splits)
    p.split_ints = (H, H // Hkv, T, D, Dv, chunk)
    p.split_consts = (
        scale * LOG2E, ring, n_splits == 1, p.fixup, "ieee" if q.dtype == torch.float32 or dot_f32 else None,
        dot_f32, max(16, _next_pow2(H // Hkv)), block_t, max(16, _next_pow2(D)), max(16, _next_pow2(Dv)),
        max(2, _next_pow2(n_splits)), pdl, bool(_config(q.device)["BALANCE"]), nq,
        1 if n_splits == 1 and chunk == block_t else None,  # one tile a program: no pipelining
    )  # fmt: skip
    p.pdl = pdl
    p.warps = _config(q.device)["num_warps"]
    p.comb_ints = (H, T, Dv, chunk, n_splits)
    p.comb_consts = (
        max(2, _next_pow2(n_splits)),
        max(16, _next_pow2(Dv)),
        pdl,
        block_t,
        bool(_config(q.device)["BALANCE"]),
    )
    if len(_PLANS) > 1024:
        _PLANS.clear()
    _PLANS[key] = p
    return p


def _run(q, k, v, lengths, scale: float | None, window: int, ring: bool) -> torch.Tensor:
    """The launches, without validation (the dispatcher validated). q (B, H, Q, D), Q query tokens a row: folded
    into the head axis (head h, token i -> h * Q + i, so a KV head's group holds its G heads' Q tokens each and
    its K/V tiles are read once for all of them), each token masked to its own causal bound in the kernel."""
    if q.dim() == 4:
        B, H, Q, D = q.shape
        if Q == 1:
            return _run(q[:, :, 0], k, v, lengths, scale, window, ring).unsqueeze(2)
        out = _run_folded(q.reshape(B, H * Q, D), k, v, lengths, scale, window, ring, Q)
        return out.view(B, H, Q, out.shape[-1])
    return _run_folded(q, k, v, lengths, scale, window, ring, 1)


def _run_folded(q, k, v, lengths, scale: float | None, window: int, ring: bool, nq: int) -> torch.Tensor:
    p = _plan(q, k, v, scale, ring, nq)
    out = torch.empty((p.B, p.H, p.Dv), device=q.device, dtype=q.dtype)
    dev = q.get_device()
    if p.n_splits == 1:
        ml = acc = out  # unused
    else:
        ml = torch.empty((p.B, p.H, p.n_splits, 2), device=q.device, dtype=torch.float32)
        acc = torch.empty((p.B, p.H, p.n_splits, p.Dv), device=q.device, dtype=torch.float32)
    cnt = _counters(q.device, p.groups) if p.fixup else out  # unused without the fixup
    ints = (*p.split_ints, window, *q.stride(), *k.stride(), *v.stride(), *out.stride())
    launch(_split_kernel, p.split_grid, (q, k, v, lengths, out, ml, acc, cnt), ints, p.split_consts, p.warps, dev,
           p.pdl)  # fmt: skip
    if p.n_splits > 1 and not p.fixup:
        launch(_combine_kernel, (p.B, p.H), (lengths, out, ml, acc), (*p.comb_ints, *out.stride()), p.comb_consts,
               p.warps, dev, p.pdl)  # fmt: skip
    return out


def decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    lengths: torch.Tensor,
    scale: float | None = None,
) -> torch.Tensor:
    """Flash-decoding in Triton; same semantics as ``naive_decode_attention`` (see the module docstring)."""
    check_decode(q, k_cache, v_cache, lengths)
    return _run(q, k_cache, v_cache, lengths, scale, 0, False)


def decode_attention_ring(
    q: torch.Tensor,
    k_ring: torch.Tensor,
    v_ring: torch.Tensor,
    lengths: torch.Tensor,
    window: int,
    scale: float | None = None,
) -> torch.Tensor:
    """Sliding-window decode over a ring buffer in Triton; same semantics as ``naive_decode_attention_ring``."""
    check_decode(q, k_ring, v_ring, lengths, "k_ring", "v_ring")
    check_one_query(q, "decode_attention_ring")
    check_window(window)
    return _run(q, k_ring, v_ring, lengths, scale, window, True)


__all__ = ["decode_attention", "decode_attention_ring", "row_chunk", "split_plan"]
