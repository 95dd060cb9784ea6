"""MLA's absorbed decode attention in Triton: the latent row read once per position, as key and as value.

In absorbed form (``layers/mla.py``) every query head attends over one shared latent head: the key of
position t is the cached row ``[c_kv | k_rope]`` (rank R + RoPE dim DR), the value is its first R
columns, ``c_kv``. Through ``decode_attention`` as MQA that row is read twice (as K and as V) and the key
is padded to a power of two as a whole (R + DR = 288 -> 512, with narrower tiles above 256). Here the two
parts are separate tiles: scores = q_lat c^T + q_rope k_rope^T, and the same c tile multiplies P for the
output, so each position's latent is loaded once and nothing is padded beyond R and DR themselves.

``_split_kernel``, grid (B, head blocks of ``BLOCK_H``, n_splits): as ``triton._split_kernel`` (flash-
decoding: an online softmax over a chunk of positions up to the row's length, partials to a workspace) with
the query heads in blocks instead of GQA groups. The splits are merged as there: by the last split program of
each (row, head block) (``FIXUP``, one launch), else by ``triton._combine_kernel``. The split policy is
``triton.split_plan`` with the latent's rank as the head dim.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._launch import launch
from .._pdl import gdc_launch_dependents, gdc_wait, pdl_enabled
from .triton import LOG2E, _combine_head, _combine_kernel, _config, _counters, _next_pow2, row_chunk, split_plan

BLOCK_H = 16  # query heads per program (tl.dot's minimum M)


@triton.jit
def _split_kernel(
    q_ptr, lat_ptr, len_ptr, out_ptr, ml_ptr, acc_ptr, cnt_ptr,
    H, T, R, DR, chunk,
    s_qb, s_qh, s_qd,
    s_lb, s_lt, s_ld,
    s_ob, s_oh, s_od,
    QK_SCALE: tl.constexpr, SINGLE: tl.constexpr, FIXUP: tl.constexpr, DOT_PRECISION: tl.constexpr,
    DOT_F32: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_R: tl.constexpr,
    BLOCK_DR: tl.constexpr, BLOCK_S: tl.constexpr, PDL: tl.constexpr, BALANCE: tl.constexpr,
):  # fmt: skip
    if PDL:  # q, the latent cache and the lengths are the step's earlier kernels' outputs (triton.py)
        gdc_launch_dependents()
        gdc_wait()
    b = tl.program_id(0).to(tl.int64)
    hb = tl.program_id(1)
    sp = tl.program_id(2)
    n_splits = tl.num_programs(2)
    length = tl.maximum(tl.load(len_ptr + b).to(tl.int32), 0)
    n_valid = tl.minimum(length, T)
    chunk = row_chunk(n_valid, chunk, n_splits, BLOCK_T, BALANCE)  # the row's own length over the splits
    start = sp * chunk
    end = tl.minimum(start + chunk, n_valid)

    heads = hb * BLOCK_H + tl.arange(0, BLOCK_H)
    mask_h = heads < H
    offs_r = tl.arange(0, BLOCK_R)
    mask_r = offs_r < R
    offs_dr = tl.arange(0, BLOCK_DR)
    mask_dr = offs_dr < DR
    q_base = q_ptr + b * s_qb + heads[:, None] * s_qh
    q_lat = tl.load(q_base + offs_r[None, :] * s_qd, mask=mask_h[:, None] & mask_r[None, :], other=0.0)
    q_rope = tl.load(q_base + (R + offs_dr[None, :]) * s_qd, mask=mask_h[:, None] & mask_dr[None, :], other=0.0)
    if DOT_F32:
        q_lat, q_rope = q_lat.to(tl.float32), q_rope.to(tl.float32)
    lat_base = lat_ptr + b * s_lb

    m_i = tl.full([BLOCK_H], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_H], tl.float32)
    acc = tl.zeros([BLOCK_H, BLOCK_R], tl.float32)
    for t0 in range(start, end, BLOCK_T):
        offs_t = t0 + tl.arange(0, BLOCK_T)
        vis = offs_t < end
        rows = lat_base + offs_t[:, None] * s_lt
        c = tl.load(rows + offs_r[None, :] * s_ld, mask=vis[:, None] & mask_r[None, :], other=0.0)
        kr = tl.load(rows + (R + offs_dr[None, :]) * s_ld, mask=vis[:, None] & mask_dr[None, :], other=0.0)
        if DOT_F32:
            c, kr = c.to(tl.float32), kr.to(tl.float32)
        s = tl.dot(q_lat, tl.trans(c), input_precision=DOT_PRECISION)
        s += tl.dot(q_rope, tl.trans(kr), input_precision=DOT_PRECISION)
        s = tl.where(vis[None, :], s * QK_SCALE, float("-inf"))  # (BLOCK_H, BLOCK_T), log2 units
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp2(m_i - m_safe)
        p = tl.exp2(s - m_safe[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        pv = p.to(c.dtype)  # flash attention's rounding of p to the inputs' dtype (fp32 under DOT_F32)
        acc = acc * alpha[:, None] + tl.dot(pv, c, input_precision=DOT_PRECISION)  # the latent is the value
        m_i = m_new

    if SINGLE:
        o = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
        tl.store(out_ptr + b * s_ob + heads[:, None] * s_oh + offs_r[None, :] * s_od,
                 o.to(out_ptr.dtype.element_ty), mask=mask_h[:, None] & mask_r[None, :])  # fmt: skip
    elif start < n_valid:
        row = (b * H + heads) * n_splits + sp  # workspace (B, H, n_splits, [2 | R]), the combine's layout
        tl.store(ml_ptr + row * 2, m_i, mask=mask_h)
        tl.store(ml_ptr + row * 2 + 1, l_i, mask=mask_h)
        tl.store(acc_ptr + row[:, None] * R + offs_r[None, :], acc, mask=mask_h[:, None] & mask_r[None, :])
        if FIXUP:  # the last split program of (b, head block) merges them (triton.py's module docstring)
            group = b * tl.num_programs(1) + hb
            ticket = tl.atomic_add(cnt_ptr + group, 1, sem="acq_rel", scope="gpu")
            if ticket == tl.cdiv(n_valid, chunk) - 1:
                tl.store(cnt_ptr + group, 0)
                for g in range(tl.minimum(BLOCK_H, H - hb * BLOCK_H)):
                    _combine_head(out_ptr, ml_ptr, acc_ptr, b, hb * BLOCK_H + g, H, R, n_valid, chunk, n_splits,
                                  s_ob, s_oh, s_od, BLOCK_S, BLOCK_R, True)  # fmt: skip
    elif FIXUP and sp == 0:  # a row of length 0: zeros
        zero = tl.zeros([BLOCK_H, BLOCK_R], tl.float32)
        tl.store(out_ptr + b * s_ob + heads[:, None] * s_oh + offs_r[None, :] * s_od,
                 zero.to(out_ptr.dtype.element_ty), mask=mask_h[:, None] & mask_r[None, :])  # fmt: skip


_PLANS: dict[tuple, tuple] = {}


def _plan(q: torch.Tensor, latent: torch.Tensor, rank: int, scale: float | None) -> tuple:
    """Everything a call needs besides the tensors, cached per signature: eager decode steps pay microseconds
    of Python per layer otherwise (the kernel benchmark at batch 1 timed that, not the kernel)."""
    from .triton import CONFIG_OVERRIDE

    pdl = pdl_enabled(q.device)
    key = (q.shape, q.stride(), latent.shape, latent.stride(), q.dtype, q.device, rank, scale,
           tuple(sorted(CONFIG_OVERRIDE.items())), pdl)  # fmt: skip
    p = _PLANS.get(key)
    if p is not None:
        return p
    B, H, D = q.shape
    T = latent.shape[1]
    R, DR = rank, D - rank
    n_splits, chunk, block_t = split_plan(B, 1, T, q.device, R)
    scale = D**-0.5 if scale is None else float(scale)
    dot_f32 = q.device.type != "cuda" and q.dtype == torch.bfloat16  # the interpreter's bf16 tl.dot (triton.py)
    single = n_splits == 1
    fixup = not single and bool(_config(q.device)["FIXUP"])
    consts = (
        scale * LOG2E, single, fixup, "ieee" if q.dtype == torch.float32 or dot_f32 else None, dot_f32,
        BLOCK_H, block_t, max(16, _next_pow2(R)), max(16, _next_pow2(DR)), max(2, _next_pow2(n_splits)), pdl,
        bool(_config(q.device)["BALANCE"]),
    )  # fmt: skip
    ints = (H, T, R, DR, chunk, *q.stride(), *latent.stride(), H * R, R, 1)  # out: a fresh contiguous (B, H, R)
    comb_ints = (H, T, R, chunk, n_splits, H * R, R, 1)
    comb_consts = (
        max(2, _next_pow2(n_splits)),
        max(16, _next_pow2(R)),
        pdl,
        block_t,
        bool(_config(q.device)["BALANCE"]),
    )
    grid = (B, triton.cdiv(H, BLOCK_H), n_splits)
    p = (n_splits, single, fixup, consts, ints, grid, comb_ints, comb_consts, _config(q.device)["num_warps"], pdl)
    _PLANS[key] = p
    return p


def decode_attention_mla(
    q: torch.Tensor, latent: torch.Tensor, lengths: torch.Tensor, rank: int, scale: float | None = None
) -> torch.Tensor:
    """q (B, H, R + DR) absorbed queries [q_lat | q_rope]; latent (B, T_max, R + DR) rows [c_kv | k_rope];
    lengths (B,). Returns (B, H, R): softmax(q . row / scale) weighted sums of c_kv over each row's first
    ``lengths[b]`` positions. Inputs are checked by the dispatcher."""
    B, H, _ = q.shape
    R = rank
    n_splits, single, fixup, consts, ints, grid, comb_ints, comb_consts, warps, pdl = _plan(q, latent, rank, scale)
    out = torch.empty((B, H, R), device=q.device, dtype=q.dtype)
    if single:
        ml = acc = out  # unused
    else:
        ml = torch.empty((B, H, n_splits, 2), device=q.device, dtype=torch.float32)
        acc = torch.empty((B, H, n_splits, R), device=q.device, dtype=torch.float32)
    dev = q.get_device()
    cnt = _counters(q.device, grid[0] * grid[1]) if fixup else out  # unused without the fixup
    launch(_split_kernel, grid, (q, latent, lengths, out, ml, acc, cnt), ints, consts, warps, dev, pdl)
    if not single and not fixup:
        launch(_combine_kernel, (B, H), (lengths, out, ml, acc), comb_ints, comb_consts, warps, dev, pdl)
    return out
