"""Triton kernels of ``moe_decode_experts`` and ``moe_decode_step``: a decode step's routed experts (and its
routing) as two GEMV-like launches.

- ``_gate_up_kernel``, grid (F / BLOCK_F, N * K): program (j, a) takes assignment a = token n's k-th choice, reads
  its expert index, and computes rows [j * BLOCK_F, (j + 1) * BLOCK_F) of that expert's gate and up projections
  against x[n] (fp32 sums along d_model), then SiLU(gate) x up with the reference's roundings (gate, up, SiLU and
  the product each rounded to x's dtype), into h (N * K, F).
- ``_down_kernel``, grid (D / BLOCK_N, N): program (j, n) computes rows [j * BLOCK_N, (j + 1) * BLOCK_N) of the
  output for token n: for each of its K choices, the chosen expert's down rows against h times the routing weight
  (rounded as the reference rounds h x w), each choice's sum rounded, the choices summed in fp32, rounded once.

Only the chosen experts' rows are read (2 of 8 experts at top-2: a quarter of the routed weights); each weight
element once per assignment. What the compiled reductions of ``MoE._static`` did in PyTorch, in two launches that
read the weights along d_model / d_ff as the decode GEMV does.

``moe_decode_step`` (the layer's ``DECODE_EXPERTS = "fused"``) takes the routing in too, so a MoE layer's decode step
is these two launches and nothing else (the router's GEMV, softmax and top-k were four kernels of their own):
- ``_route_gate_up_kernel``, grid (F / BLOCK_F, N * K) as ``_gate_up_kernel``: program (j, a) first computes token
  n's routing itself: the router logits x[n] @ router_w.T (+ bias) as fp32 sums rounded to x's dtype (``F.linear``'s
  output, which the layer then widens to fp32), their softmax in fp32, the top-K by K max passes (ties to the lowest
  index, as ``topk_by_max``), with ``NORM`` the K weights divided by their sum. E x D is a few thousand products
  (8 x 576 at the students' shapes), recomputed by every program of the token rather than passed between
  launches: each computes the same bits (same code, same tiles, same order). Then assignment a's expert, and
  ``_gate_up_kernel``'s rows of SiLU(gate) x up. The programs with j == 0 write their assignment's routing weight
  (fp32) and expert (int32) to (N, K) buffers;
- ``_down_kernel`` reads those (written once, by one kernel: the down launch cannot pick other experts than the ones
  h was computed for, as a second recomputation with other tiles might on a near tie) and h, as for
  ``moe_decode_experts``.
With ``norm_weight`` (model.Block hands the MoE layer its pre-norm on a fused decode step) the first kernel also
computes the RMSNorm of x[n] (its rms in one pass over the row, then each tile of x normalised as it is read, with
``RMSNorm``'s roundings), so the router and the experts see the normalised input; with ``residual`` the down kernel
adds the block's residual (x + moe in x's dtype, one rounding). Two kernels fewer a MoE layer (the norm, the add).
PDL (``_pdl.py``), where ``pdl_enabled``: both kernels first let the next launch (``gdc_launch_dependents``); the
first loads its first router tile (a parameter, which no kernel of the step writes) before ``gdc_wait``, then x and
everything else after it; the expert rows it reads depend on the routing, so they come after too. The down kernel
reads only the first kernel's outputs (h, the routing) and weights chosen by them: it waits first.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._launch import launch
from .._pdl import gdc_launch_dependents, gdc_wait, pdl_enabled
from .._sizes import next_pow2, prev_pow2, sm_count
from ..decode_linear.triton import _round, _swiglu  # roundings to nearest even, also under the interpreter

# BLOCK_F x BLOCK_D: the gate-up program's weight tiles (two fp32 accumulators of that size: 32 registers a thread
# at 16 x 256 on 8 warps); DOWN_BLOCK_N x DOWN_BLOCK_F the down program's; DOWN_BLOCK_N halved down to
# DOWN_MIN_BLOCK_N while the programs are fewer than PROGRAMS_PER_SM a multiprocessor (batch 1: d_model / 16 = 36
# programs for 132 SMs). ROUTER_TILE: moe_decode_step's router tile, next_pow2(E) x d_model columns, at most this
# many elements (E = 8 reads d_model 576 in one tile of 8 x 1,024); it is dead before the gate-up accumulators are live.
# How these were chosen, on an H100:
# - Fifteenth session (tools/decode_profile.py --moe-experts reductions,fused, profile_h100_moe_fused.log): with the
#   down program looping over 2 x 6 tiles of d_ff (DOWN_BLOCK_F 256) and the router over 3 tiles, down took 10.5 us
#   a layer for 3.5 MB (0.33 TB/s: one DRAM round trip a tile) and the fused step lost to "reductions" (MoE 1.164
#   against 1.092 ms). So the down program's rows and the router became one tile each (DOWN_BLOCK_F 2,048,
#   ROUTER_TILE 8,192), their loads issued at once.
# - Sixteenth session: the fused step then won (MoE's batch-1 step 1.080 -> 0.888 ms,
#   profile_h100_stepprof_onetile.log).
#   tools/tune_moe_step.py (a 30-layer stack in one CUDA graph, docs/results/kernels/moe_step_tune_h100.json) then
#   put the gate / up tiles at BLOCK_F 16 x BLOCK_D 256 on 8 warps: 12.9 us a layer against 16.0 for BLOCK_F 4 x
#   1,024 on 4 warps (192 programs instead of 768, the router recomputed by a quarter as many); every other down tile
#   was slower. The MoE student at batch 1: 1,137 -> 1,251 tokens/s (archzoo bench decode --decode-linear auto,
#   docs/results/decode/b1_moestep_h100_default.md and b1_moestep_h100_tuned.md); Jamba (4 experts) 1,200 -> 1,202.
CUDA_CONFIG = dict(BLOCK_F=16, BLOCK_D=256, DOWN_BLOCK_N=4, DOWN_MIN_BLOCK_N=4, DOWN_BLOCK_F=2048, PROGRAMS_PER_SM=2,
                   ROUTER_TILE=8192, num_warps=8)  # fmt: skip
# Under the interpreter (tests): small tiles, so several tiles a row and masked edges run at small shapes.
INTERPRET_CONFIG = dict(BLOCK_F=8, BLOCK_D=16, DOWN_BLOCK_N=8, DOWN_MIN_BLOCK_N=2, DOWN_BLOCK_F=16, PROGRAMS_PER_SM=2,
                        ROUTER_TILE=64, SM_COUNT=4, num_warps=1)  # fmt: skip
CONFIG_OVERRIDE: dict = {}


@triton.jit
def _rstd(x_ptr, n, s_xn, s_xd, D, EPS: tl.constexpr, BLOCK: tl.constexpr):
    """1 / rms of x[n] over d_model in fp32, as ``RMSNorm`` computes it (the mean of squares plus eps)."""
    ss = tl.zeros([BLOCK], tl.float32)
    for d0 in range(0, D, BLOCK):
        offs = d0 + tl.arange(0, BLOCK)
        xv = tl.load(x_ptr + n * s_xn + offs * s_xd, mask=offs < D, other=0.0).to(tl.float32)
        ss += xv * xv
    return tl.math.rsqrt(tl.sum(ss, axis=0) / D + EPS)


@triton.jit
def _normed(xv, rstd, nw_ptr, s_nd, offs_d, mask_d, DT: tl.constexpr):
    """RMSNorm's roundings on a tile of x (fp32 values of x's dtype): x * rstd rounded to x's dtype, then times the
    norm's weight (x's dtype too), rounded again (``decode_linear.naive.rms_norm``)."""
    nw = tl.load(nw_ptr + offs_d * s_nd, mask=mask_d, other=0.0).to(tl.float32)
    return _round(_round(xv * rstd, DT) * nw, DT)


@triton.jit
def _gate_up_rows(
    x_ptr, g_ptr, u_ptr, h_ptr, e, n, a, pid_f, D, F,
    s_xn, s_xd, s_ge, s_gf, s_gd, s_ue, s_uf, s_ud,
    BLOCK_F: tl.constexpr, BLOCK_D: tl.constexpr,
    nw_ptr, s_nd, rstd, HAS_NORM: tl.constexpr,
):  # fmt: skip
    """Rows [pid_f * BLOCK_F, ...) of SiLU(gate_e x[n]) x up_e x[n] into h[a] (e int64): fp32 sums along d_model;
    gate, up, SiLU(gate) and the product each rounded to x's dtype (to nearest), as the reference rounds. With
    HAS_NORM x[n] is first RMSNorm'd (``_normed``: its rstd given)."""
    offs_f = pid_f * BLOCK_F + tl.arange(0, BLOCK_F)
    mask_f = offs_f < F
    g_rows = g_ptr + e * s_ge + offs_f.to(tl.int64)[:, None] * s_gf
    u_rows = u_ptr + e * s_ue + offs_f.to(tl.int64)[:, None] * s_uf
    acc_g = tl.zeros([BLOCK_F, BLOCK_D], tl.float32)
    acc_u = tl.zeros([BLOCK_F, BLOCK_D], tl.float32)
    for d0 in range(0, D, BLOCK_D):
        offs_d = d0 + tl.arange(0, BLOCK_D)
        mask_d = offs_d < D
        xv = tl.load(x_ptr + n * s_xn + offs_d * s_xd, mask=mask_d, other=0.0).to(tl.float32)
        if HAS_NORM:
            xv = _normed(xv, rstd, nw_ptr, s_nd, offs_d, mask_d, h_ptr.dtype.element_ty)
        m2 = mask_f[:, None] & mask_d[None, :]
        gt = tl.load(g_rows + offs_d[None, :] * s_gd, mask=m2, other=0.0).to(tl.float32)
        ut = tl.load(u_rows + offs_d[None, :] * s_ud, mask=m2, other=0.0).to(tl.float32)
        acc_g += gt * xv[None, :]
        acc_u += ut * xv[None, :]
    DT = h_ptr.dtype.element_ty
    h = _swiglu(tl.sum(acc_g, axis=1), tl.sum(acc_u, axis=1), DT)
    tl.store(h_ptr + a.to(tl.int64) * F + offs_f, h.to(DT), mask=mask_f)


@triton.jit
def _gate_up_kernel(
    x_ptr, g_ptr, u_ptr, e_ptr, h_ptr,
    D, F, TOP_K,
    s_xn, s_xd, s_ge, s_gf, s_gd, s_ue, s_uf, s_ud, s_en, s_ek,
    BLOCK_F: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    pid_f = tl.program_id(0)
    a = tl.program_id(1)  # assignment: token a // TOP_K, its (a % TOP_K)-th choice
    n = a // TOP_K
    e = tl.load(e_ptr + n * s_en + (a % TOP_K) * s_ek).to(tl.int64)
    _gate_up_rows(x_ptr, g_ptr, u_ptr, h_ptr, e, n, a, pid_f, D, F, s_xn, s_xd, s_ge, s_gf, s_gd, s_ue, s_uf, s_ud,
                  BLOCK_F, BLOCK_D, x_ptr, 0, 1.0, False)  # fmt: skip


@triton.jit
def _route_gate_up_kernel(
    x_ptr, rw_ptr, rb_ptr, g_ptr, u_ptr, h_ptr, tw_ptr, te_ptr, nw_ptr,
    D, F, E,
    s_xn, s_xd, s_re, s_rd, s_rb, s_ge, s_gf, s_gd, s_ue, s_uf, s_ud, s_nd,
    TOP_K: tl.constexpr, HAS_BIAS: tl.constexpr, NORM: tl.constexpr, BLOCK_E: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_F: tl.constexpr, BLOCK_D: tl.constexpr, PDL: tl.constexpr,
    HAS_NORM: tl.constexpr, EPS: tl.constexpr, ONE_TILE: tl.constexpr,
):  # fmt: skip
    if PDL:  # the down kernel may launch now; it waits for this one to finish before it reads anything
        gdc_launch_dependents()
    pid_f = tl.program_id(0)
    a = tl.program_id(1)  # assignment: token a // TOP_K, its (a % TOP_K)-th choice
    n = a // TOP_K
    ka = a % TOP_K
    DT = h_ptr.dtype.element_ty
    offs_e = tl.arange(0, BLOCK_E)
    mask_e = offs_e < E
    offs_r = tl.arange(0, BLOCK_R)
    r_rows = rw_ptr + offs_e[:, None] * s_re
    if PDL:  # the router's first tile (a parameter: no kernel of the step writes it) while the kernel before ends
        r_first = tl.load(r_rows + offs_r[None, :] * s_rd, mask=mask_e[:, None] & (offs_r < D)[None, :], other=0.0)
        gdc_wait()  # x is the kernel before's output; h and the routing buffers may be memory it still reads

    # The block's RMSNorm of x[n]: its rms, then each tile of x normalised as it is read. Where one router tile holds
    # the whole row (ONE_TILE: d_model <= BLOCK_R), the rms comes from that tile's load: no pass of its own before it.
    rstd = tl.full([], 1.0, tl.float32)
    if HAS_NORM and not ONE_TILE:
        rstd = _rstd(x_ptr, n, s_xn, s_xd, D, EPS, BLOCK_R)
    # Router logits in fp32, rounded to x's dtype as F.linear's output (bias added before the rounding)
    acc_r = tl.zeros([BLOCK_E, BLOCK_R], tl.float32)
    for d0 in range(0, D, BLOCK_R):
        offs_d = d0 + offs_r
        mask_d = offs_d < D
        xv = tl.load(x_ptr + n * s_xn + offs_d * s_xd, mask=mask_d, other=0.0).to(tl.float32)
        if HAS_NORM:
            if ONE_TILE:
                rstd = tl.math.rsqrt(tl.sum(xv * xv, axis=0) / D + EPS)
            xv = _normed(xv, rstd, nw_ptr, s_nd, offs_d, mask_d, DT)
        if PDL:
            if d0 == 0:
                rt = r_first
            else:
                rt = tl.load(r_rows + offs_d[None, :] * s_rd, mask=mask_e[:, None] & mask_d[None, :], other=0.0)
        else:
            rt = tl.load(r_rows + offs_d[None, :] * s_rd, mask=mask_e[:, None] & mask_d[None, :], other=0.0)
        acc_r += rt.to(tl.float32) * xv[None, :]
    logits = tl.sum(acc_r, axis=1)  # (BLOCK_E,)
    if HAS_BIAS:
        logits += tl.load(rb_ptr + offs_e * s_rb, mask=mask_e, other=0.0).to(tl.float32)
    logits = tl.where(mask_e, _round(logits, DT), float("-inf"))
    # softmax in fp32 (padded experts: exp(-inf) = 0), IEEE division as torch's
    ex = tl.exp(logits - tl.max(logits, axis=0))
    p = tl.where(mask_e, tl.math.div_rn(ex, tl.sum(ex, axis=0)), float("-inf"))
    # top-K as K max passes, ties to the lowest index (topk_by_max); this assignment's choice kept
    for k in tl.static_range(TOP_K):
        v = tl.max(p, axis=0)
        i = tl.minimum(tl.min(tl.where(p == v, offs_e, BLOCK_E), axis=0), E - 1)  # NaN logits: a valid index still
        if k == 0:
            total = v
            e = i
            w = v
        else:
            total += v  # the K weights summed in order, as top_p.sum(-1)
            e = tl.where(ka == k, i, e)
            w = tl.where(ka == k, v, w)
        p = tl.where(offs_e == i, float("-inf"), p)
    if NORM:
        w = tl.math.div_rn(w, total)
    tl.store(tw_ptr + a, w, mask=pid_f == 0)  # the routing for the down kernel: one writer an assignment
    tl.store(te_ptr + a, e, mask=pid_f == 0)

    # Rows [pid_f * BLOCK_F, ...) of SiLU(gate) x up of expert e against x[n], as _gate_up_kernel
    e = e.to(tl.int64)
    _gate_up_rows(x_ptr, g_ptr, u_ptr, h_ptr, e, n, a, pid_f, D, F, s_xn, s_xd, s_ge, s_gf, s_gd, s_ue, s_uf, s_ud,
                  BLOCK_F, BLOCK_D, nw_ptr, s_nd, rstd, HAS_NORM)  # fmt: skip


@triton.jit
def _down_kernel(
    h_ptr, d_ptr, e_ptr, w_ptr, out_ptr, r_ptr,
    D, F,
    s_de, s_dd, s_df, s_en, s_ek, s_wn, s_wk, s_on, s_od, s_rn, s_rd,
    TOP_K: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_F: tl.constexpr, PDL: tl.constexpr,
    HAS_RESIDUAL: tl.constexpr,
):  # fmt: skip
    if PDL:  # h and the routing are the kernel before's, and the down rows it reads depend on them: wait first
        gdc_launch_dependents()
        gdc_wait()
    pid = tl.program_id(0)
    n = tl.program_id(1)
    offs_n = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < D
    DT = out_ptr.dtype.element_ty
    total = tl.zeros([BLOCK_N], tl.float32)
    for k in tl.static_range(TOP_K):
        e = tl.load(e_ptr + n * s_en + k * s_ek).to(tl.int64)
        wk = _round(tl.load(w_ptr + n * s_wn + k * s_wk).to(tl.float32), DT)  # the routing weight in x's dtype
        d_rows = d_ptr + e * s_de + offs_n.to(tl.int64)[:, None] * s_dd
        h_row = h_ptr + (n * TOP_K + k).to(tl.int64) * F
        acc = tl.zeros([BLOCK_N, BLOCK_F], tl.float32)
        for f0 in range(0, F, BLOCK_F):
            offs_f = f0 + tl.arange(0, BLOCK_F)
            mask_f = offs_f < F
            hw = _round(tl.load(h_row + offs_f, mask=mask_f, other=0.0).to(tl.float32) * wk, DT)
            dt = tl.load(d_rows + offs_f[None, :] * s_df, mask=mask_n[:, None] & mask_f[None, :], other=0.0)
            acc += dt.to(tl.float32) * hw[None, :]
        total += _round(tl.sum(acc, axis=1), DT)  # each choice's output rounded, as the reference's
    out = _round(total, DT)
    if HAS_RESIDUAL:  # the block's residual add: x + moe(x) in x's dtype (an fp32 sum, rounded once)
        out = _round(tl.load(r_ptr + n * s_rn + offs_n * s_rd, mask=mask_n, other=0.0).to(tl.float32) + out, DT)
    tl.store(out_ptr + n * s_on + offs_n * s_od, out.to(DT), mask=mask_n)


def _config(device: torch.device) -> dict:
    return {**(CUDA_CONFIG if device.type == "cuda" else INTERPRET_CONFIG), **CONFIG_OVERRIDE}


def down_block_n(N: int, D: int, device: torch.device) -> int:
    """Rows of output a down program computes: DOWN_BLOCK_N, halved while there are fewer than PROGRAMS_PER_SM
    programs a multiprocessor, not below DOWN_MIN_BLOCK_N."""
    cfg = _config(device)
    if device.type == "cuda":
        sms = sm_count(device.index if device.index is not None else torch.cuda.current_device())
    else:
        sms = cfg["SM_COUNT"]
    bn = cfg["DOWN_BLOCK_N"]
    while bn > cfg["DOWN_MIN_BLOCK_N"] and triton.cdiv(D, bn) * N < sms * cfg["PROGRAMS_PER_SM"]:
        bn //= 2
    return bn


def moe_decode_experts(
    x: torch.Tensor, gate_w: torch.Tensor, up_w: torch.Tensor, down_w: torch.Tensor, top_e: torch.Tensor,
    top_w: torch.Tensor,
) -> torch.Tensor:  # fmt: skip
    """The two launches (the dispatcher checked the arguments; N * K >= 1, fp16 / bf16 / fp32)."""
    N, D = x.shape
    E, F, _ = gate_w.shape
    K = top_e.shape[1]
    cfg = _config(x.device)
    dev = x.get_device() if x.is_cuda else 0
    h = torch.empty((N * K, F), device=x.device, dtype=x.dtype)
    launch(_gate_up_kernel, (triton.cdiv(F, cfg["BLOCK_F"]), N * K), (x, gate_w, up_w, top_e, h),
           (D, F, K, *x.stride(), *gate_w.stride(), *up_w.stride(), *top_e.stride()),
           (cfg["BLOCK_F"], cfg["BLOCK_D"]), cfg["num_warps"], dev)  # fmt: skip
    out = torch.empty((N, D), device=x.device, dtype=x.dtype)
    bn = down_block_n(N, D, x.device)
    launch(_down_kernel, (triton.cdiv(D, bn), N), (h, down_w, top_e, top_w, out, out),
           (D, F, *down_w.stride(), *top_e.stride(), *top_w.stride(), *out.stride(), *out.stride()),
           (K, bn, cfg["DOWN_BLOCK_F"], False, False), cfg["num_warps"], dev)  # fmt: skip
    return out


def router_block(E: int, D: int, device: torch.device) -> tuple[int, int]:
    """-> (BLOCK_E, BLOCK_R): the router tile of ``moe_decode_step``, next_pow2(E) experts by at most ROUTER_TILE /
    BLOCK_E columns of d_model (a power of 2, at least 16, no wider than d_model needs)."""
    block_e = max(2, next_pow2(E))
    return block_e, max(16, min(next_pow2(D), prev_pow2(max(1, _config(device)["ROUTER_TILE"] // block_e))))


def moe_decode_step_routing(
    x: torch.Tensor, router_w: torch.Tensor, router_b: torch.Tensor | None, gate_w: torch.Tensor, up_w: torch.Tensor,
    down_w: torch.Tensor, top_k: int, norm_topk_prob: bool, norm_weight: torch.Tensor | None = None,
    eps: float = 1e-5, residual: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    """``moe_decode_step``'s two launches -> (out (N, D) in x's dtype, top_w (N, K) fp32, top_e (N, K) int32): the
    output and the routing the first kernel computed (the dispatcher checked the arguments; N >= 1, fp16 / bf16 /
    fp32). ``norm_weight`` / ``eps``: the block's RMSNorm of x inside the first kernel; ``residual``: added by the
    second."""
    N, D = x.shape
    E, F, _ = gate_w.shape
    K = top_k
    cfg = _config(x.device)
    dev = x.get_device() if x.is_cuda else 0
    pdl = pdl_enabled(x.device)
    h = torch.empty((N * K, F), device=x.device, dtype=x.dtype)
    top_w = torch.empty((N, K), device=x.device, dtype=torch.float32)
    top_e = torch.empty((N, K), device=x.device, dtype=torch.int32)
    block_e, block_r = router_block(E, D, x.device)
    rb = router_b if router_b is not None else router_w  # unused without HAS_BIAS: a dummy tensor, never None
    nw = norm_weight if norm_weight is not None else router_w  # unused without HAS_NORM: a dummy tensor
    launch(_route_gate_up_kernel, (triton.cdiv(F, cfg["BLOCK_F"]), N * K),
           (x, router_w, rb, gate_w, up_w, h, top_w, top_e, nw),
           (D, F, E, *x.stride(), *router_w.stride(), rb.stride(0), *gate_w.stride(), *up_w.stride(), nw.stride(0)),
           (K, router_b is not None, bool(norm_topk_prob), block_e, block_r, cfg["BLOCK_F"], cfg["BLOCK_D"], pdl,
            norm_weight is not None, float(eps), block_r >= D),
           cfg["num_warps"], dev, pdl)  # fmt: skip
    out = torch.empty((N, D), device=x.device, dtype=x.dtype)
    bn = down_block_n(N, D, x.device)
    res = residual if residual is not None else out  # unused without HAS_RESIDUAL
    launch(_down_kernel, (triton.cdiv(D, bn), N), (h, down_w, top_e, top_w, out, res),
           (D, F, *down_w.stride(), *top_e.stride(), *top_w.stride(), *out.stride(), *res.stride()),
           (K, bn, cfg["DOWN_BLOCK_F"], pdl, residual is not None), cfg["num_warps"], dev, pdl)  # fmt: skip
    return out, top_w, top_e


def moe_decode_step(
    x: torch.Tensor, router_w: torch.Tensor, router_b: torch.Tensor | None, gate_w: torch.Tensor, up_w: torch.Tensor,
    down_w: torch.Tensor, top_k: int, norm_topk_prob: bool, norm_weight: torch.Tensor | None = None,
    eps: float = 1e-5, residual: torch.Tensor | None = None,
) -> torch.Tensor:  # fmt: skip
    """The two launches -> out (N, D) (``moe_decode_step_routing`` without the routing)."""
    return moe_decode_step_routing(x, router_w, router_b, gate_w, up_w, down_w, top_k, norm_topk_prob, norm_weight,
                                   eps, residual)[0]  # fmt: skip


__all__ = ["CONFIG_OVERRIDE", "CUDA_CONFIG", "INTERPRET_CONFIG", "down_block_n", "moe_decode_experts",
           "moe_decode_step", "moe_decode_step_routing", "router_block"]  # fmt: skip
