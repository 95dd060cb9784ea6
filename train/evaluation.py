"""Held-out quality of a student against its teacher: perplexities and the per-token KL."""

from __future__ import annotations

import math

import torch
from torch import nn

from .forward import final_hidden
from .losses import distill_loss


@torch.no_grad()
def evaluate(
    teacher: nn.Module, student: nn.Module, blocks: torch.Tensor, batch_size: int = 8, token_chunk: int = 1024
) -> dict[str, float]:
    """Perplexity of both models and forward KL(teacher || student) per token (temperature 1).

    ``blocks`` (N, L + 1): token rows as ``archzoo.data.pack_blocks`` makes them (inputs
    ``[:, :-1]``, targets ``[:, 1:]``), e.g. from the held-out Shakespeare works. Both models run
    on their own devices in eval mode (restored afterwards). Returns
    ``{"ppl_student", "ppl_teacher", "kl", "tokens"}``.
    """
    if blocks.dim() != 2 or blocks.shape[1] < 2:
        raise ValueError(f"blocks must be (N, L + 1) token rows with L >= 1, got shape {tuple(blocks.shape)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    modes = teacher.training, student.training
    teacher.eval(), student.eval()
    dev_t, dev_s = teacher.embed.weight.device, student.embed.weight.device
    kl = ce_s = ce_t = 0.0
    n = 0
    try:
        for a in range(0, blocks.shape[0], batch_size):
            rows = blocks[a : a + batch_size]
            ids, tgt = rows[:, :-1], rows[:, 1:].flatten()
            h_t = final_hidden(teacher, ids.to(dev_t)).flatten(0, 1).to(dev_s)
            h_s = final_hidden(student, ids.to(dev_s)).flatten(0, 1)
            w_t = teacher.lm_head.weight.to(dev_s)
            s = distill_loss(h_s, student.lm_head.weight, h_t, w_t, tgt.to(dev_s), token_chunk=token_chunk)
            t = distill_loss(h_t, w_t, targets=tgt.to(dev_s), token_chunk=token_chunk)
            kl += float(s.kl) * s.n_tokens
            ce_s += float(s.ce) * s.n_targets
            ce_t += float(t.ce) * t.n_targets
            n += s.n_tokens
    finally:
        teacher.train(modes[0])
        student.train(modes[1])
    return {"ppl_student": math.exp(ce_s / n), "ppl_teacher": math.exp(ce_t / n), "kl": kl / n, "tokens": n}
