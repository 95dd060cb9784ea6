"""Prompts of different lengths into one cache, one forward per distinct length (``generate`` and the
speculative round share it).

Each row's cache holds its prompt from position 0 (no left padding), and a forward of several tokens
needs rows of one length, so rows used to be prefilled one at a time: at batch 512 that is 512 eager
forwards before the first captured step. On an H200 a teacher-generated corpus came at about 4,000 tokens/s,
a batch's time growing with its rows (9 s for 128, 32 s for 512), and this was the only loop over the rows
(the split of that time was not recorded; ``tools/bench_generation.py`` records it now).

Here the rows of each distinct length go through one forward into a cache of just
those rows (``Cache.empty_rows``), copied into theirs (``Cache.put_rows``); a length held by one row
writes through a view of it (``Cache.rows``), as before. The rows of one length run as a batch, so their
logits equal the row-by-row ones up to the rounding of a differently shaped matmul.

MoE layers that apply capacity at inference (``capacity_at_inference``) route a token depending on the
batch it runs in; for them the rows stay one forward each, as a single row's full forward would route.
"""

from __future__ import annotations

import torch

from .cache import Cache
from .kernels._dispatch import once


def prefill_rows(model, rows: list[torch.Tensor], cache: Cache) -> torch.Tensor:
    """Prompts (1-D LongTensors, one per row of an empty ``cache``) into ``cache`` -> each row's last logits (B, V)."""
    lens = [int(r.numel()) for r in rows]
    if len(set(lens)) == 1:
        return model(torch.stack(rows), cache=cache)[:, -1]
    if any(getattr(m, "capacity_at_inference", False) for m in model.modules()):
        once("prefill_rows", "prompts of different lengths prefill one row at a time: an MoE layer applies capacity "
             "at inference (capacity_at_inference=True), so its routing depends on the rows it runs with")  # fmt: skip
        return torch.cat([model(r[None], cache=cache.rows(b))[:, -1] for b, r in enumerate(rows)])
    groups: dict[int, list[int]] = {}
    for b, n in enumerate(lens):
        groups.setdefault(n, []).append(b)
    logits: torch.Tensor | None = None
    for members in groups.values():
        if len(members) == 1:
            b = members[0]
            part = model(rows[b][None], cache=cache.rows(b))[:, -1]
        else:
            sub = cache.empty_rows(len(members))
            part = model(torch.stack([rows[b] for b in members]), cache=sub)[:, -1]
            cache.put_rows(torch.tensor(members, device=cache.device), sub)
        if logits is None:
            logits = part.new_empty((len(rows), part.shape[-1]))
        logits[members] = part
    return logits
