"""BASED attention in Triton: forward and backward from the d-dim dot products, never expanding the
1 + d + d^2 Taylor features (fla's ``parallel_based`` computes the same function the same way).

With s = q.k * scale (scale = d^-1/2), a = 1 + s + s^2 / 2 (causal), num = a v, den = rowsum(a):

    o = num / (den + eps)

**Forward.** One program per (block of ``BLOCK`` queries, batch * head) walks the key blocks up to its
diagonal: s = q k^T, a, then acc += a v and den += rowsum(a), in fp32. It writes o and den (B, H, T) fp32.

**Backward.** With dnum = do / (den + eps) and dden = -(do . o) / (den + eps) (made by the host, elementwise),
da = dnum v^T + dden and ds = da (1 + s) on the causal pairs:

    dq = scale * ds k          (one program per query block, over the key blocks up to its diagonal)
    dk = scale * ds^T q;  dv = a^T dnum   (one program per key block, over the query blocks from its diagonal)

Both recompute s and a; nothing of size T^2 is kept. The work is quadratic in T (as fla's parallel form);
the chunked linear-attention form over the expanded features is linear in T but moves 1 + d + d^2 features
per position (``archzoo.kernels.linear_attention``), which is what the layer runs without this kernel.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from .._dispatch import triton_interpreting
from .naive import check_based

BLOCK = 64
NUM_WARPS = 4
MAX_D = 64  # query/key dims (BASED uses 16)
MAX_DV = 128  # value dims a program holds whole


@triton.jit
def _mm(a, b, LOWP: tl.constexpr):
    """a @ b, fp32 accumulation: bf16/fp16 MMAs for low-precision inputs, fp32 ones as tf32x3."""
    if LOWP:
        return tl.dot(a, b)
    return tl.dot(a, b, input_precision="tf32x3")


@triton.jit
def _tile(ptr, rows, r, cols, T, W, LOWP: tl.constexpr):
    """The tile of a (B, T, H, W) tensor at flat rows ``rows`` (positions ``r``) and columns ``cols``, zero outside
    the sequence and the width; fp32 unless the MMAs are low-precision."""
    x = tl.load(ptr + rows[:, None] * W + cols[None, :], mask=(r[:, None] < T) & (cols[None, :] < W), other=0.0)
    if not LOWP:
        x = x.to(tl.float32)
    return x


@triton.jit
def _fwd_kernel(
    q_ptr, k_ptr, v_ptr, o_ptr, den_ptr,
    T, H, D, DV, scale, eps,
    BLOCK: tl.constexpr, BD: tl.constexpr, BV: tl.constexpr, LOWP: tl.constexpr,
):  # fmt: skip
    i_m = tl.program_id(0)
    i_bh = tl.program_id(1).to(tl.int64)
    i_b = i_bh // H
    i_h = i_bh % H
    DT = v_ptr.dtype.element_ty
    rm = i_m * BLOCK + tl.arange(0, BLOCK)
    rd = tl.arange(0, BD)
    rv = tl.arange(0, BV)
    row_m = (i_b * T + rm) * H + i_h  # (BLOCK,) row index into (B, T, H, .)
    q = _tile(q_ptr, row_m, rm, rd, T, D, LOWP)
    acc = tl.zeros((BLOCK, BV), dtype=tl.float32)
    den = tl.zeros((BLOCK,), dtype=tl.float32)
    for start in range(0, (i_m + 1) * BLOCK, BLOCK):
        rn = start + tl.arange(0, BLOCK)
        row_n = (i_b * T + rn) * H + i_h
        k = _tile(k_ptr, row_n, rn, rd, T, D, LOWP)
        v = _tile(v_ptr, row_n, rn, rv, T, DV, LOWP)
        s = _mm(q, tl.trans(k), LOWP) * scale
        a = 1.0 + s + 0.5 * s * s
        a = tl.where((rn[None, :] <= rm[:, None]) & (rn[None, :] < T), a, 0.0)
        den += tl.sum(a, 1)
        acc += _mm(a.to(v.dtype), v, LOWP)  # the weights rounded to the MMA's dtype
    o = acc / (den + eps)[:, None]
    tl.store(o_ptr + row_m[:, None] * DV + rv[None, :], o.to(DT), mask=(rm[:, None] < T) & (rv[None, :] < DV))
    tl.store(den_ptr + i_bh * T + rm, den, mask=rm < T)


@triton.jit
def _bwd_dq_kernel(
    q_ptr, k_ptr, v_ptr, dnum_ptr, dden_ptr, dq_ptr,
    T, H, D, DV, scale,
    BLOCK: tl.constexpr, BD: tl.constexpr, BV: tl.constexpr, LOWP: tl.constexpr,
):  # fmt: skip
    i_m = tl.program_id(0)
    i_bh = tl.program_id(1).to(tl.int64)
    i_b = i_bh // H
    i_h = i_bh % H
    DT = q_ptr.dtype.element_ty
    rm = i_m * BLOCK + tl.arange(0, BLOCK)
    rd = tl.arange(0, BD)
    rv = tl.arange(0, BV)
    row_m = (i_b * T + rm) * H + i_h
    in_m = rm[:, None] < T
    q = _tile(q_ptr, row_m, rm, rd, T, D, LOWP)
    dnum = _tile(dnum_ptr, row_m, rm, rv, T, DV, LOWP)
    dden = tl.load(dden_ptr + i_bh * T + rm, mask=rm < T, other=0.0)
    dq = tl.zeros((BLOCK, BD), dtype=tl.float32)
    for start in range(0, (i_m + 1) * BLOCK, BLOCK):
        rn = start + tl.arange(0, BLOCK)
        row_n = (i_b * T + rn) * H + i_h
        k = _tile(k_ptr, row_n, rn, rd, T, D, LOWP)
        v = _tile(v_ptr, row_n, rn, rv, T, DV, LOWP)
        s = _mm(q, tl.trans(k), LOWP) * scale
        da = _mm(dnum, tl.trans(v), LOWP) + dden[:, None]
        ds = tl.where((rn[None, :] <= rm[:, None]) & (rn[None, :] < T), da * (1.0 + s), 0.0)
        dq += _mm(ds.to(k.dtype), k, LOWP)
    tl.store(dq_ptr + row_m[:, None] * D + rd[None, :], (dq * scale).to(DT), mask=in_m & (rd[None, :] < D))


@triton.jit
def _bwd_dkdv_kernel(
    q_ptr, k_ptr, v_ptr, dnum_ptr, dden_ptr, dk_ptr, dv_ptr,
    T, H, D, DV, scale,
    BLOCK: tl.constexpr, BD: tl.constexpr, BV: tl.constexpr, LOWP: tl.constexpr,
):  # fmt: skip
    i_n = tl.program_id(0)
    i_bh = tl.program_id(1).to(tl.int64)
    i_b = i_bh // H
    i_h = i_bh % H
    DT = q_ptr.dtype.element_ty
    rn = i_n * BLOCK + tl.arange(0, BLOCK)
    rd = tl.arange(0, BD)
    rv = tl.arange(0, BV)
    row_n = (i_b * T + rn) * H + i_h
    in_n = rn[:, None] < T
    k = _tile(k_ptr, row_n, rn, rd, T, D, LOWP)
    v = _tile(v_ptr, row_n, rn, rv, T, DV, LOWP)
    dk = tl.zeros((BLOCK, BD), dtype=tl.float32)
    dv = tl.zeros((BLOCK, BV), dtype=tl.float32)
    for start in range(i_n * BLOCK, T, BLOCK):
        rm = start + tl.arange(0, BLOCK)
        row_m = (i_b * T + rm) * H + i_h
        q = _tile(q_ptr, row_m, rm, rd, T, D, LOWP)
        dnum = _tile(dnum_ptr, row_m, rm, rv, T, DV, LOWP)
        dden = tl.load(dden_ptr + i_bh * T + rm, mask=rm < T, other=0.0)
        causal = (rm[None, :] >= rn[:, None]) & (rm[None, :] < T)  # (keys, queries)
        sT = _mm(k, tl.trans(q), LOWP) * scale  # (BLOCK keys, BLOCK queries)
        aT = tl.where(causal, 1.0 + sT + 0.5 * sT * sT, 0.0)
        daT = _mm(v, tl.trans(dnum), LOWP) + dden[None, :]
        dsT = tl.where(causal, daT * (1.0 + sT), 0.0)
        dv += _mm(aT.to(dnum.dtype), dnum, LOWP)
        dk += _mm(dsT.to(q.dtype), q, LOWP)
    tl.store(dk_ptr + row_n[:, None] * D + rd[None, :], (dk * scale).to(DT), mask=in_n & (rd[None, :] < D))
    tl.store(dv_ptr + row_n[:, None] * DV + rv[None, :], dv.to(DT), mask=in_n & (rv[None, :] < DV))


def _tiles(D: int, Dv: int) -> tuple[int, int]:
    return max(16, triton.next_power_of_2(D)), max(16, triton.next_power_of_2(Dv))


def _lowp(dtype: torch.dtype) -> bool:
    # Triton's interpreter computes tl.dot of bf16 operands wrongly: there the tiles are widened to fp32 (as in
    # the linear-attention kernel); compiled, bf16 / fp16 tiles go to the MMAs.
    return dtype in (torch.bfloat16, torch.float16) and not triton_interpreting()


class _BasedAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, eps):
        B, T, H, D = q.shape
        Dv = v.shape[-1]
        BD, BV = _tiles(D, Dv)
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        o = torch.empty_like(v)
        den = q.new_empty(B, H, T, dtype=torch.float32)
        scale = 1.0 / math.sqrt(D)
        _fwd_kernel[(triton.cdiv(T, BLOCK), B * H)](
            q, k, v, o, den, T, H, D, Dv, scale, float(eps),
            BLOCK=BLOCK, BD=BD, BV=BV, LOWP=_lowp(q.dtype), num_warps=NUM_WARPS,
        )  # fmt: skip
        ctx.save_for_backward(q, k, v, o, den)
        ctx.eps = float(eps)
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, den = ctx.saved_tensors
        B, T, H, D = q.shape
        Dv = v.shape[-1]
        BD, BV = _tiles(D, Dv)
        inv = 1.0 / (den + ctx.eps)  # (B, H, T) fp32
        inv_bthd = inv.transpose(1, 2)[..., None]  # (B, T, H, 1)
        dof = do.float()
        dnum = (dof * inv_bthd).to(q.dtype).contiguous()  # (B, T, H, Dv)
        dden = (-(dof * o.float()).sum(-1) * inv_bthd[..., 0]).transpose(1, 2).contiguous()  # (B, H, T) fp32
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        scale = 1.0 / math.sqrt(D)
        grid = (triton.cdiv(T, BLOCK), B * H)
        lowp = _lowp(q.dtype)
        _bwd_dq_kernel[grid](
            q, k, v, dnum, dden, dq, T, H, D, Dv, scale, BLOCK=BLOCK, BD=BD, BV=BV, LOWP=lowp, num_warps=NUM_WARPS
        )
        _bwd_dkdv_kernel[grid](
            q, k, v, dnum, dden, dk, dv, T, H, D, Dv, scale, BLOCK=BLOCK, BD=BD, BV=BV, LOWP=lowp,
            num_warps=NUM_WARPS,
        )  # fmt: skip
        return dq, dk, dv, None


def based_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Triton BASED attention, differentiable: o (B, T, H, Dv) for q, k (B, T, H, d), v (B, T, H, Dv) of one
    dtype (fp32, bf16 or fp16), d <= ``MAX_D``, Dv <= ``MAX_DV``. See the module docstring."""
    check_based(q, k, v, eps)
    reason = unsupported(q, k, v)
    if reason is not None:
        raise ValueError(reason)
    return _BasedAttention.apply(q, k, v, eps)


def unsupported(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> str | None:
    """Why the Triton kernel cannot take these inputs, or None when it can."""
    if q.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        return f"the Triton kernel takes float32, bfloat16 or float16 inputs, not {q.dtype}"
    if k.dtype != q.dtype or v.dtype != q.dtype:
        return f"the Triton kernel needs q, k, v of one dtype, got {q.dtype}, {k.dtype}, {v.dtype}"
    if q.shape[-1] > MAX_D or v.shape[-1] > MAX_DV:
        return f"query/key dim {q.shape[-1]} > {MAX_D} or value dim {v.shape[-1]} > {MAX_DV}"
    return None
