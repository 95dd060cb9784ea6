"""Held-out quality: perplexity and KL(teacher || model) per token, and MQAR accuracy.

The trainer's validation and the benchmark report both score models here, so the two agree by
construction (DESIGN.md, Layering: ``bench/`` never imports the trainer). Everything runs without
gradients, in chunks of tokens, so a teacher's logits over a 49k vocabulary never fill memory.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .data.mqar import mqar_accuracy


@torch.no_grad()
def _nll_kl(h: torch.Tensor, w: torch.Tensor, tgt: torch.Tensor, h_t, w_t) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: -log p(target) and KL(teacher || model) (zeros without a teacher), in fp32 or wider. h (N, d),
    w (V, d); returns two (N,) tensors."""
    acc = torch.promote_types(h.dtype, torch.float32)
    logp = torch.log_softmax(F.linear(h, w).to(acc), dim=-1)  # (N, V), as the LM head computes it
    nll = -logp.gather(1, tgt[:, None])[:, 0]
    kl = torch.zeros_like(nll)
    if h_t is not None:
        logq = torch.log_softmax(F.linear(h_t, w_t).to(acc), dim=-1)
        kl = (logq.exp() * (logq - logp)).sum(-1)
    return nll, kl


def _check_buckets(edges: Sequence[int], L: int) -> list[int]:
    edges = [int(e) for e in edges]
    if len(edges) < 2 or edges[0] != 0 or any(b <= a for a, b in itertools.pairwise(edges)) or edges[-1] > L:
        raise ValueError(
            f"position_buckets must rise from 0 in at least two edges, the last at most the block's {L} inputs; "
            f"got {edges}"
        )
    return edges


@torch.no_grad()
def evaluate(
    teacher: nn.Module | None,
    model: nn.Module,
    blocks: torch.Tensor,
    batch_size: int = 8,
    token_chunk: int = 1024,
    position_buckets: Sequence[int] | None = None,
) -> dict:
    """Perplexity of ``model`` (and of ``teacher``) and the mean per-token KL(teacher || model).

    ``blocks`` (N, L + 1): token rows as ``archzoo.data.pack_blocks`` makes them (inputs ``[:, :-1]``,
    targets ``[:, 1:]``). Each model runs on its own device in eval mode (restored afterwards); the
    KL is taken at temperature 1 on the model's device. Returns ``{"ppl_student", "ppl_teacher",
    "kl", "tokens"}`` (the teacher's entries are None without a teacher).

    ``position_buckets``: edges ``[0, e1, ..., L']`` (rising, ``L' <= L``) of the position in the block;
    adds ``"by_position"``, one dict per bucket ``[a, b)`` with ``start``, ``end`` and the same four
    figures over the tokens at those positions. A student that matches its teacher near the start of a
    block and drifts away further on shows it here, where the mean hides it (a model trained on short
    blocks and scored on long ones).
    """
    if blocks.dim() != 2 or blocks.shape[1] < 2:
        raise ValueError(f"blocks must be (N, L + 1) token rows with L >= 1, got shape {tuple(blocks.shape)}")
    if batch_size < 1 or token_chunk < 1:
        raise ValueError(f"batch_size and token_chunk must be >= 1, got {batch_size} and {token_chunk}")
    L = blocks.shape[1] - 1
    edges = None if position_buckets is None else _check_buckets(position_buckets, L)
    if teacher is not None and teacher.cfg.vocab_size != model.cfg.vocab_size:
        raise ValueError(f"teacher vocab_size {teacher.cfg.vocab_size} != the model's {model.cfg.vocab_size}")
    models = [m for m in (teacher, model) if m is not None]
    modes = [m.training for m in models]
    for m in models:
        m.eval()
    dev = model.embed.weight.device
    # Sums per position in the block, in float64: the totals and the buckets
    # both come from them.
    sums = torch.zeros(3, L, dtype=torch.float64, device=dev)  # nll, teacher nll, kl
    pos_all = torch.arange(L, device=dev)
    try:
        for a in range(0, blocks.shape[0], batch_size):
            rows = blocks[a : a + batch_size]
            ids, tgt = rows[:, :-1], rows[:, 1:].flatten().to(dev)
            h = model.hidden_states(ids.to(dev)).flatten(0, 1)  # (N, d)
            h_t = w_t = None
            if teacher is not None:
                h_t = teacher.hidden_states(ids.to(teacher.embed.weight.device)).flatten(0, 1).to(dev)
                w_t = teacher.lm_head.weight.to(dev)
            pos = pos_all.repeat(rows.shape[0])  # (N,): each flattened token's position in its block
            for c in range(0, h.shape[0], token_chunk):
                sl = slice(c, c + token_chunk)
                ct = (h_t[sl], w_t) if teacher is not None else (None, None)
                s_nll, s_kl = _nll_kl(h[sl], model.lm_head.weight, tgt[sl], *ct)
                sums[0].index_add_(0, pos[sl], s_nll.double())
                sums[2].index_add_(0, pos[sl], s_kl.double())
                if teacher is not None:
                    sums[1].index_add_(0, pos[sl], _nll_kl(h_t[sl], w_t, tgt[sl], None, None)[0].double())
    finally:
        for m, mode in zip(models, modes, strict=True):
            m.train(mode)
    rows_n = blocks.shape[0]

    def figures(a: int, b: int) -> dict:
        nll, nll_t, kl = sums[:, a:b].sum(1).tolist()
        n = rows_n * (b - a)
        return {
            "ppl_student": math.exp(nll / n),
            "ppl_teacher": math.exp(nll_t / n) if teacher is not None else None,
            "kl": kl / n if teacher is not None else None,
            "tokens": n,
        }

    out = figures(0, L)
    if edges is not None:
        out["by_position"] = [{"start": a, "end": b, **figures(a, b)} for a, b in itertools.pairwise(edges)]
    return out


__all__ = ["evaluate", "mqar_accuracy"]
