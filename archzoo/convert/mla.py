"""Attention -> MLA by a joint low-rank factorisation of the K/V projections.

Follows MHA2MLA (Ji et al. 2025, "Towards Economical Inference: Enabling DeepSeek's Multi-Head
Latent Attention in Any Transformer-based LLMs") and TransMLA (Meng et al. 2025):

1. Partial RoPE. Of the teacher's head_dim D rotary dimensions, ``qk_rope_head_dim`` keep RoPE:
   ``mla_rope='high'`` keeps the highest-frequency pairs (MHA2MLA's S_high), which in the
   rotate_half layout are dims ``[0, dr/2)`` and ``[D/2, D/2 + dr/2)``. The student's RoPE base
   is set to ``theta ** (dr / D)`` so its dr/2 frequencies are exactly those teacher pairs.
   ``mla_rope='norm'`` keeps, per layer, the dr/2 pairs whose queries and keys are largest
   (MHA2MLA's S_2-norm, one set per layer since the RoPE key is shared by the heads: ``pair_scores``),
   measured for the teacher's inputs over the ``calibration`` tokens (required: from the weights
   alone, inputs of unit variance, the choice agreed with the activations' on 5-14 of 16 pairs a
   layer of SmolLM2-135M; from 8 x 512 calibration tokens, on 14-16). The student layer then gets
   the teacher's base and those pairs (``MLAConfig.rope_pairs``). On SmolLM2-135M without compression, 'high'
   loses 0.008 nats in the first 256 positions of a block and 2.2 past 2,048; 'norm' 0.58 and 1.15
   (docs/distillation.md, "Which RoPE pairs").
   The shared RoPE key is the mean over the teacher's K/V heads (``mla_rope_key='mean'``,
   default), or their best rank-1 fit per frequency as complex numbers with each query head
   absorbing its group's phase (``'svd'``, ``shared_rope_key``). Both are exact for an MQA
   teacher. Measured on SmolLM2-135M (held-out KL right after conversion, 8k tokens): at full
   latent rank 'svd' is better (2.39 vs ~2.7 nats); at the student's rank 128, 'mean' is
   (4.96 vs 5.74), so 'mean' stays the default.
2. The other ``D - dr`` key dimensions of every K/V head and the full value heads are stacked
   into one matrix and factorised by SVD; the top ``kv_lora_rank`` right singular vectors form
   the down-projection to the cached latent, the scaled left ones the per-head up-projections
   (W_uk, W_uv). At full rank this is exact.
3. Queries and the output projection are copied, permuted to the nope/rope split.

So: ``qk_nope_head_dim + qk_rope_head_dim`` must equal the teacher's head_dim and ``v_head_dim``
must equal it too. ``kv_norm`` and ``q_lora_rank`` add normalisations the teacher does not have:
the conversion then is no longer exact (a note says so); the student configs switch them off.
"""

from __future__ import annotations

from typing import Any

import torch

from . import ConvertContext, copy_linear

MLA_ROPE = ("high", "norm")


def rope_dims(D: int, dr: int, how: str, pairs: list[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of the teacher head dims that keep RoPE (in student order) and those that drop it: with 'high' the
    dr/2 highest-frequency pairs, with 'norm' the given ``pairs`` (the student layer's ``rope_pairs``)."""
    if how not in MLA_ROPE:
        raise ValueError(f"mla_rope={how!r}; supported: {', '.join(map(repr, MLA_ROPE))}")
    if how == "high":
        half = torch.arange(dr // 2)
    else:
        if pairs is None or len(pairs) != dr // 2:
            raise ValueError(f"mla_rope='norm' needs the layer's {dr // 2} rope_pairs, got {pairs}")
        half = torch.as_tensor(pairs, dtype=torch.long)
    keep = torch.cat([half, half + D // 2])
    mask = torch.ones(D, dtype=torch.bool)
    mask[keep] = False
    return keep, torch.nonzero(mask).squeeze(-1)


def shared_rope_key(wk: torch.Tensor, wq: torch.Tensor, group: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One RoPE key shared by all heads from the teacher's K/V heads' kept RoPE rows.

    wk (n_kv, dr, d) and wq (H, dr, d) hold the kept rows in student order (the dr/2 first dims
    of each rotated pair, then the dr/2 second ones). RoPE rotates each pair like a complex
    number, and any complex scale commutes with the rotation: so per frequency, the teacher's
    n_kv key rows (complex vectors over d) get their best rank-1 fit ``k_g ~ c_g k_s`` (SVD), the
    shared key is ``k_s`` and every query head of group g absorbs ``conj(c_g)``. Exact for one K/V
    head (MQA); for GQA it is the least-squares choice, where a plain mean would ignore the
    relative phase of the heads.
    """
    half = wk.shape[1] // 2
    kc = torch.complex(wk[:, :half], wk[:, half:]).transpose(0, 1)  # (dr/2, n_kv, d)
    U, S, Vh = torch.linalg.svd(kc, full_matrices=False)
    ks = S[:, :1, None] * Vh[:, :1]  # (dr/2, 1, d)
    c = U[:, :, 0]  # (dr/2, n_kv): k_g ~ c_g * ks
    qc = torch.complex(wq[:, :half], wq[:, half:])  # (H, dr/2, d)
    qc = qc * c.conj().t().repeat_interleave(group, dim=0)[..., None]  # head h reads group h // group
    k_rope = torch.cat([ks[:, 0].real, ks[:, 0].imag])  # (dr, d)
    q_rope = torch.cat([qc.real, qc.imag], dim=1)  # (H, dr, d)
    return k_rope, q_rope


def _factorise(w: torch.Tensor, moment: torch.Tensor | None, i: int, notes: list[str]):
    """SVD of the stacked K/V projection w (n, d) -> (U, S, Vh) with ``w ~ U S Vh``, truncated by the caller.

    Without calibration: the plain SVD, the best low-rank fit of the weights (Eckart-Young). With the second
    moment C = E[x x^T] of the layer's inputs (``ConvertContext.input_moment``): the best low-rank fit of the
    projections' outputs, min E||(w - w') x||^2 = ||(w - w') L||_F^2 with C = L L^T (Cholesky), so the SVD of
    w L, its right factor mapped back through L^-1 (activation-aware SVD, as SVD-LLM; Wang et al. 2024). The
    residual stream's few large dimensions then get the rank they need. A small ridge (1e-4 of C's mean
    diagonal) keeps C invertible. Measured on SmolLM2-135M (KL right after conversion on 8 held-out python-docs
    blocks of 512; calibration: 8,192 tokens of teacher text; docs/distillation.md): rank 64 6.39 -> 3.59 nats,
    rank 128 5.04 -> 3.26, rank 256 3.01 -> 3.06 (no gain there)."""
    if moment is None:
        return torch.linalg.svd(w, full_matrices=False)
    C = moment.to(w) + 1e-4 * moment.diagonal().mean().to(w) * torch.eye(
        moment.shape[0], dtype=w.dtype, device=w.device
    )
    L = torch.linalg.cholesky(C)
    U, S, Vh = torch.linalg.svd(w @ L, full_matrices=False)
    Vh = torch.linalg.solve_triangular(L, Vh, upper=False, left=False)  # Vh L^-1
    if i == 0:
        notes.append("MLA K/V factorised by an activation-aware SVD over the calibration tokens")
    return U, S, Vh


def _check_dims(src, m, i: int) -> None:
    D = src.head_dim
    if m.qk_nope_head_dim + m.qk_rope_head_dim != D or m.v_head_dim != D or m.n_heads != src.n_heads:
        raise ValueError(
            f"student layer {i}: MLA from a teacher with {src.n_heads} heads of dim {D} needs n_heads={src.n_heads}, "
            f"qk_nope_head_dim + qk_rope_head_dim = {D} and v_head_dim = {D}; got {m.n_heads}, "
            f"{m.qk_nope_head_dim} + {m.qk_rope_head_dim}, {m.v_head_dim}"
        )


def pair_scores(src, moment: torch.Tensor) -> torch.Tensor:
    """(D/2,) how much each RoPE pair of a teacher attention layer carries (MHA2MLA's S_2-norm): the sum over query
    heads of rms |q_pair| x rms |k_pair| of the head's K/V head, for inputs of second moment ``moment`` (d, d);
    a pair is dims (p, p + D/2), rotate_half's layout."""
    H, n_kv, D = src.n_heads, src.n_kv_heads, src.head_dim
    C = moment.to(torch.float64)

    def pair_rms(w: torch.Tensor, heads: int) -> torch.Tensor:  # (heads, D/2)
        w = w.to(torch.float64).view(heads, D, -1)
        sq = torch.einsum("hkd,de,hke->hk", w, C, w)  # E[(w_k . x)^2] per head and dim
        return (sq[:, : D // 2] + sq[:, D // 2 :]).clamp_min(0).sqrt()

    q, k = pair_rms(src.q_proj.weight, H), pair_rms(src.k_proj.weight, n_kv)
    return (q * k.repeat_interleave(H // n_kv, 0)).sum(0)


def norm_pairs(src, moment: torch.Tensor, n: int) -> list[int]:
    """The ``n`` pairs of largest ``pair_scores``, rising."""
    return sorted(pair_scores(src, moment).topk(n).indices.tolist())


def adapt_mla_config(
    data: dict[str, Any], i: int, m, src, opts: dict[str, Any], moment: torch.Tensor | None = None
) -> bool:  # fmt: skip
    """Set the student's RoPE so its frequencies equal the kept teacher pairs: with 'high' a base of
    ``theta ** (dr / D)`` (its dr/2 frequencies are the teacher's highest); with 'norm' the teacher's base and the
    layer's ``rope_pairs``, chosen by ``pair_scores`` over ``moment`` (the teacher layer's input second moment)."""
    _check_dims(src, m, i)
    how = opts.get("mla_rope", "high")
    if how not in MLA_ROPE:
        raise ValueError(f"mla_rope={how!r}; supported: {', '.join(map(repr, MLA_ROPE))}")
    if how == "high":
        theta, pairs = src.rope.theta ** (m.qk_rope_head_dim / src.head_dim), None
    else:
        theta, pairs = src.rope.theta, norm_pairs(src, moment, m.qk_rope_head_dim // 2)
    if abs(theta - m.rope_theta) <= 1e-9 * theta and pairs == m.rope_pairs:
        return False
    mixer = {"type": "mla", "rope_theta": theta}
    if pairs is not None or m.rope_pairs is not None:
        mixer["rope_pairs"] = pairs
    data.setdefault("layers", []).append({"at": [i], "mixer": mixer})
    return True


def convert_mla(src, dst, i: int, ctx: ConvertContext) -> None:
    from ..layers.attention import Attention

    if not isinstance(src, Attention) or not src.owns_kv:
        raise ValueError(f"student layer {i}: MLA converts from a teacher attention layer with its own K/V")
    m = dst.cfg
    _check_dims(src, m, i)
    H, n_kv, D, dn, dr, r = src.n_heads, src.n_kv_heads, src.head_dim, dst.dn, dst.dr, dst.r
    keep, drop = rope_dims(D, dr, ctx.options["mla_rope"], m.rope_pairs)
    d = src.q_proj.in_features
    f32 = torch.float64  # factorise in float64; the result is cast to the student dtype
    if any(lin.bias is not None for lin in (src.q_proj, src.k_proj, src.v_proj)):
        ctx.notes.append(f"layer {i}: the teacher's Q/K/V biases have no place in MLA and were dropped")
    if m.kv_norm or m.q_lora_rank:
        ctx.notes.append(f"layer {i}: kv_norm / q_lora_rank make the MLA conversion approximate")

    wk = src.k_proj.weight.to(f32).view(n_kv, D, d)
    wq = src.q_proj.weight.to(f32).view(H, D, d)
    how = ctx.options["mla_rope_key"]
    if how == "svd":
        k_rope, q_rope = shared_rope_key(wk[:, keep], wq[:, keep], H // n_kv)  # (dr, d), (H, dr, d)
    elif how == "mean":
        k_rope, q_rope = wk[:, keep].mean(0), wq[:, keep]
    else:
        raise ValueError(f"mla_rope_key={how!r}; expected 'mean' or 'svd'")
    wq = torch.cat([wq[:, drop], q_rope], dim=1).reshape(H * D, d)  # per head [nope; rope]
    if m.q_lora_rank:
        U, S, Vh = torch.linalg.svd(wq, full_matrices=False)
        k = min(m.q_lora_rank, S.numel())
        dst.q_a_proj.weight.zero_()[:k].copy_(Vh[:k])
        dst.q_b_proj.weight.zero_()[:, :k].copy_(U[:, :k] * S[:k])
    else:
        copy_linear(dst.q_proj, wq.to(dst.q_proj.weight.dtype))

    wv = src.v_proj.weight.to(f32).view(n_kv, D, d)
    stacked = torch.cat([wk[:, drop], wv], dim=1).reshape(n_kv * (dn + D), d)  # per kv head [k_nope; v]
    U, S, Vh = _factorise(stacked, ctx.input_moment(i), i, ctx.notes)
    k = min(r, S.numel())
    dev = src.k_proj.weight.device
    down = torch.zeros(r, d, dtype=f32, device=dev)
    down[:k] = Vh[:k]
    up = torch.zeros(n_kv * (dn + D), r, dtype=f32, device=dev)
    up[:, :k] = U[:, :k] * S[:k]
    up = up.view(n_kv, dn + D, r).repeat_interleave(H // n_kv, dim=0)  # (H, dn + dv, r)
    dst.kv_a_proj.weight.copy_(torch.cat([down, k_rope]).to(dst.kv_a_proj.weight.dtype))
    dst.kv_b_proj.weight.copy_(up.reshape(H * (dn + D), r).to(dst.kv_b_proj.weight.dtype))
    copy_linear(dst.o_proj, src.o_proj.weight)
    if k < r:
        ctx.notes.append(f"layer {i}: kv_lora_rank {r} exceeds the K/V rank {k}; extra latent dims are zero")
