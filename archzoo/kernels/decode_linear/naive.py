"""Decode GEMV, the PyTorch forms: the fp32 reference and the unfused form the model runs today.

``naive_decode_linear`` is the reference the Triton kernel is tested against; ``torch_decode_linear`` is what
the dispatcher falls back to for inputs the kernel does not take (M > 64, float64): the norm as the model's
``RMSNorm`` module, then ``F.linear`` (cuBLAS on a GPU).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..causal_conv1d.naive import naive_causal_conv1d_update
from ._checks import check_conv_epilogue, check_decode_linear


def rms_norm(x: torch.Tensor, norm_weight: torch.Tensor, eps: float) -> torch.Tensor:
    """``layers/norm.py``'s ``RMSNorm.forward``, step for step: the rms in fp32 (``x.float()``, so a float64 x is
    normalised in fp32 too), the normalised x rounded back to x's dtype, then ``norm_weight *`` it (in the two
    dtypes' promoted dtype: bf16 x with bf16 weights stays bf16)."""
    dtype = x.dtype
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return norm_weight * xf.to(dtype)


def _normed(x: torch.Tensor, norm_weight: torch.Tensor | None, eps: float) -> torch.Tensor:
    return x if norm_weight is None else rms_norm(x, norm_weight, eps)


def swiglu_pairs(y: torch.Tensor) -> torch.Tensor:
    """(..., 2F) with columns interleaved [g0, u0, g1, u1, ...] -> silu(g) * u (..., F), in y's dtype (the
    unfused path's roundings: ``F.silu`` of the rounded g, times the rounded u)."""
    g, u = y.unflatten(-1, (-1, 2)).unbind(-1)
    return F.silu(g) * u


def naive_decode_linear(
    x: torch.Tensor, weight: torch.Tensor, norm_weight: torch.Tensor | None = None, eps: float = 1e-5,
    residual: torch.Tensor | None = None, swiglu: bool = False, bias: torch.Tensor | None = None,
) -> torch.Tensor:  # fmt: skip
    """``(rms_norm(x) * norm_weight if norm_weight is given else x) @ weight.T``, the product in fp32 (float64 for
    float64 inputs), returned in x's dtype. x (M, K), weight (N, K), norm_weight (K,) -> (M, N).

    ``bias`` (N,): added to the fp32 product (as F.linear's epilogue does). ``residual`` (M, N): added after it,
    before the one rounding. ``swiglu``: weight's rows are (gate, up) pairs; -> (M, N // 2) = silu(g) * u with g
    and u rounded to x's dtype first (``swiglu_pairs``)."""
    check_decode_linear(x, weight, norm_weight, eps, residual, swiglu, bias)
    h = _normed(x, norm_weight, eps)
    ct = torch.promote_types(x.dtype, torch.float32)
    y = h.to(ct) @ weight.to(ct).T
    if bias is not None:
        y = y + bias.to(ct)
    if residual is not None:
        y = y + residual.to(ct)
    y = y.to(x.dtype)
    return swiglu_pairs(y) if swiglu else y


def torch_decode_linear(
    x: torch.Tensor, weight: torch.Tensor, norm_weight: torch.Tensor | None = None, eps: float = 1e-5,
    residual: torch.Tensor | None = None, swiglu: bool = False, bias: torch.Tensor | None = None,
) -> torch.Tensor:  # fmt: skip
    """The unfused form: ``rms_norm`` (when norm_weight is given) then ``F.linear`` in the inputs' dtype (in the
    promoted dtype where the norm's output differs from weight's), returned in x's dtype; then ``residual +`` it
    (in x's dtype: a second rounding) or ``swiglu_pairs`` of it. No validation."""
    h = _normed(x, norm_weight, eps)
    if h.dtype != weight.dtype:
        ct = torch.promote_types(h.dtype, weight.dtype)
        h, weight = h.to(ct), weight.to(ct)
        bias = bias.to(ct) if bias is not None else None
    y = F.linear(h, weight, bias).to(x.dtype)
    if residual is not None:
        y = residual + y
    return swiglu_pairs(y) if swiglu else y


def rope_pair_order(n_heads: int, n_kv_heads: int, head_dim: int) -> torch.Tensor:
    """The row order of a Q|K|V weight for ``decode_qkv_rope``: ``weight[order]`` puts each Q and K head's RoPE pair
    (dims j and j + head_dim / 2, ``apply_rope``'s rotate_half layout) on adjacent rows (2j, 2j + 1); V rows stay.
    Its inverse (``argsort``) takes the layout back."""
    D, half = head_dim, head_dim // 2
    j = torch.arange(half)
    head = torch.stack([j, j + half], dim=1).flatten()  # [0, D/2, 1, D/2 + 1, ...]
    rope_rows = torch.cat([h * D + head for h in range(n_heads + n_kv_heads)])
    return torch.cat([rope_rows, torch.arange((n_heads + n_kv_heads) * D, (n_heads + 2 * n_kv_heads) * D)])


def naive_decode_qkv_rope(
    x: torch.Tensor, weight: torch.Tensor, norm_weight: torch.Tensor | None, eps: float, positions: torch.Tensor,
    inv_freq: torch.Tensor, n_heads: int, n_kv_heads: int, head_dim: int, k_cache: torch.Tensor,
    v_cache: torch.Tensor, tokens_per_row: int = 1,
) -> torch.Tensor:  # fmt: skip
    """The reference of ``decode_qkv_rope``: the projection (``naive_decode_linear`` on the weight's rows put back in
    order), then RoPE in x's dtype as ``apply_rope`` computes it (cos and sin of the fp32 angles rounded to x's
    dtype, each product and the sum rounded), K and V written to slot ``positions % slots`` of cache row
    ``m // tokens_per_row`` (x's rows are the cache rows' tokens in order). Returns q (M, n_heads * head_dim)."""
    D, H, Hkv = head_dim, n_heads, n_kv_heads
    w = weight[torch.argsort(rope_pair_order(H, Hkv, D).to(weight.device))]
    y = naive_decode_linear(x, w, norm_weight, eps)  # (M, N) in x's dtype
    return _rope_and_write(y, positions, inv_freq, H, Hkv, D, k_cache, v_cache, tokens_per_row)


def naive_decode_rope_write(
    y: torch.Tensor, positions: torch.Tensor, inv_freq: torch.Tensor, n_heads: int, n_kv_heads: int, head_dim: int,
    k_cache: torch.Tensor, v_cache: torch.Tensor, tokens_per_row: int = 1,
) -> torch.Tensor:  # fmt: skip
    """The reference of ``decode_rope_write``: y (M, N), the fused Q|K|V copy's output (its columns in
    ``rope_pair_order``), put back in head order, then ``naive_decode_qkv_rope``'s RoPE and cache write."""
    y = y[:, torch.argsort(rope_pair_order(n_heads, n_kv_heads, head_dim).to(y.device))]
    return _rope_and_write(y, positions, inv_freq, n_heads, n_kv_heads, head_dim, k_cache, v_cache, tokens_per_row)


def _rope_and_write(y, positions, inv_freq, H, Hkv, D, k_cache, v_cache, tokens_per_row) -> torch.Tensor:
    """y (M, N) Q|K|V in head order: RoPE on Q and K in y's dtype, K and V into the caches; returns q (M, H * D)."""
    M = y.shape[0]
    q, k, v = y.split([H * D, Hkv * D, Hkv * D], dim=-1)
    ang = positions.to(torch.float32)[:, None] * inv_freq.float()[None, :]  # (M, D/2)
    emb = torch.cat([ang, ang], dim=-1)
    cos, sin = emb.cos().to(y.dtype)[:, None], emb.sin().to(y.dtype)[:, None]  # (M, 1, D)

    def rope(t: torch.Tensor, heads: int) -> torch.Tensor:
        t = t.view(M, heads, D)
        t1, t2 = t.chunk(2, dim=-1)
        return t * cos + torch.cat([-t2, t1], dim=-1) * sin

    q, k = rope(q, H), rope(k, Hkv)
    slot = positions.long() % k_cache.shape[2]
    rows = torch.arange(M, device=y.device) // tokens_per_row
    k_cache[rows, :, slot] = k.to(k_cache.dtype)
    v_cache[rows, :, slot] = v.view(M, Hkv, D).to(v_cache.dtype)
    return q.reshape(M, H * D)


def naive_decode_linear_conv(
    x: torch.Tensor, weight: torch.Tensor, norm_weight: torch.Tensor | None, eps: float, bias: torch.Tensor | None,
    conv_state: torch.Tensor, conv_weight: torch.Tensor, conv_bias: torch.Tensor | None,
) -> torch.Tensor:  # fmt: skip
    """``naive_decode_linear``, then its first D = conv_weight.shape[0] columns through one causal conv update step
    with SiLU (``naive_causal_conv1d_update``: conv_state updated in place); the other columns as they are."""
    _, _, N = check_decode_linear(x, weight, norm_weight, eps, bias=bias)
    D = check_conv_epilogue(x, N, conv_state, conv_weight, conv_bias)
    y = naive_decode_linear(x, weight, norm_weight, eps, bias=bias)
    xs = naive_causal_conv1d_update(y[:, :D], conv_state, conv_weight, conv_bias, "silu")
    return torch.cat([xs, y[:, D:]], dim=-1)
