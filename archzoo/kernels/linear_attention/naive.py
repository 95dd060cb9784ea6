"""Causal linear attention in PyTorch: the step-by-step reference and the chunked parallel form.

Both take queries and keys that have already been through a feature map phi (fla's ``[B, T, H, D]``
layout) and compute, for every position t (Katharopoulos et al. 2020, "Transformers are RNNs"),

    S_t = S_0 + sum_{s<=t} k_s v_s^T        (B, H, F, Dv)
    z_t = z_0 + sum_{s<=t} k_s              (B, H, F)
    o_t = q_t S_t / (q_t z_t + eps)          (normalize=True)
    o_t = q_t S_t                            (normalize=False)

The state is the pair ``(S, z)``; it is accumulated in at least fp32 (float64 inputs stay
float64) and ``z`` is carried even without normalisation, so one state format serves both.
The normaliser assumes ``q_t z_t > 0``, which positive feature maps (elu + 1, taylor, hedgehog)
guarantee; with the identity map it can be negative or near zero and the output then blows up.
"""

from __future__ import annotations

import torch

State = tuple[torch.Tensor, torch.Tensor]


def _check(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, initial_state: State | None, eps: float
) -> tuple[int, int, int, int, int]:
    if q.dim() != 4:
        raise ValueError(f"q must be (B, T, H, F), got shape {tuple(q.shape)}")
    if k.shape != q.shape:
        raise ValueError(f"k must have q's shape {tuple(q.shape)}, got {tuple(k.shape)}")
    if v.dim() != 4 or v.shape[:3] != q.shape[:3]:
        raise ValueError(f"v must be (B, T, H, Dv) with (B, T, H) = {tuple(q.shape[:3])}, got {tuple(v.shape)}")
    B, T, H, F = q.shape
    Dv = v.shape[-1]
    if T == 0:
        raise ValueError("q, k and v must hold at least one position (T >= 1)")
    if initial_state is not None:
        if not isinstance(initial_state, tuple | list) or len(initial_state) != 2:
            raise ValueError("initial_state must be a pair (S (B, H, F, Dv), z (B, H, F))")
        S0, z0 = initial_state
        if tuple(S0.shape) != (B, H, F, Dv):
            raise ValueError(f"initial_state S must be {(B, H, F, Dv)}, got {tuple(S0.shape)}")
        if tuple(z0.shape) != (B, H, F):
            raise ValueError(f"initial_state z must be {(B, H, F)}, got {tuple(z0.shape)}")
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    return B, T, H, F, Dv


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


def naive_linear_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    initial_state: State | None = None,
    output_final_state: bool = False,
    normalize: bool = True,
    eps: float = 1e-6,
) -> tuple[torch.Tensor, State | None]:
    """Recurrent reference: one state update per token, in fp32 (or float64).

    q, k (B, T, H, F) feature-mapped; v (B, T, H, Dv); initial_state (S (B, H, F, Dv), z (B, H, F))
    or None for zeros. Returns o (B, T, H, Dv) in q's dtype and the final state (or None).
    """
    B, T, H, F, Dv = _check(q, k, v, initial_state, eps)
    out_dtype, acc = q.dtype, _acc_dtype(q.dtype)
    q, k, v = q.to(acc), k.to(acc), v.to(acc)
    if initial_state is None:
        S = q.new_zeros(B, H, F, Dv)
        z = q.new_zeros(B, H, F)
    else:
        S, z = initial_state[0].to(acc), initial_state[1].to(acc)
    out = []
    for qt, kt, vt in zip(q.unbind(1), k.unbind(1), v.unbind(1), strict=True):  # (B, H, F), (B, H, F), (B, H, Dv)
        S = S + kt[..., :, None] * vt[..., None, :]
        z = z + kt
        o = torch.einsum("bhf,bhfd->bhd", qt, S)
        if normalize:
            o = o / ((qt * z).sum(-1, keepdim=True) + eps)
        out.append(o)
    o = torch.stack(out, dim=1)  # (B, T, H, Dv)
    return o.to(out_dtype), ((S, z) if output_final_state else None)


def naive_linear_attention_update(
    S: torch.Tensor,
    z: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    normalize: bool = True,
    eps: float = 1e-6,
) -> torch.Tensor:
    """One decode step of the recurrence; ``S`` (B, H, F, Dv) and ``z`` (B, H, F) are updated IN PLACE.

    q, k (B, H, F) feature-mapped; v (B, H, Dv). Returns o (B, H, Dv) in q's dtype: the same as one
    step of :func:`naive_linear_attention` from the state (S, z). Not differentiable.
    """
    acc = S.dtype
    qf, kf, vf = q.to(acc), k.to(acc), v.to(acc)
    S.add_(kf[..., :, None] * vf[..., None, :])
    z.add_(kf.to(z.dtype))
    o = torch.einsum("bhf,bhfd->bhd", qf, S)
    if normalize:
        o = o / ((qf * z.to(acc)).sum(-1, keepdim=True) + eps)
    return o.to(q.dtype)


def chunk_linear_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    initial_state: State | None = None,
    output_final_state: bool = False,
    normalize: bool = True,
    eps: float = 1e-6,
    *,
    chunk_size: int = 64,
) -> tuple[torch.Tensor, State | None]:
    """Chunked parallel form (as in fla's ``chunk`` ops), same math as :func:`naive_linear_attention`.

    The sequence is cut into chunks of ``chunk_size`` (the last one zero-padded; zero keys add
    nothing to the state). Within a chunk, a causally masked quadratic product ``tril(q k^T) v``;
    across chunks, the state before each chunk comes from a cumulative sum of the per-chunk
    ``k^T v`` on top of ``initial_state``. Accumulation is in fp32 (float64 stays float64).
    Returns o (B, T, H, Dv) in q's dtype and the final state (or None).
    """
    B, T, H, F, Dv = _check(q, k, v, initial_state, eps)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    out_dtype, acc = q.dtype, _acc_dtype(q.dtype)
    C = min(chunk_size, T)
    N = -(-T // C)
    pad = N * C - T

    def blocks(x: torch.Tensor) -> torch.Tensor:  # (B, T, H, D) -> (B, H, N, C, D)
        x = x.to(acc).transpose(1, 2)
        if pad:
            x = torch.nn.functional.pad(x, (0, 0, 0, pad))
        return x.reshape(B, H, N, C, x.shape[-1])

    qc, kc, vc = blocks(q), blocks(k), blocks(v)
    if initial_state is None:
        S0 = qc.new_zeros(B, H, F, Dv)
        z0 = qc.new_zeros(B, H, F)
    else:
        S0, z0 = initial_state[0].to(acc), initial_state[1].to(acc)

    kv = torch.einsum("bhncf,bhncd->bhnfd", kc, vc)  # (B, H, N, F, Dv) per-chunk contributions
    kz = kc.sum(3)  # (B, H, N, F)
    S_incl = S0[:, :, None] + kv.cumsum(2)  # state after each chunk
    z_incl = z0[:, :, None] + kz.cumsum(2)
    S_prev = torch.cat([S0[:, :, None], S_incl[:, :, :-1]], dim=2)  # state before each chunk
    z_prev = torch.cat([z0[:, :, None], z_incl[:, :, :-1]], dim=2)

    mask = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
    A = torch.einsum("bhncf,bhnsf->bhncs", qc, kc).masked_fill(~mask, 0.0)  # (B, H, N, C, C)
    o = torch.einsum("bhncf,bhnfd->bhncd", qc, S_prev) + A @ vc  # (B, H, N, C, Dv)
    if normalize:
        den = torch.einsum("bhncf,bhnf->bhnc", qc, z_prev) + A.sum(-1)
        o = o / (den[..., None] + eps)
    o = o.reshape(B, H, N * C, Dv)[:, :, :T].transpose(1, 2).to(out_dtype)  # (B, T, H, Dv)
    final = (S_incl[:, :, -1], z_incl[:, :, -1]) if output_final_state else None
    return o, final
