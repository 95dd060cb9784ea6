"""Triton kernel of ``moe_route``: the MoE layer's routing of many tokens and the grouped plan's first launch in one.

``_route_count_kernel``, grid (route chunks,): program c takes assignments [c * ROUTE_BLOCK, (c + 1) * ROUTE_BLOCK)
(a = k * N + n, ``triton.py``'s numbering; ROUTE_BLOCK 64 on CUDA, a power of 2 that divides the plan's PLAN_BLOCK,
so 128 programs at 4,096 tokens x top-2 where the plan's count launch had 16), and for each computes its token's
routing as ``MoE.forward`` does: the router's logits
x[n] @ router_w.T (+ bias) as fp32 sums rounded to x's dtype (``F.linear``'s output, which the layer widens to fp32),
their softmax in fp32, the top-K by K max passes (ties to the lowest index, ``topk_by_max``), with ``NORM`` the K
weights divided by their sum; then keeps choice k = a // N: top_e[n, k] (int32) and top_w[n, k] (rounded to x's
dtype, as the layer's ``top_p.to(dtype)``), and counts[c, e], the chunk's assignments on expert e: what
``triton._count_kernel`` writes, in chunks PLAN_BLOCK / ROUTE_BLOCK times finer, which the place launch sums
(its RATIO), so ``plan(..., counts=)`` goes straight to its place launch.

Why (issue 19's MoE forward, 1.33x the dense layer where 1.3x is asked, twenty-fourth session on an H100): the
layer's routing was three launches before the experts' plan (the router's product in cuBLAS, 3.3 us for 4,096 x 576 x
8; the compiled softmax and top-k; then the plan's count, 2.8 us), each with its launch gap in a CUDA graph, for 4.7
MB of x read once. Here one launch reads x twice (each token's routing is computed by the K programs holding one of
its choices: the same code and tiles, so the same bits) and writes what the three wrote.

The logits come from ``tl.dot`` over BLOCK_D tiles of d_model (fp32 sums; on the GPU bf16 operands on the tensor
cores, under the interpreter widened to fp32, whose bf16 ``tl.dot`` is wrong): the order of the sums is not cuBLAS's,
so a logit may round to a neighbouring bf16 value where the reference's fp32 sum sits on a rounding boundary, and a
near-tie between two experts may then break the other way (the decode step's routing kernel, ``moe_step``, has the
same property and the same tests).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._dispatch import triton_interpreting
from .._launch import launch
from .._sizes import next_pow2
from .triton import _config, _rnd, plan_sizes

# BLOCK_D: d_model columns a step of the router's product; ROUTE_WARPS: the program's warps (ROUTE_BLOCK rows of x a
# program, triton.py's CUDA_CONFIG: a (64, 64) bf16 tile a step). Untimed: the first choice, not a tuning.
CUDA_ROUTE = dict(BLOCK_D=64, ROUTE_WARPS=4)
INTERPRET_ROUTE = dict(BLOCK_D=16, ROUTE_WARPS=1)


@triton.jit
def _route_count_kernel(
    x_ptr, rw_ptr, rb_ptr, tw_ptr, te_ptr, counts_ptr, lg_ptr,
    N, A, D, E, s_xn, s_xd, s_re, s_rd, s_rb, s_twn, s_twk, s_ten, s_tek, s_lgn,
    TOP_K: tl.constexpr, HAS_BIAS: tl.constexpr, NORM: tl.constexpr, BLOCK_A: tl.constexpr, BLOCK_E: tl.constexpr,
    BLOCK_D: tl.constexpr, DOT_F32: tl.constexpr, DOT_PRECISION: tl.constexpr, HW: tl.constexpr,
):  # fmt: skip
    c = tl.program_id(0)
    DT = tw_ptr.dtype.element_ty
    offs_a = c * BLOCK_A + tl.arange(0, BLOCK_A)
    mask_a = offs_a < A
    n = tl.where(mask_a, offs_a % N, 0)  # token
    ka = offs_a // N  # its choice
    offs_e = tl.arange(0, BLOCK_E)
    mask_e = offs_e < E
    offs_d = tl.arange(0, BLOCK_D)
    x_rows = x_ptr + n.to(tl.int64)[:, None] * s_xn
    acc = tl.zeros([BLOCK_A, BLOCK_E], tl.float32)
    for d0 in range(0, D, BLOCK_D):
        dd = d0 + offs_d
        mask_d = dd < D
        xt = tl.load(x_rows + dd[None, :] * s_xd, mask=mask_a[:, None] & mask_d[None, :], other=0.0)  # (A, BD)
        wt = tl.load(rw_ptr + offs_e[None, :] * s_re + dd[:, None] * s_rd, mask=mask_d[:, None] & mask_e[None, :],
                     other=0.0)  # (BD, BE)  # fmt: skip
        if DOT_F32:
            xt = xt.to(tl.float32)
            wt = wt.to(tl.float32)
        acc = tl.dot(xt, wt, acc, input_precision=DOT_PRECISION)
    if HAS_BIAS:
        acc += tl.load(rb_ptr + offs_e * s_rb, mask=mask_e, other=0.0).to(tl.float32)[None, :]
    logits = tl.where(mask_e[None, :], _rnd(acc, x_ptr.dtype.element_ty, HW), float("-inf"))
    # the logits as the layer holds them (x's dtype widened to fp32), for its losses: by the first choices' programs,
    # each token once
    first = mask_a & (ka == 0)
    tl.store(lg_ptr + n.to(tl.int64)[:, None] * s_lgn + offs_e[None, :], logits, mask=first[:, None] & mask_e[None, :])
    # softmax in fp32 (padded experts: exp(-inf) = 0), IEEE division as torch's
    ex = tl.exp(logits - tl.max(logits, axis=1)[:, None])
    p = tl.where(mask_e[None, :], tl.math.div_rn(ex, tl.sum(ex, axis=1)[:, None]), float("-inf"))
    # top-K as K max passes, ties to the lowest index (topk_by_max); each assignment keeps its own choice
    total = tl.zeros([BLOCK_A], tl.float32)
    e = tl.zeros([BLOCK_A], tl.int32)
    w = tl.zeros([BLOCK_A], tl.float32)
    for k in tl.static_range(TOP_K):
        v = tl.max(p, axis=1)
        i = tl.minimum(tl.min(tl.where(p == v[:, None], offs_e[None, :], BLOCK_E), axis=1), E - 1)
        total += v  # the K weights summed in order, as top_p.sum(-1)
        e = tl.where(ka == k, i, e)
        w = tl.where(ka == k, v, w)
        p = tl.where(offs_e[None, :] == i[:, None], float("-inf"), p)
    if NORM:
        w = tl.math.div_rn(w, total)
    tl.store(tw_ptr + n * s_twn + ka * s_twk, _rnd(w, DT, HW).to(DT), mask=mask_a)
    tl.store(te_ptr + n * s_ten + ka * s_tek, e, mask=mask_a)
    for ee in range(0, E):
        tl.store(counts_ptr + c * E + ee, tl.sum((mask_a & (e == ee)).to(tl.int32), axis=0))


def route_and_count(
    x: torch.Tensor, router_w: torch.Tensor, router_b: torch.Tensor | None, top_k: int, norm_topk_prob: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """x (N, D), router_w (E, D), router_b (E,) or None -> (top_w (N, K) in x's dtype, top_e (N, K) int32, counts
    (chunks, E) int32 for ``triton.plan``, logits (N, E) fp32: rounded to x's dtype, as the layer's router output
    widened): one launch (module docstring). N * K >= 1; the dispatcher checked the arguments."""
    N, D = x.shape
    E = router_w.shape[0]
    K = top_k
    s = plan_sizes(N, K, E, x.device)
    cfg = {**(CUDA_ROUTE if x.is_cuda else INTERPRET_ROUTE)}
    dev = x.get_device() if x.is_cuda else 0
    top_w = torch.empty((N, K), device=x.device, dtype=x.dtype)
    top_e = torch.empty((N, K), device=x.device, dtype=torch.int32)
    counts = torch.empty((s["route_chunks"], E), device=x.device, dtype=torch.int32)
    logits = torch.empty((N, E), device=x.device, dtype=torch.float32)
    rb = router_b if router_b is not None else router_w  # unused without HAS_BIAS
    dot_f32 = x.dtype == torch.float32 or not x.is_cuda  # as the experts' kernels (triton.py)
    launch(_route_count_kernel, (s["route_chunks"],), (x, router_w, rb, top_w, top_e, counts, logits),
           (N, N * K, D, E, *x.stride(), *router_w.stride(), rb.stride(0), *top_w.stride(), *top_e.stride(), E),
           (K, router_b is not None, bool(norm_topk_prob), s["route_block"], max(16, next_pow2(E)), cfg["BLOCK_D"],
            dot_f32, "ieee" if dot_f32 else None, bool(_config(x.device)["HW_ROUND"]) and not triton_interpreting()),
           cfg["ROUTE_WARPS"], dev)  # fmt: skip
    return top_w, top_e, counts, logits


__all__ = ["CUDA_ROUTE", "INTERPRET_ROUTE", "route_and_count"]
