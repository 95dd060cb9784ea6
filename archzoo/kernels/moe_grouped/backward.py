"""Triton kernels of ``moe_grouped_experts``' backward: the forward's plan (its sorted rows, block experts and each
expert's block range) reused, in six launches, no host synchronisation.

For assignment a (token n = a mod N, choice k = a div N, expert e; rows sorted by expert as in ``triton.py``), with
g, u, h = SiLU(g) u, hw = h w, y = W_d[e] hw as the forward rounds them (in x's dtype) and dout the output's
gradient:

- ``_dh_kernel``, grid (used and unused blocks x F / DH_BLOCK_N,), a program a (block, d_ff tile): dhw = dout rows
  gathered by token against W_d[e] over d_model (an fp32 GEMM, rounded), then the epilogue from the saved g and u:
  dw partial = sum over the tile of dhw h (fp32, stored by assignment in an (F tiles, K * N) buffer); dh = dhw w,
  dg = dh u SiLU'(g), du = dh SiLU(g), each rounded as autograd rounds them in x's dtype, into dg, du (R, F) by
  sorted row. A dropped assignment (weight 0) and a padding row give dg = du = 0 and dw = 0 exactly, whatever g
  and u hold: a dropped assignment adds exactly 0 in the forward and takes no gradient, as the reference's
  ``torch.where`` gives it (its routing weight included).
- dx: the forward's ``triton._down_kernel`` with its second operand pair (grid blocks x D / DX_BLOCK_N): dg rows
  against W_g[e] plus du rows against W_u[e] over d_ff, one fp32 accumulator, rounded, stored at row a of dxa
  (K * N, D); then ``triton._sum_kernel`` sums it over the K
  choices (the forward's down + sum). Top-1: dxa is dx.
- ``_dw_sum_kernel``, grid over K * N: dtop_w[n, k] = the F tiles' partials summed in tile order, rounded to top_w's
  dtype (no atomics: the same bits every run).
- ``_dweight_kernel`` twice, a program per (expert, output tile) looping over that expert's blocks
  (``expert_block[e] .. expert_block[e + 1]``, read on the device), BLOCK_M rows a step, fp32 accumulators, the
  result rounded once and stored in the weight's layout and dtype (an idle expert: zeros):
  dW_d[e] = sum_a dout_n hw_a^T (dout rows gathered by token, the forward's saved hw rows), and dW_g[e], dW_u[e] =
  sum_a dg_a x_n^T, du_a x_n^T (two accumulators sharing the gathered x tile).

The down weight gradient is launched first (it needs only dout and hw): with ``BWD_STREAMS`` it runs on a second
stream beside dh, and at 2 dx follows it there beside the gate|up weight gradient (``_backward_config.py``).

Saved against recomputed: the forward (``save=True``) writes g and u, rounded, in its gate|up epilogue (R x F x 2
bytes each: 28 MB apiece at the students' shape, 4,096 tokens x top-2, d_ff 1,536, bf16), and its hw buffer, which
down reads anyway, is kept. Recomputing g and u would cost the backward the gate|up GEMM again: two more of the
nine projection-sized GEMMs of forward + backward (22% more FLOPs), against issue 19's target of 1.3x a dense SwiGLU,
whose own autograd saves g, u, SiLU(g) and h (four tensors of N x K F). h is recomputed from g and u in
``_dh_kernel``'s epilogue (elementwise, free there).

The operands are in x's dtype as in the forward (``DOT_F32`` widens them under the interpreter and for fp32); an
unsorted gradient (dout with any strides) is gathered by token like x. Not differentiable again (no double
backward).
"""

from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl

from .._dispatch import triton_interpreting
from .._launch import launch
from .._pdl import gdc_launch_dependents, gdc_wait, pdl_enabled
from .._sizes import cdiv
from ..decode_linear.triton import _round
from ._backward_config import CUDA_CONFIG, INTERPRET_CONFIG
from .triton import _block_and_tile, _down_kernel, _rnd, _sum_kernel, env_config

# The tiles and switches (CUDA_CONFIG, INTERPRET_CONFIG) live in _backward_config.py, where triton.py's
# ARCHZOO_MOE_GROUPED_CONFIG check reads their keys without importing this module.
CONFIG_OVERRIDE: dict = {}


@triton.jit
def _dh_kernel(
    o_ptr, d_ptr, w_ptr, slot_ptr, bexp_ptr, g_ptr, u_ptr, dg_ptr, du_ptr, dwp_ptr,
    N, D, F, A, s_on, s_od, s_de, s_dd, s_df, s_wn, s_wk,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, EVEN_K: tl.constexpr,
    NUM_STAGES: tl.constexpr, DOT_F32: tl.constexpr, DOT_PRECISION: tl.constexpr, HW_ROUND: tl.constexpr,
    PDL: tl.constexpr, PREFETCH: tl.constexpr, SPLIT: tl.constexpr,
):  # fmt: skip
    """A (block, d_ff tile) of dhw, then the epilogue (module docstring). HW_ROUND: the epilogue's roundings by
    conversion (``triton._rnd``). PREFETCH: the epilogue's g, u and weight loads issued before the K loop, so that
    they are in flight during it. SPLIT: a program takes 1 / SPLIT of a plan block's rows (BLOCK_M is the
    program's rows, the plan's block BLOCK_M * SPLIT), for fewer registers a program (``_backward_config.py``)."""
    if PDL:  # the next launch may start now; all this kernel reads comes after the one before ends (_pdl.py)
        gdc_launch_dependents()
        gdc_wait()
    sub, pid_n, e = _block_and_tile(bexp_ptr, tl.cdiv(F, BLOCK_N), SPLIT)
    if e >= 0:
        DT = dg_ptr.dtype.element_ty
        offs_m = sub * BLOCK_M + tl.arange(0, BLOCK_M)
        a = tl.load(slot_ptr + offs_m)  # (BLOCK_M,) assignments, -1 on padding rows
        valid = a >= 0
        n = tl.where(valid, a % N, 0)
        k = tl.where(valid, a // N, 0)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # d_ff columns
        mask_n = offs_n < F
        offs_k = tl.arange(0, BLOCK_K)  # d_model
        o_rows = o_ptr + n.to(tl.int64)[:, None] * s_on  # (BLOCK_M, 1) dout rows by token
        d_cols = d_ptr + e.to(tl.int64) * s_de + offs_n.to(tl.int64)[None, :] * s_df  # (1, BLOCK_N) of W_d[e]
        rows = offs_m.to(tl.int64)[:, None] * F + offs_n[None, :]
        w_ptrs = w_ptr + n * s_wn + k * s_wk
        if PREFETCH:
            g_in = tl.load(g_ptr + rows, mask=mask_n[None, :], other=0.0)
            u_in = tl.load(u_ptr + rows, mask=mask_n[None, :], other=0.0)
            w_in = tl.load(w_ptrs, mask=valid, other=0.0)
        acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
        for k0 in tl.range(0, D, BLOCK_K, num_stages=NUM_STAGES):
            kk = k0 + offs_k
            if EVEN_K:
                ot = tl.load(o_rows + kk[None, :] * s_od, mask=valid[:, None], other=0.0)  # (BLOCK_M, BLOCK_K)
                dt = tl.load(d_cols + kk[:, None] * s_dd, mask=mask_n[None, :], other=0.0)  # (BLOCK_K, BLOCK_N)
            else:
                mask_k = kk < D
                ot = tl.load(o_rows + kk[None, :] * s_od, mask=valid[:, None] & mask_k[None, :], other=0.0)
                dt = tl.load(d_cols + kk[:, None] * s_dd, mask=mask_k[:, None] & mask_n[None, :], other=0.0)
            if DOT_F32:
                ot = ot.to(tl.float32)
                dt = dt.to(tl.float32)
            acc = tl.dot(ot, dt, acc, input_precision=DOT_PRECISION)
        dhw = _rnd(acc, DT, HW_ROUND)
        if not PREFETCH:
            g_in = tl.load(g_ptr + rows, mask=mask_n[None, :], other=0.0)
            u_in = tl.load(u_ptr + rows, mask=mask_n[None, :], other=0.0)
            w_in = tl.load(w_ptrs, mask=valid, other=0.0)
        g = g_in.to(tl.float32)
        u = u_in.to(tl.float32)
        sig = 1.0 / (1.0 + tl.exp(-g))
        s = _rnd(g * sig, DT, HW_ROUND)  # SiLU(g) as the forward rounds it
        h = _rnd(s * u, DT, HW_ROUND)
        wk = _rnd(w_in.to(tl.float32), DT, HW_ROUND)
        keep = (wk != 0.0)[:, None]  # padding rows and dropped assignments: no gradient at all
        dw = tl.sum(tl.where(keep, dhw * h, 0.0), axis=1)  # (BLOCK_M,) this tile's part of <dhw, h>
        tl.store(dwp_ptr + pid_n.to(tl.int64) * A + a, dw, mask=valid)
        dh = _rnd(dhw * wk[:, None], DT, HW_ROUND)
        dg = tl.where(keep, _rnd(_rnd(dh * u, DT, HW_ROUND) * (sig * (1.0 + g * (1.0 - sig))), DT, HW_ROUND), 0.0)
        du = tl.where(keep, _rnd(dh * s, DT, HW_ROUND), 0.0)
        tl.store(dg_ptr + rows, dg.to(DT), mask=mask_n[None, :])  # every row of a used block (padding: 0)
        tl.store(du_ptr + rows, du.to(DT), mask=mask_n[None, :])


@triton.jit
def _dw_sum_kernel(
    dwp_ptr, out_ptr,
    A, N, T, s_on, s_ok,
    BLOCK: tl.constexpr,
    PDL: tl.constexpr,
):  # fmt: skip
    """out[n, k] = the T tiles' partials of assignment a = k * N + n, summed in fp32 in tile order, rounded once."""
    if PDL:  # the next launch may start now; all this kernel reads comes after the one before ends (_pdl.py)
        gdc_launch_dependents()
        gdc_wait()
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)  # assignments: int32 (_checks.MAX_ROWS)
    mask = offs < A
    acc = tl.zeros([BLOCK], tl.float32)
    parts = dwp_ptr + offs
    for _ in range(0, T):
        acc += tl.load(parts, mask=mask, other=0.0)
        parts += A  # the next tile's (pointer arithmetic: 64-bit)
    DT = out_ptr.dtype.element_ty
    tl.store(out_ptr + (offs % N) * s_on + (offs // N) * s_ok, _round(acc, DT).to(DT), mask=mask)


@triton.jit
def _gather_rows_kernel(
    x_ptr, o_ptr, slot_ptr, xs_ptr, os_ptr,
    N, D, s_xn, s_xd, s_on, s_od,
    BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr, PDL: tl.constexpr,
):  # fmt: skip
    """SORTED_DW: x's and dout's rows in sorted order, xs[r] = x[n], os[r] = dout[n] for sorted row r of assignment
    a (token n = a mod N), zeros on padding rows; (R, D) each, contiguous, for the weight gradients' plain loads."""
    if PDL:  # the next launch may start now; all this kernel reads comes after the one before ends (_pdl.py)
        gdc_launch_dependents()
        gdc_wait()
    offs_r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    a = tl.load(slot_ptr + offs_r)
    valid = a >= 0
    n = tl.where(valid, a % N, 0).to(tl.int64)
    mask = valid[:, None] & (offs_d < D)[None, :]
    out = offs_r.to(tl.int64)[:, None] * D + offs_d[None, :]
    store = (offs_d < D)[None, :]
    xv = tl.load(x_ptr + n[:, None] * s_xn + offs_d[None, :] * s_xd, mask=mask, other=0.0)
    ov = tl.load(o_ptr + n[:, None] * s_on + offs_d[None, :] * s_od, mask=mask, other=0.0)
    tl.store(xs_ptr + out, xv, mask=store)
    tl.store(os_ptr + out, ov, mask=store)


@triton.jit
def _dweight_kernel(
    a_ptr, a2_ptr, b_ptr, slot_ptr, eblk_ptr, o_ptr, o2_ptr,
    N, P, Q, s_ar, s_ap, s_br, s_bq, s_oe, s_op, s_oq, s_o2e, s_o2p, s_o2q,
    BLOCK_M: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_Q: tl.constexpr, GATHER_A: tl.constexpr,
    GATHER_B: tl.constexpr, TWO: tl.constexpr, NUM_STAGES: tl.constexpr, DOT_F32: tl.constexpr,
    DOT_PRECISION: tl.constexpr, PDL: tl.constexpr,
):  # fmt: skip
    """o[e] (P, Q) = sum over expert e's sorted rows r of A[r]^T B[r] (and o2[e] of A2[r]^T B[r] where TWO): A, A2
    rows (P columns) and B rows (Q columns) either by sorted row (R rows, every row of a used block written) or
    gathered by token (GATHER_*: n = a mod N, padding rows read 0). Rounded once to o's dtype."""
    if PDL:  # the next launch may start now; all this kernel reads comes after the one before ends (_pdl.py)
        gdc_launch_dependents()
        gdc_wait()
    n_p = tl.cdiv(P, BLOCK_P)
    n_q = tl.cdiv(Q, BLOCK_Q)
    pid = tl.program_id(0)
    e = pid // (n_p * n_q)  # consecutive programs: one expert, one P tile (the same A rows), its Q tiles
    pid_p = (pid // n_q) % n_p
    pid_q = pid % n_q
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_q = pid_q * BLOCK_Q + tl.arange(0, BLOCK_Q)
    mask_p = offs_p < P
    mask_q = offs_q < Q
    b0 = tl.load(eblk_ptr + e)
    b1 = tl.load(eblk_ptr + e + 1)
    acc = tl.zeros([BLOCK_P, BLOCK_Q], tl.float32)
    acc2 = tl.zeros([BLOCK_P, BLOCK_Q], tl.float32)
    for blk in tl.range(b0, b1, num_stages=NUM_STAGES):
        offs_r = blk * BLOCK_M + tl.arange(0, BLOCK_M)
        a = tl.load(slot_ptr + offs_r)
        valid = a >= 0
        n = tl.where(valid, a % N, 0)
        ra = (n if GATHER_A else offs_r).to(tl.int64)
        rb = (n if GATHER_B else offs_r).to(tl.int64)
        mask_a = mask_p[:, None] & valid[None, :] if GATHER_A else mask_p[:, None]
        mask_b = valid[:, None] & mask_q[None, :] if GATHER_B else mask_q[None, :]
        at = tl.load(a_ptr + ra[None, :] * s_ar + offs_p[:, None] * s_ap, mask=mask_a, other=0.0)  # (BLOCK_P, M): A^T
        bt = tl.load(b_ptr + rb[:, None] * s_br + offs_q[None, :] * s_bq, mask=mask_b, other=0.0)  # (M, BLOCK_Q)
        if DOT_F32:
            at = at.to(tl.float32)
            bt = bt.to(tl.float32)
        acc = tl.dot(at, bt, acc, input_precision=DOT_PRECISION)
        if TWO:
            a2t = tl.load(a2_ptr + ra[None, :] * s_ar + offs_p[:, None] * s_ap, mask=mask_a, other=0.0)
            if DOT_F32:
                a2t = a2t.to(tl.float32)
            acc2 = tl.dot(a2t, bt, acc2, input_precision=DOT_PRECISION)
    DT = o_ptr.dtype.element_ty
    mask = mask_p[:, None] & mask_q[None, :]
    e64 = e.to(tl.int64)
    o_tile = e64 * s_oe + offs_p.to(tl.int64)[:, None] * s_op + offs_q.to(tl.int64)[None, :] * s_oq
    tl.store(o_ptr + o_tile, _round(acc, DT).to(DT), mask=mask)
    if TWO:
        o2_tile = e64 * s_o2e + offs_p.to(tl.int64)[:, None] * s_o2p + offs_q.to(tl.int64)[None, :] * s_o2q
        tl.store(o2_ptr + o2_tile, _round(acc2, DT).to(DT), mask=mask)


def _config(device: torch.device) -> dict:
    if device.type != "cuda":
        return {**INTERPRET_CONFIG, **CONFIG_OVERRIDE}
    return {**CUDA_CONFIG, **{k: v for k, v in env_config().items() if k in CUDA_CONFIG}, **CONFIG_OVERRIDE}


def moe_grouped_experts_backward(
    dout: torch.Tensor, x: torch.Tensor, gate_w: torch.Tensor, up_w: torch.Tensor, down_w: torch.Tensor,
    top_w: torch.Tensor, h: torch.Tensor, g: torch.Tensor, u: torch.Tensor, slot_assignment: torch.Tensor,
    block_expert: torch.Tensor, expert_block: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    """dout (N, D), the forward's arguments and what ``triton.moe_grouped_experts(..., save=True)`` returned besides
    out -> (dx (N, D), dgate_w, dup_w, ddown_w (each in its weight's layout and dtype), dtop_w (N, K) in top_w's
    dtype); the six launches of the module docstring. N * K >= 1, fp16 / bf16 / fp32."""
    N, D = x.shape
    E, F, _ = gate_w.shape
    K = top_w.shape[1]
    A = N * K
    R = slot_assignment.shape[0]
    bm = R // block_expert.shape[0]  # the plan's BLOCK_M
    cfg = _config(x.device)
    dev = x.get_device() if x.is_cuda else 0
    dot_f32 = x.dtype == torch.float32 or x.device.type != "cuda"  # as the forward (triton.py)
    prec = "ieee" if dot_f32 else None
    plan = (slot_assignment, block_expert)
    pdl = bool(cfg["BWD_PDL"]) and pdl_enabled(x.device)  # as the forward's PDL (triton.use_pdl)
    split = cfg["DH_SPLIT"]  # checked before any launch: a bad setting writes nothing
    if bm % split or (x.is_cuda and bm // split < 16):  # tl.dot's 16 rows at least (the interpreter: any)
        raise ValueError(
            f"DH_SPLIT {split}: the plan's BLOCK_M {bm} must split into whole row tiles (of 16 or more on a GPU)"
        )

    # BWD_STREAMS: the down weight gradient (which needs only dout and the forward's hw) on a second stream from the
    # start, beside dh (one program an SM, latency-bound); at 2 the dx launches follow it there once dh is done,
    # beside the gate|up weight gradient. The same launches and sums: the same bits (_backward_config.py says why).
    streams = cfg["BWD_STREAMS"] if x.is_cuda else 0
    main = torch.cuda.current_stream(x.device) if streams else None
    side = _side_stream(x.device) if streams else None
    if streams:
        side.wait_stream(main)
    ddown_w = torch.empty_like(down_w)  # (E, D, F) = sum dout_n hw_a^T
    sorted_dw = bool(cfg["SORTED_DW"])
    if not sorted_dw:
        with torch.cuda.stream(side) if streams else contextlib.nullcontext():
            _down_weight_grad(dout, h, plan, expert_block, ddown_w, N, D, F, bm, True, cfg, dot_f32, prec, dev, pdl)

    dg, du = torch.empty_like(g), torch.empty_like(u)  # (R, F) by sorted row
    bn, bk = cfg["DH_BLOCK_N"], cfg["DH_BLOCK_K"]
    n_tiles = cdiv(F, bn)
    dwp = torch.empty((n_tiles, A), device=x.device, dtype=torch.float32)  # <dhw, h> per d_ff tile
    launch(_dh_kernel, ((R // bm) * split * n_tiles,), (dout, down_w, top_w, *plan, g, u, dg, du, dwp),
           (N, D, F, A, *dout.stride(), *down_w.stride(), *top_w.stride()),
           (bm // split, bn, bk, D % bk == 0, cfg["DH_STAGES"], dot_f32, prec,
            bool(cfg["DH_HW_ROUND"]) and not triton_interpreting(), pdl, bool(cfg["DH_PREFETCH"]), split),
           cfg["DH_WARPS"], dev, pdl)  # fmt: skip
    dtop_w = torch.empty_like(top_w)
    launch(_dw_sum_kernel, (cdiv(A, cfg["SUM_BLOCK"]),), (dwp, dtop_w), (A, N, n_tiles, *dtop_w.stride()),
           (cfg["SUM_BLOCK"], pdl), cfg["SUM_WARPS"], dev, pdl)  # fmt: skip

    dxa = torch.empty((A, D), device=x.device, dtype=x.dtype)  # each assignment's part, row a = k * N + n
    dx = dxa if K == 1 else torch.empty((N, D), device=x.device, dtype=x.dtype)
    if streams == 2:
        side.wait_stream(main)  # dg, du written
    with torch.cuda.stream(side) if streams == 2 else contextlib.nullcontext():
        bn, bk = cfg["DX_BLOCK_N"], cfg["DX_BLOCK_K"]
        gs, us = gate_w.stride(), up_w.stride()  # (E, F, D): the d_model columns are the kernel's n, d_ff its k
        launch(_down_kernel, ((R // bm) * cdiv(D, bn),), (dg, du, gate_w, up_w, *plan, dxa),
               (D, F, gs[0], gs[2], gs[1], us[0], us[2], us[1]),
               (bm, bn, bk, F % bk == 0, cfg["DX_STAGES"], dot_f32, prec, True, pdl), cfg["DX_WARPS"], dev,
               pdl)  # fmt: skip
        if K > 1:
            launch(_sum_kernel, (cdiv(N * D, cfg["SUM_BLOCK"]),), (dxa, dx), (N * D,), (K, cfg["SUM_BLOCK"], pdl),
                   cfg["SUM_WARPS"], dev, pdl)  # fmt: skip

    # SORTED_DW: x's and dout's rows copied in sorted order first (one launch), so that both weight gradients read
    # plain rows instead of gathering them by token a loop step at a time (_backward_config.py says why)
    if sorted_dw:
        xs = torch.empty((R, D), device=x.device, dtype=x.dtype)
        dos = torch.empty((R, D), device=x.device, dtype=dout.dtype)
        bd = min(cfg["GATHER_BLOCK_D"], triton.next_power_of_2(D))
        launch(_gather_rows_kernel, (R // bm, cdiv(D, bd)), (x, dout, slot_assignment, xs, dos),
               (N, D, *x.stride(), *dout.stride()), (bm, bd, pdl), cfg["SUM_WARPS"], dev, pdl)  # fmt: skip
        b_gu, gather = xs, False  # dW_gu's B by sorted row
        _down_weight_grad(dos, h, plan, expert_block, ddown_w, N, D, F, bm, False, cfg, dot_f32, prec, dev, pdl)
    else:
        b_gu, gather = x, True
    dgate_w, dup_w = torch.empty_like(gate_w), torch.empty_like(up_w)  # (E, F, D) = sum dg_a x_n^T, du_a x_n^T
    bp, bq = cfg["DWGU_BLOCK_P"], cfg["DWGU_BLOCK_Q"]
    launch(_dweight_kernel, (E * cdiv(F, bp) * cdiv(D, bq),),
           (dg, du, b_gu, slot_assignment, expert_block, dgate_w, dup_w),
           (N, F, D, F, 1, *b_gu.stride(), *dgate_w.stride(), *dup_w.stride()),
           (bm, bp, bq, False, gather, True, cfg["DWGU_SORTED_STAGES"] if sorted_dw else cfg["DWGU_STAGES"], dot_f32,
            prec, pdl), cfg["DWGU_WARPS"], dev, pdl)  # fmt: skip
    if streams:
        main.wait_stream(side)  # every tensor the side stream touched is alive here: none is freed before the join
    return dx, dgate_w, dup_w, ddown_w, dtop_w


def _down_weight_grad(a_d: torch.Tensor, h: torch.Tensor, plan: tuple, expert_block: torch.Tensor,
                      ddown_w: torch.Tensor, N: int, D: int, F: int, bm: int, gather: bool, cfg: dict, dot_f32: bool,
                      prec: str | None, dev: int, pdl: bool) -> None:  # fmt: skip
    """dW_d[e] = sum over expert e's rows of dout_n hw_a^T into ddown_w; ``a_d``: dout, rows gathered by token
    (``gather``), or its copy in sorted order."""
    bp, bq = cfg["DWD_BLOCK_P"], cfg["DWD_BLOCK_Q"]
    launch(_dweight_kernel, (ddown_w.shape[0] * cdiv(D, bp) * cdiv(F, bq),),
           (a_d, a_d, h, plan[0], expert_block, ddown_w, ddown_w),
           (N, D, F, *a_d.stride(), F, 1, *ddown_w.stride(), *ddown_w.stride()),
           (bm, bp, bq, gather, False, False, cfg["DWD_STAGES"], dot_f32, prec, pdl), cfg["DWD_WARPS"], dev,
           pdl)  # fmt: skip


_SIDE_STREAMS: dict[int, torch.cuda.Stream] = {}


def _side_stream(device: torch.device) -> torch.cuda.Stream:
    """BWD_STREAMS' second stream on ``device``, one a device for the process (a CUDA graph captures its work as
    a parallel branch)."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _SIDE_STREAMS:
        _SIDE_STREAMS[index] = torch.cuda.Stream(device=index)
    return _SIDE_STREAMS[index]


__all__ = ["CONFIG_OVERRIDE", "CUDA_CONFIG", "INTERPRET_CONFIG", "moe_grouped_experts_backward"]
