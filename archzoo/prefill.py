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

A model whose every cache buffer is indexed by position (``LayerState.by_length``: global attention, MLA, CLA)
takes the rows in one forward instead, right-padded to the longest: a row's tokens sit at positions 0 .. n-1 and
attend only to earlier positions, so the pads after them change nothing they compute; the pads' K/V land past the
row's length, where the decode step masks them and the next token overwrites the first. ``cache.lengths`` is then
set to each row's own. Only the last real position of each row goes through the LM head. It is taken while the
padded tokens stay within ``PAD_BUDGET`` times the prompts' own (a corpus batch of 512 prompts took 46 eager
forwards, one per distinct length, 11-16 s of a 38 s shard on an H200: docs/distillation.md). Ring buffers and
recurrent states would take the pads in, so those models keep one forward per length.

Only each row's last position goes through the LM head, in every path: the prompts' whole logits are what the
prefill would otherwise keep, 64 rows x 4,096 positions x 49,152 entries = 25.8 GB in bf16 for the teacher, most of
the 36 GiB peak of the Pareto speed run's batch-64 rows and what kept speculative rows at k = 4 and 6 out of an
H100's memory there (``docs/results/decode/specbig_h100_swa-w128.md``). A prompt of one token takes the model's
forward (its decode step), as before.

MoE layers that apply capacity at inference (``capacity_at_inference``) route a token depending on the
batch it runs in; for them the rows stay one forward each, as a single row's full forward would route.
"""

from __future__ import annotations

import torch

from .cache import Cache
from .kernels._dispatch import once

PAD_BUDGET = 2.0  # one padded forward while rows x longest <= PAD_BUDGET x the prompts' tokens


def prefill_rows(model, rows: list[torch.Tensor], cache: Cache) -> torch.Tensor:
    """Prompts (1-D LongTensors, one per row of an empty ``cache``) into ``cache`` -> each row's last logits (B, V)."""
    lens = [int(r.numel()) for r in rows]
    if len(set(lens)) == 1:
        return _last_logits(model, torch.stack(rows), cache)
    if any(getattr(m, "capacity_at_inference", False) for m in model.modules()):
        once("prefill_rows", "prompts of different lengths prefill one row at a time: an MoE layer applies capacity "
             "at inference (capacity_at_inference=True), so its routing depends on the rows it runs with")  # fmt: skip
        return torch.cat([_last_logits(model, r[None], cache.rows(b)) for b, r in enumerate(rows)])
    by_length = all(s is None or not s.needs_snapshot for s in cache.layers)
    if by_length and len(rows) * max(lens) <= PAD_BUDGET * sum(lens):
        return _padded(model, rows, lens, cache)
    groups: dict[int, list[int]] = {}
    for b, n in enumerate(lens):
        groups.setdefault(n, []).append(b)
    logits: torch.Tensor | None = None
    for members in groups.values():
        if len(members) == 1:
            b = members[0]
            part = _last_logits(model, rows[b][None], cache.rows(b))
        else:
            sub = cache.empty_rows(len(members))
            part = _last_logits(model, torch.stack([rows[b] for b in members]), sub)
            cache.put_rows(torch.tensor(members, device=cache.device), sub)
        if logits is None:
            logits = part.new_empty((len(rows), part.shape[-1]))
        logits[members] = part
    return logits


def _last_logits(model, ids: torch.Tensor, cache: Cache) -> torch.Tensor:
    """``ids`` (B, T) through ``model`` into ``cache`` -> the last position's logits (B, V), the LM head applied to
    that position only (a one-token input takes the model's forward: its decode step)."""
    if ids.shape[1] == 1:
        return model(ids, cache=cache)[:, -1]
    return model.lm_head(model.hidden_states(ids, cache)[:, -1])


def _padded(model, rows: list[torch.Tensor], lens: list[int], cache: Cache) -> torch.Tensor:
    """Every row in one forward, right-padded to the longest (see the module docstring); -> last logits (B, V)."""
    L = max(lens)
    ids = torch.stack([torch.nn.functional.pad(r, (0, L - n), value=0) for r, n in zip(rows, lens, strict=True)])
    x = model.hidden_states(ids, cache)  # (B, L, d), every row's positions 0 .. L-1 written
    n = torch.tensor(lens, device=cache.lengths.device)
    cache.lengths.copy_(n)  # each row's own: its pads' slots are past it, masked, overwritten by its next token
    last = x[torch.arange(len(rows), device=x.device), (n - 1).to(x.device)]  # (B, d)
    return model.lm_head(last)
