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
- With ``calibration`` (token ids, ``archzoo.convert``), fewer or shared (CLA) K/V heads are fitted to the
  teacher's inputs instead of mean-pooled (``_fit_shared_kv``): keys by a per-frequency complex rank-1 fit in the
  whitened input space, each query head absorbing its group's phase; values pooled, each query head's output
  projection refitted.
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


def _fit_shared_kv(i: int, dst, ctx: ConvertContext) -> None:
    """Layer ``i``'s K/V, shared by its CLA group (itself alone outside CLA) and/or with fewer heads than the
    teacher's, fitted to the teacher's activations over the ``calibration`` tokens (mean pooling without them).

    Every layer j of the group (the leader i and its members) reads K/V computed from the leader's input x_i; the
    teacher's layer j computed them from its own input x_j. So each reader's teacher K/V projections are taken as
    maps of x_i: W_j A_j, with A_j = E[x_j x_i^T] E[x_i x_i^T]^-1 the best linear prediction of x_j from x_i (the
    identity for the leader). Then, with C = E[x_i x_i^T] = L L^T, for each student K/V head (serving ``m`` teacher
    K/V heads of every reader, ``qpk`` query heads each):

    - Keys: RoPE rotates each pair (k, k + D/2) like a complex number, and a complex scale per frequency commutes
      with the rotation; so per frequency the served key rows get their best rank-1 fit ``k_g ~ c_g k`` in the
      whitened input space (``convert/mla.py``'s ``shared_rope_key`` on ``W L``, mapped back through L^-1): a fit
      of the keys' values on these inputs, not of the weights. Each query head absorbs its teacher head's
      ``conj(c_g)`` (in its own layer's query projection), so its scores stay ``q . (c_g k)``.
    - Values: the mean of the served value maps (it minimises their summed output error), then each query head's
      slice of its layer's output projection refitted by weighted least squares, O_h' = O_h W_g C V'^T
      (V' C V'^T)^-1: the map from the merged values that best reproduces O_h W_g x_i on these inputs.

    Exact when the served key heads differ by a complex scale per frequency and the value heads are equal (one
    layer, tests/convert). Measured on SmolLM2-135M (docs/distillation.md): MQA, 3 K/V heads into 1, python-docs
    KL right after conversion 6.98 -> 3.27; CLA2 (pairs of layers) 7.17 -> 3.70."""
    from .mla import shared_rope_key

    members = ctx.group_members(i)
    src = ctx.teacher_mixer(i)
    H, D, n_src, n_dst = src.n_heads, src.head_dim, src.n_kv_heads, dst.n_kv_heads
    m, qpk = n_src // n_dst, H // n_src
    f64 = torch.float64
    d = src.q_proj.in_features
    C = ctx.input_moment(i).to(dtype=f64, device=src.q_proj.weight.device)
    C = C + 1e-4 * C.diagonal().mean() * torch.eye(d, dtype=f64, device=C.device)
    L = torch.linalg.cholesky(C)
    readers = []  # (teacher mixer, student mixer, keys as maps of x_i, values as maps of x_i)
    for j in members:
        t_j, s_j = ctx.teacher_mixer(j), ctx.student.blocks[j].mixer
        wk, wv = t_j.k_proj.weight.to(f64), t_j.v_proj.weight.to(f64)
        if j != i:
            A = torch.linalg.solve(C, ctx.cross_moment(j, i).to(dtype=f64, device=C.device).T).T  # E[x_j x_i^T] C^-1
            wk, wv = wk @ A, wv @ A
        readers.append((t_j, s_j, wk.view(n_src, D, d), wv.view(n_src, D, d)))
    k_new = torch.empty(n_dst, D, d, dtype=f64, device=C.device)
    q_new = [t.q_proj.weight.to(f64).view(H, D, d).clone() for t, _, _, _ in readers]
    for h in range(n_dst):
        gs, qs = slice(h * m, (h + 1) * m), slice(h * m * qpk, (h + 1) * m * qpk)
        wk_all = torch.cat([wk[gs] for _, _, wk, _ in readers])  # (R m, D, d)
        wq_all = torch.cat([q[qs] for q in q_new])  # (R m qpk, D, d): rows scale, so their input space does not matter
        k, q = shared_rope_key(wk_all @ L, wq_all, qpk)
        k_new[h] = torch.linalg.solve_triangular(L, k, upper=False, left=False)  # k L^-1
        for r, qr in enumerate(q.split(m * qpk)):
            q_new[r][qs] = qr
    v_new = torch.stack([wv.view(n_dst, m, D, d) for _, _, _, wv in readers], 1).mean((1, 2))  # (n_dst, D, d)
    for r, (t_j, s_j, _, wv) in enumerate(readers):
        wo = t_j.o_proj.weight.to(f64).view(-1, H, D)
        o_new = torch.empty_like(wo)
        for h in range(H):
            g = h // qpk
            vj = v_new[g // m]
            o_new[:, h] = wo[:, h] @ (wv[g] @ C @ vj.T) @ torch.linalg.inv(vj @ C @ vj.T)
        copy_linear(s_j.q_proj, q_new[r].reshape(H * D, d).to(s_j.q_proj.weight.dtype))
        copy_linear(s_j.o_proj, o_new.reshape(-1, H * D).to(s_j.o_proj.weight.dtype))
        ctx.fitted.add(members[r])
    copy_linear(dst.k_proj, k_new.reshape(n_dst * D, d).to(dst.k_proj.weight.dtype))
    copy_linear(dst.v_proj, v_new.reshape(n_dst * D, d).to(dst.v_proj.weight.dtype))


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
    if i in ctx.fitted:
        return  # a CLA member whose query and output projections its leader's fit set (_fit_shared_kv)
    copy_linear(dst.q_proj, src.q_proj.weight, src.q_proj.bias, ctx.notes)
    copy_linear(dst.o_proj, src.o_proj.weight, src.o_proj.bias)
    if not dst.owns_kv:
        return  # a CLA member reads its leader's K/V
    kv = _pooled_kv(src, dst.n_kv_heads)
    members = ctx.group_members(i)
    shared = dst.n_kv_heads < src.n_kv_heads or (len(members) > 1 and ctx.options["cla_share"] == "mean")
    if ctx.options.get("calibration") is not None and len(members) > 1 and ctx.options["cla_share"] == "first":
        ctx.notes.append(f"layer {i}: cla_share='first' keeps the leader's own K/V; the calibration fits no group")
    if shared and ctx.options.get("calibration") is not None:
        readers = [ctx.teacher_mixer(j) for j in members]
        if any(lin.bias is not None for t in readers for lin in (t.q_proj, t.k_proj, t.v_proj, t.o_proj)):
            ctx.notes.append(f"layer {i}: projection biases: the K/V heads are mean-pooled, not fitted to activations")
        else:
            _fit_shared_kv(i, dst, ctx)
            if "K/V fitted" not in " ".join(ctx.notes):
                ctx.notes.append(
                    "K/V fitted to the teacher's activations over the calibration tokens (fewer or shared heads)"
                )
            return
    if len(members) > 1 and ctx.options["cla_share"] == "mean":
        pooled = [_pooled_kv(ctx.teacher_mixer(j), dst.n_kv_heads) for j in members]
        kv = {k: (torch.stack([p[k] for p in pooled]).mean(0) if v is not None else None) for k, v in kv.items()}
    elif ctx.options["cla_share"] not in ("first", "mean"):
        raise ValueError(f"cla_share={ctx.options['cla_share']!r}; expected 'first' or 'mean'")
    copy_linear(dst.k_proj, kv["k_proj.weight"], kv["k_proj.bias"], ctx.notes)
    copy_linear(dst.v_proj, kv["v_proj.weight"], kv["v_proj.bias"], ctx.notes)
