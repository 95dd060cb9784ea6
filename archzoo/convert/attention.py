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
Query and output projections are always copied: the student keeps every query head.
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
    if len(members) > 1 and ctx.options["cla_share"] == "mean":
        pooled = [_pooled_kv(ctx.teacher_mixer(j), dst.n_kv_heads) for j in members]
        kv = {k: (torch.stack([p[k] for p in pooled]).mean(0) if v is not None else None) for k, v in kv.items()}
    elif ctx.options["cla_share"] not in ("first", "mean"):
        raise ValueError(f"cla_share={ctx.options['cla_share']!r}; expected 'first' or 'mean'")
    copy_linear(dst.k_proj, kv["k_proj.weight"], kv["k_proj.bias"], ctx.notes)
    copy_linear(dst.v_proj, kv["v_proj.weight"], kv["v_proj.bias"], ctx.notes)
