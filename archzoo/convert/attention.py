"""Attention -> attention: MHA/GQA/MQA, sliding window and CLA students.

- GQA / MQA (Ainslie et al. 2023, "GQA: Training Generalized Multi-Query Transformer Models from
  Multi-Head Checkpoints"): each student K/V head is the mean of the teacher K/V heads of its
  group. A student with more K/V heads than the teacher repeats each teacher head instead, which
  is exact.
- Sliding window: the weights are copied unchanged; only the mask differs (Mistral-style).
- CLA (Brandon et al. 2024, "Reducing Transformer Key-Value Cache Size with Cross-Layer
  Attention"): a group's leader holds the only K/V projection. ``cla_share='mean'`` (default)
  averages the K/V projections of the group's teacher layers, after pooling heads;
  ``'first'`` keeps the leader's own teacher projection. On SmolLM2-135M, CLA2 starts at held-out
  perplexity ~14k with 'mean' against ~150k with 'first' (docs/conversion.md).
- With ``calibration`` (token ids, ``archzoo.convert``), fewer K/V heads are fitted to the teacher's inputs
  instead of mean-pooled (``_fit_pooled_kv``): keys by a per-frequency complex rank-1 fit in the whitened input
  space, each query head absorbing its group's phase; values pooled, each query head's output projection refitted.
Query and output projections are otherwise copied: the student keeps every query head.
"""

from __future__ import annotations

import torch

from . import ConvertContext, copy_linear


def pool_heads(w: torch.Tensor, n_src: int, n_dst: int) -> torch.Tensor:
    """(n_src*D, ...) rows grouped by head -> (n_dst*D, ...): mean over groups, or repeat when growing."""
    D = w.shape[0] // n_src
    heads = w.reshape(n_src, D, *w.shape[1:])
    if n_dst <= n_src:
        if n_src % n_dst:
            raise ValueError(f"cannot pool {n_src} K/V heads into {n_dst}: {n_dst} must divide {n_src}")
        return heads.reshape(n_dst, n_src // n_dst, D, *w.shape[1:]).mean(1).reshape(n_dst * D, *w.shape[1:])
    if n_dst % n_src:
        raise ValueError(f"cannot grow {n_src} K/V heads into {n_dst}: {n_src} must divide {n_dst}")
    return heads.repeat_interleave(n_dst // n_src, dim=0).reshape(n_dst * D, *w.shape[1:])


def _pooled_kv(src, n_dst: int) -> dict[str, torch.Tensor | None]:
    out = {}
    for name in ("k_proj", "v_proj"):
        lin = getattr(src, name)
        out[name + ".weight"] = pool_heads(lin.weight, src.n_kv_heads, n_dst)
        out[name + ".bias"] = pool_heads(lin.bias, src.n_kv_heads, n_dst) if lin.bias is not None else None
    return out


def _fit_pooled_kv(src, dst, moment: torch.Tensor) -> None:
    """Fewer K/V heads, fitted to the teacher's inputs (``calibration``; mean pooling without it).

    Each student K/V head serves ``m`` teacher K/V heads (their query heads, ``qpk`` each). With C = E[x x^T] of the
    layer's inputs and C = L L^T:

    - Keys: RoPE rotates each pair (i, i + D/2) like a complex number, and a complex scale per frequency commutes
      with the rotation; so per frequency the group's key rows get their best rank-1 fit ``k_g ~ c_g k`` in the
      whitened input space (``convert/mla.py``'s ``shared_rope_key`` on ``W L``, mapped back through L^-1): the
      fit of the keys' values on these inputs, not of the weights. Each query head absorbs its teacher head's
      ``conj(c_g)``, so its scores stay ``q . (c_g k)``.
    - Values: the group mean (what minimises the summed output error of the group's value heads), then each query
      head's slice of the output projection refitted by weighted least squares, O_h' = O_h W_v,g C W'^T
      (W' C W'^T)^-1: the map from the merged values that best reproduces O_h W_v,g x on these inputs.

    Exact when the group's key heads differ by a complex scale per frequency and its value heads are equal
    (tests/convert). Measured on SmolLM2-135M, MQA (3 K/V heads into 1), KL on 2 python-docs blocks right after
    conversion, 8 blocks of Shakespeare as calibration: mean pooling 7.00, the O refit alone 5.28, the fitted keys
    as well 3.87 (docs/conversion.md)."""
    from .mla import shared_rope_key

    H, D, n_src, n_dst = src.n_heads, src.head_dim, src.n_kv_heads, dst.n_kv_heads
    m, qpk = n_src // n_dst, H // n_src
    f64 = torch.float64
    d = src.q_proj.in_features
    C = moment.to(dtype=f64, device=src.q_proj.weight.device)
    C = C + 1e-4 * C.diagonal().mean() * torch.eye(d, dtype=f64, device=C.device)
    L = torch.linalg.cholesky(C)
    wk = src.k_proj.weight.to(f64).view(n_src, D, d)
    wq = src.q_proj.weight.to(f64).view(H, D, d)
    wv = src.v_proj.weight.to(f64).view(n_src, D, d)
    wo = src.o_proj.weight.to(f64).view(-1, H, D)
    k_new = torch.empty(n_dst, D, d, dtype=f64, device=C.device)
    q_new = torch.empty(H, D, d, dtype=f64, device=C.device)
    for j in range(n_dst):
        ks, qs = slice(j * m, (j + 1) * m), slice(j * m * qpk, (j + 1) * m * qpk)
        k, q = shared_rope_key(wk[ks] @ L, wq[qs] @ L, qpk)  # (D, d), (m * qpk, D, d), whitened
        k_new[j] = torch.linalg.solve_triangular(L, k, upper=False, left=False)  # k L^-1
        q_new[qs] = torch.linalg.solve_triangular(L, q, upper=False, left=False)
    v_new = wv.view(n_dst, m, D, d).mean(1)  # (n_dst, D, d)
    o_new = torch.empty_like(wo)
    for h in range(H):
        g = h // qpk
        vj = v_new[g // m]
        o_new[:, h] = wo[:, h] @ (wv[g] @ C @ vj.T) @ torch.linalg.inv(vj @ C @ vj.T)
    copy_linear(dst.q_proj, q_new.reshape(H * D, d).to(dst.q_proj.weight.dtype))
    copy_linear(dst.k_proj, k_new.reshape(n_dst * D, d).to(dst.k_proj.weight.dtype))
    copy_linear(dst.v_proj, v_new.reshape(n_dst * D, d).to(dst.v_proj.weight.dtype))
    copy_linear(dst.o_proj, o_new.reshape(-1, H * D).to(dst.o_proj.weight.dtype))


def convert_attention(src, dst, i: int, ctx: ConvertContext) -> None:
    from ..layers.attention import Attention

    if not isinstance(src, Attention) or not src.owns_kv:
        raise ValueError(f"student layer {i}: attention converts from a teacher attention layer with its own K/V")
    if (src.n_heads, src.head_dim) != (dst.n_heads, dst.head_dim):
        raise ValueError(
            f"student layer {i}: n_heads/head_dim {dst.n_heads}/{dst.head_dim} must match the teacher's "
            f"{src.n_heads}/{src.head_dim} (only the K/V heads may change)"
        )
    if dst.rope.theta != src.rope.theta:
        ctx.notes.append(f"layer {i}: rope_theta {dst.rope.theta} differs from the teacher's {src.rope.theta}")
    copy_linear(dst.q_proj, src.q_proj.weight, src.q_proj.bias, ctx.notes)
    copy_linear(dst.o_proj, src.o_proj.weight, src.o_proj.bias)
    if not dst.owns_kv:
        return  # a CLA member reads its leader's K/V
    kv = _pooled_kv(src, dst.n_kv_heads)
    members = ctx.group_members(i)
    moment = ctx.input_moment(i) if dst.n_kv_heads < src.n_kv_heads and len(members) == 1 else None
    if moment is not None:
        biases = [lin.bias for lin in (src.q_proj, src.k_proj, src.v_proj, src.o_proj) if lin.bias is not None]
        if biases:
            ctx.notes.append(f"layer {i}: projection biases: the K/V heads are mean-pooled, not fitted to activations")
        else:
            _fit_pooled_kv(src, dst, moment)
            if i == 0:
                ctx.notes.append("K/V heads merged to fit the teacher's activations over the calibration tokens")
            return
    if len(members) > 1 and ctx.options["cla_share"] == "mean":
        pooled = [_pooled_kv(ctx.teacher_mixer(j), dst.n_kv_heads) for j in members]
        kv = {k: (torch.stack([p[k] for p in pooled]).mean(0) if v is not None else None) for k, v in kv.items()}
    elif ctx.options["cla_share"] not in ("first", "mean"):
        raise ValueError(f"cla_share={ctx.options['cla_share']!r}; expected 'first' or 'mean'")
    copy_linear(dst.k_proj, kv["k_proj.weight"], kv["k_proj.bias"], ctx.notes)
    copy_linear(dst.v_proj, kv["v_proj.weight"], kv["v_proj.bias"], ctx.notes)
