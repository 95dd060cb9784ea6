"""Held-out quality: perplexity and KL(teacher || model) per token, and MQAR accuracy.

The trainer's validation and the benchmark report both score models here, so the two agree by
construction (DESIGN.md, Layering: ``bench/`` never imports the trainer). Everything runs without
gradients, in chunks of tokens, so a teacher's logits over a 49k vocabulary never fill memory.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .data.mqar import mqar_accuracy


@torch.no_grad()
def _nll_kl(h: torch.Tensor, w: torch.Tensor, tgt: torch.Tensor, h_t, w_t) -> tuple[float, float]:
    """Sums over rows: -log p(target) and KL(teacher || model), in fp32 or wider. h (N, d), w (V, d)."""
    acc = torch.promote_types(h.dtype, torch.float32)
    logp = torch.log_softmax(F.linear(h, w).to(acc), dim=-1)  # (N, V), as the LM head computes it
    nll = -logp.gather(1, tgt[:, None]).sum()
    kl = torch.zeros((), device=h.device)
    if h_t is not None:
        logq = torch.log_softmax(F.linear(h_t, w_t).to(acc), dim=-1)
        kl = (logq.exp() * (logq - logp)).sum()
    return float(nll), float(kl)


@torch.no_grad()
def evaluate(
    teacher: nn.Module | None,
    model: nn.Module,
    blocks: torch.Tensor,
    batch_size: int = 8,
    token_chunk: int = 1024,
) -> dict[str, float]:
    """Perplexity of ``model`` (and of ``teacher``) and the mean per-token KL(teacher || model).

    ``blocks`` (N, L + 1): token rows as ``archzoo.data.pack_blocks`` makes them (inputs ``[:, :-1]``,
    targets ``[:, 1:]``). Each model runs on its own device in eval mode (restored afterwards); the
    KL is taken at temperature 1 on the model's device. Returns ``{"ppl_student", "ppl_teacher",
    "kl", "tokens"}`` (the teacher's entries are None without a teacher).
    """
    if blocks.dim() != 2 or blocks.shape[1] < 2:
        raise ValueError(f"blocks must be (N, L + 1) token rows with L >= 1, got shape {tuple(blocks.shape)}")
    if batch_size < 1 or token_chunk < 1:
        raise ValueError(f"batch_size and token_chunk must be >= 1, got {batch_size} and {token_chunk}")
    if teacher is not None and teacher.cfg.vocab_size != model.cfg.vocab_size:
        raise ValueError(f"teacher vocab_size {teacher.cfg.vocab_size} != the model's {model.cfg.vocab_size}")
    models = [m for m in (teacher, model) if m is not None]
    modes = [m.training for m in models]
    for m in models:
        m.eval()
    dev = model.embed.weight.device
    nll = nll_t = kl = 0.0
    n = 0
    try:
        for a in range(0, blocks.shape[0], batch_size):
            rows = blocks[a : a + batch_size]
            ids, tgt = rows[:, :-1], rows[:, 1:].flatten().to(dev)
            h = model.hidden_states(ids.to(dev)).flatten(0, 1)  # (N, d)
            h_t = w_t = None
            if teacher is not None:
                h_t = teacher.hidden_states(ids.to(teacher.embed.weight.device)).flatten(0, 1).to(dev)
                w_t = teacher.lm_head.weight.to(dev)
            for c in range(0, h.shape[0], token_chunk):
                sl = slice(c, c + token_chunk)
                ct = (h_t[sl], w_t) if teacher is not None else (None, None)
                s_nll, s_kl = _nll_kl(h[sl], model.lm_head.weight, tgt[sl], *ct)
                nll, kl = nll + s_nll, kl + s_kl
                if teacher is not None:
                    nll_t += _nll_kl(h_t[sl], w_t, tgt[sl], None, None)[0]
            n += tgt.numel()
    finally:
        for m, mode in zip(models, modes, strict=True):
            m.train(mode)
    return {
        "ppl_student": math.exp(nll / n),
        "ppl_teacher": math.exp(nll_t / n) if teacher is not None else None,
        "kl": kl / n if teacher is not None else None,
        "tokens": n,
    }


__all__ = ["evaluate", "mqar_accuracy"]
