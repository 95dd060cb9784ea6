"""Attention -> causal linear attention (and BASED) by reusing Q/K/V/O.

Follows LoLCATs (Zhang et al. 2024, "LoLCATs: On Low-Rank Linearizing of Large Language Models")
and Hedgehog (Zhang et al. 2024, "The Hedgehog & the Porcupine"): the softmax attention's
projections are kept and only the similarity changes, ``exp(q.k / sqrt(D))`` becoming
``phi(q).phi(k)``; distillation then trains the feature map (and the rest) to close the gap.

Heads. Linear attention has no GQA: every student head has its own K/V. With ``n_heads`` equal
to the teacher's, queries and the output projection are copied and each teacher K/V head is
repeated for the query heads that read it (exact). A student with fewer heads (a divisor of the
teacher's) mean-pools the queries of each group of teacher heads (as GQA pools K/V, Ainslie et
al. 2023), pools or repeats the K/V heads to its own count, and sums the output-projection
columns of the group (the group's heads now share one output): approximate, a note says so.

Feature maps. ``identity``, ``elu``, ``relu`` and ``hedgehog`` take the teacher's queries and keys
as they are, so ``feature_dim`` must equal the teacher's ``head_dim``; ``hedgehog`` starts at
its identity map, as in LoLCATs. ``taylor`` (BASED, Arora et al. 2024) computes
``1 + s + s^2 / 2`` with ``s = q'.k' / sqrt(feature_dim)``, a function of ``q'.k'`` alone, so all
that matters is how well ``q'.k'`` reproduces the teacher's score ``q.k / sqrt(D)``:

- ``feature_dim == head_dim``: Q/K copied, ``s`` is exactly the teacher's score and the map its
  second-order Taylor expansion;
- ``feature_dim < head_dim``: per head, the score's bilinear form ``M = W_q^T W_k`` (d x d, rank
  <= D) is cut to rank ``feature_dim`` by SVD, ``M ~ A S B^T``, and the student takes
  ``W_q' = c sqrt(S) A^T``, ``W_k' = c sqrt(S) B^T`` with ``c = (feature_dim / D)^(1/4)`` so that
  ``s`` keeps the teacher's temperature. This is the best rank-``feature_dim`` approximation of
  the score for isotropic inputs (Eckart-Young); projecting q and k onto one shared subspace
  (e.g. the keys' top principal directions) is the special case A = B. On SmolLM2-135M the BASED
  student (configs/students/based.yaml) starts at perplexity 278 against 280 with the shared
  key subspace, and 197 with feature_dim 64 (Q/K copied; teacher 28, on English text): the
  choice of projection matters little next to the rest of the approximation.

Dropped, with a note: RoPE (linear attention has no positional encoding here, so ``s`` is the
teacher's score at relative distance 0 and order enters only through causality) and any Q/K/V
biases (the layer has none). The softmax's normaliser becomes ``phi(q).z``.
"""

from __future__ import annotations

import torch

from . import ConvertContext, copy_linear
from .attention import pool_heads

COPY_MAPS = ("identity", "elu", "relu", "hedgehog")


def low_rank_qk(wq: torch.Tensor, wk: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Best rank-``rank`` factorisation of the bilinear form ``wq^T wk``: (rank, d) query and key maps.

    wq, wk (D, d) -> (a, b), each (rank, d), with ``a^T b`` the truncated SVD of ``wq^T wk``.
    Computed through thin QRs, so only a D x D matrix is decomposed.
    """
    Qq, Rq = torch.linalg.qr(wq.t())  # (d, D), (D, D)
    Qk, Rk = torch.linalg.qr(wk.t())
    U, S, Vh = torch.linalg.svd(Rq @ Rk.t())  # wq^T wk = Qq (Rq Rk^T) Qk^T
    root = S[:rank].sqrt()[:, None]
    return root * (Qq @ U[:, :rank]).t(), root * (Qk @ Vh[:rank].t()).t()


def convert_linear_attention(src, dst, i: int, ctx: ConvertContext) -> None:
    from ..layers.attention import Attention

    if not isinstance(src, Attention) or not src.owns_kv:
        raise ValueError(
            f"student layer {i}: linear attention converts from a teacher attention layer with its own K/V"
        )
    H, n_kv, D = src.n_heads, src.n_kv_heads, src.head_dim
    Hs, f, fmap = dst.n_heads, dst.feature_dim, dst.cfg.feature_map
    if dst.head_dim != D:
        raise ValueError(
            f"student layer {i}: linear attention head_dim {dst.head_dim} must equal the teacher's head_dim {D} "
            "(V and O are reused)"
        )
    if Hs > H or H % Hs:
        raise ValueError(f"student layer {i}: linear attention n_heads={Hs} must divide the teacher's n_heads={H}")
    if fmap in COPY_MAPS and f != D:
        raise ValueError(
            f"student layer {i}: feature_map {fmap!r} reuses the teacher's queries and keys as they are and needs "
            f"feature_dim = the teacher's head_dim {D}, got {f}; only 'taylor' projects them to a smaller feature_dim"
        )
    if f > D:
        raise ValueError(f"student layer {i}: feature_dim {f} exceeds the teacher's head_dim {D}")

    f64 = torch.float64
    wq = pool_heads(src.q_proj.weight.to(f64), H, Hs)  # (Hs*D, d): copy when Hs == H, else group means
    wk = pool_heads(src.k_proj.weight.to(f64), n_kv, Hs)  # repeat (or pool) K/V heads, no GQA here
    wv = pool_heads(src.v_proj.weight.to(f64), n_kv, Hs)
    wo = src.o_proj.weight.to(f64)  # (d, H*D)
    if Hs < H:
        wo = pool_heads(wo.t(), H, Hs).t() * (H // Hs)  # sum of the group's columns
        ctx.notes.append(f"layer {i}: {H} teacher heads pooled into {Hs} linear attention heads (approximate)")
    if f < D:
        d = wq.shape[1]
        qs, ks = wq.view(Hs, D, d), wk.view(Hs, D, d)
        pairs = [low_rank_qk(qs[h], ks[h], f) for h in range(Hs)]
        c = (f / D) ** 0.25  # q'.k' / sqrt(f) = q.k / sqrt(D) where the rank suffices
        wq = c * torch.cat([a for a, _ in pairs])  # (Hs*f, d)
        wk = c * torch.cat([b for _, b in pairs])
        ctx.notes.append(f"layer {i}: Q/K scores cut from rank {D} to feature_dim {f} per head by SVD")
    dt = dst.q_proj.weight.dtype
    copy_linear(dst.q_proj, wq.to(dt))
    copy_linear(dst.k_proj, wk.to(dt))
    copy_linear(dst.v_proj, wv.to(dt))
    copy_linear(dst.o_proj, wo.to(dt))
    if fmap == "hedgehog":
        dst.q_map.init_weights()  # identity, as in LoLCATs
        dst.k_map.init_weights()
    ctx.notes.append(f"layer {i}: linear attention ({fmap}) has no RoPE; the teacher's rotation was dropped")
    if any(lin.bias is not None for lin in (src.q_proj, src.k_proj, src.v_proj)):
        ctx.notes.append(f"layer {i}: the teacher's Q/K/V biases have no place in linear attention and were dropped")
