"""One decode step of causal linear attention in Triton: the state update and the output in one pass.

Same semantics as :func:`archzoo.kernels.linear_attention.naive.naive_linear_attention_update`:

    S += k v^T,  z += k  (in place);  o = q S / (q z + eps)   (o = q S without normalisation)

The PyTorch form reads the state S (B, H, F, Dv) twice and writes it once (the in-place add, then the
q S product); a decode step of a recurrent student at batch 64 is mostly that traffic (BASED's state
is 64 x 273 x 64 fp32 values per head). Here one program per batch * head walks the value columns in
blocks of ``BV`` (one block for Dv <= 64) and, in each, the feature dim in tiles of ``BF``: it loads a
tile of S once, adds k v^T, stores it and accumulates q . S into o, so S is read once and written once.
The normaliser needs z before its update and every value block needs the normaliser, so z is written
after the last block, by the same program (programs of one head in parallel would race on z). The state
stays in fp32; q, k, v (fp32, bf16 or fp16) are widened to it.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK_F = 64
MAX_BLOCK_V = 64
NUM_WARPS = 4


@triton.jit
def _update_kernel(
    S_ptr, z_ptr, q_ptr, k_ptr, v_ptr, o_ptr,
    H, F, DV, eps,
    s_sb, s_sh, s_sf, s_sd,
    s_zb, s_zh, s_zf,
    s_qb, s_qh, s_qf,
    s_kb, s_kh, s_kf,
    s_vb, s_vh, s_vd,
    s_ob, s_oh, s_od,
    NORMALIZE: tl.constexpr, BF: tl.constexpr, BV: tl.constexpr,
):  # fmt: skip
    bh = tl.program_id(0).to(tl.int64)
    b = bh // H
    h = bh % H
    q_base = q_ptr + b * s_qb + h * s_qh
    k_base = k_ptr + b * s_kb + h * s_kh
    z_base = z_ptr + b * s_zb + h * s_zh
    for v0 in range(0, DV, BV):  # one pass for value dims up to BV
        rv = v0 + tl.arange(0, BV)
        mv = rv < DV
        v = tl.load(v_ptr + b * s_vb + h * s_vh + rv * s_vd, mask=mv, other=0.0).to(tl.float32)
        o = tl.zeros([BV], dtype=tl.float32)
        den = tl.zeros([BF], dtype=tl.float32)
        for f0 in range(0, F, BF):
            rf = f0 + tl.arange(0, BF)
            mf = rf < F
            q = tl.load(q_base + rf * s_qf, mask=mf, other=0.0).to(tl.float32)
            k = tl.load(k_base + rf * s_kf, mask=mf, other=0.0).to(tl.float32)
            s_ptrs = S_ptr + b * s_sb + h * s_sh + rf[:, None] * s_sf + rv[None, :] * s_sd
            ms = mf[:, None] & mv[None, :]
            S = tl.load(s_ptrs, mask=ms, other=0.0) + k[:, None] * v[None, :]
            tl.store(s_ptrs, S, mask=ms)
            o += tl.sum(q[:, None] * S, axis=0)
            if NORMALIZE:  # z is written after the last value block: here it still holds the old state
                den += q * (tl.load(z_base + rf * s_zf, mask=mf, other=0.0) + k)
        if NORMALIZE:
            o = o / (tl.sum(den, axis=0) + eps)
        tl.store(o_ptr + b * s_ob + h * s_oh + rv * s_od, o.to(o_ptr.dtype.element_ty), mask=mv)
    for f0 in range(0, F, BF):
        rf = f0 + tl.arange(0, BF)
        mf = rf < F
        k = tl.load(k_base + rf * s_kf, mask=mf, other=0.0).to(tl.float32)
        tl.store(z_base + rf * s_zf, tl.load(z_base + rf * s_zf, mask=mf, other=0.0) + k, mask=mf)


def unsupported(S: torch.Tensor, z: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> str | None:
    """Why the kernel cannot take these tensors, or None when it can."""
    if S.dtype != torch.float32 or z.dtype != torch.float32:
        return f"the Triton update keeps an fp32 state; got S {S.dtype}, z {z.dtype} (the PyTorch form runs)"
    if q.dtype not in (torch.float32, torch.bfloat16, torch.float16) or k.dtype != q.dtype or v.dtype != q.dtype:
        return f"the Triton update takes q, k, v of one dtype (fp32, bf16, fp16), got {q.dtype}, {k.dtype}, {v.dtype}"
    return None


def linear_attention_update(
    S: torch.Tensor,
    z: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    normalize: bool = True,
    eps: float = 1e-6,
) -> torch.Tensor:
    """One decode step in one kernel; S (B, H, F, Dv) and z (B, H, F) fp32, updated IN PLACE; q, k (B, H, F),
    v (B, H, Dv). Returns o (B, H, Dv) in q's dtype. Shapes are checked by the dispatcher."""
    B, H, F, Dv = S.shape
    o = torch.empty((B, H, Dv), device=q.device, dtype=q.dtype)
    BV = max(16, min(MAX_BLOCK_V, triton.next_power_of_2(Dv)))
    grid = (B * H,)
    _update_kernel[grid](
        S, z, q, k, v, o,
        H, F, Dv, float(eps),
        *S.stride(), *z.stride(), *q.stride(), *k.stride(), *v.stride(), *o.stride(),
        NORMALIZE=bool(normalize), BF=BLOCK_F, BV=BV, num_warps=NUM_WARPS,
    )  # fmt: skip
    return o
