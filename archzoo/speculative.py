"""Speculative decoding: a draft model proposes ``k`` tokens, the target verifies them in one forward.

``ArchZooLM.generate(..., draft=student, num_draft_tokens=k)`` lands here. One round:

1. The draft takes the latest committed token (two tokens after a round that accepted all ``k``)
   and proposes ``d_1 .. d_k`` one step at a time through its own cache.
2. The target reads ``[t, d_1 .. d_k]`` in one (B, k+1) forward through its cache and gets
   ``p_1 .. p_{k+1}``.
3. Row b accepts ``d_j`` while ``d_j == argmax p_j`` (greedy) or with probability
   ``min(1, p_j(d_j) / q_j(d_j))`` (sampling); the first refused position draws from
   ``normalize(max(p_j - q_j, 0))``, and a row that accepted all ``k`` draws from ``p_{k+1}``.
   The output is the target's own: greedy tokens equal its greedy decode, samples its distribution.
4. The batch keeps ``n = min_b n_b`` draft tokens plus one token per row: the row that stopped at
   ``n`` gives its corrected token, a row that accepted more gives its (accepted) ``d_{n+1}``.
   Every row thus advances by ``n + 1`` tokens and rows keep the offsets their prompts gave them.

Rollback (both caches must look as if the refused tokens were never seen). ``LayerState.by_length``
says which buffers rewind by lowering ``Cache.lengths`` (global attention K/V, MLA latents:
positions beyond a row's length are masked and later overwritten); everything else (sliding-window
ring buffers, linear-attention ``S``/``z``, S4D ``ssm``, Mamba ``conv``/``ssm``) is copied:

- draft: after each of its ``k`` one-token steps, a snapshot of those buffers (``Cache.snapshot``);
  rollback restores the snapshot taken after ``d_n`` and sets the lengths. No extra forward.
- target: one snapshot before the verify forward; when a token was refused, rollback restores it,
  sets the lengths back and replays the kept ``[t, d_1 .. d_n]`` in one (B, n+1) forward.
  A model whose every buffer rewinds by length (pure attention / MLA) skips the copies and the
  replay: lowering ``lengths`` is its whole rollback.

Multi-token forwards here use per-row positions (``_forward``: the decode context, positions from
``cache.lengths``, with T > 1), which the layers' decode paths support, so prompts of different
lengths need no padding. With ``generate(..., compile=True)`` both models' forwards (the draft's
one-token steps, the verify and replay forwards) run their step blocks compiled by
``compile_step_blocks`` (one graph per block kind and step length); otherwise eagerly. Nothing is
captured in a CUDA graph yet.
"""

from __future__ import annotations

import time

import torch

from .cache import Cache
from .layers import ForwardContext


def check_draft(model, draft, num_draft_tokens: int) -> None:
    """One clear ValueError when ``draft`` cannot draft for ``model``."""
    if isinstance(num_draft_tokens, bool) or not isinstance(num_draft_tokens, int) or num_draft_tokens < 1:
        raise ValueError(f"num_draft_tokens must be an integer >= 1, got {num_draft_tokens!r}")
    if not hasattr(draft, "new_cache") or not hasattr(draft, "cfg"):
        raise ValueError(f"draft must be an ArchZooLM, got {type(draft).__name__}")
    if draft.cfg.vocab_size != model.cfg.vocab_size:
        raise ValueError(
            f"draft vocab_size {draft.cfg.vocab_size} differs from the target's {model.cfg.vocab_size}; "
            "a draft must share the target's tokenizer"
        )
    tok, dtok = getattr(model, "tokenizer", None), getattr(draft, "tokenizer", None)
    if tok is not None and dtok is not None and tok is not dtok and _vocab(tok) != _vocab(dtok):
        raise ValueError("the draft's tokenizer differs from the target's; a draft must share the target's tokenizer")
    if draft.embed.weight.device != model.embed.weight.device:
        raise ValueError(f"draft is on {draft.embed.weight.device}, the target on {model.embed.weight.device}")


def _vocab(tokenizer):
    return tokenizer.get_vocab() if hasattr(tokenizer, "get_vocab") else repr(tokenizer)


def _forward(model, ids: torch.Tensor, cache: Cache) -> torch.Tensor:
    """ids (B, T) -> logits (B, T, V); row b continues from ``cache.lengths[b]`` (rows may differ)."""
    if ids.shape[1] == 1:
        return model(ids, cache=cache)  # the ordinary (compilable) decode step
    ctx = ForwardContext(pos=None, lengths=cache.lengths)  # per-row positions from the device lengths
    x = model.embed(ids)  # (B, T, d)
    blocks = model.step_blocks or model.blocks  # compiled by block when generate(compile=True) asked for it
    for block, state in zip(blocks, cache.layers, strict=True):
        x = block(x, state, ctx)
    cache.lengths.add_(ids.shape[1])
    return model.lm_head(model.norm(x))


def probabilities(logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None) -> torch.Tensor:
    """logits (..., V) -> float64 probabilities after temperature, top-k and top-p, as ``sample_next`` filters."""
    logits = logits.double() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        p = sorted_logits.softmax(dim=-1)
        drop = torch.zeros_like(p, dtype=torch.bool).scatter(-1, order, (p.cumsum(dim=-1) - p) >= top_p)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits.softmax(dim=-1)


def _draw(probs: torch.Tensor, generator) -> torch.Tensor:
    """probs (B, V) -> (B,) one draw per row."""
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


def accept(
    p: torch.Tensor,
    drafted: torch.Tensor,
    q: torch.Tensor | None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The verify rule. p (B, k+1, V) target probabilities (logits when greedy); drafted (B, k) the draft's
    tokens; q (B, k, V) the draft's probabilities, None for greedy.

    Returns (n_b (B,): leading draft tokens row b accepts, next (B, k+1): at column j the token row b
    emits at position j when it stops there: the corrected draw (residual / bonus / argmax)).
    """
    B, k = drafted.shape
    if q is None:  # greedy: accept while the draft agrees with the target's argmax
        best = p.argmax(dim=-1)  # (B, k+1)
        ok = drafted == best[:, :k]
        return ok.long().cumprod(dim=1).sum(dim=1), best
    p_d = p[:, :k].gather(-1, drafted[..., None])[..., 0]  # (B, k)
    q_d = q.gather(-1, drafted[..., None])[..., 0]
    u = torch.rand(B, k, dtype=p.dtype, device=p.device, generator=generator)
    ok = u * q_d < p_d  # u < p/q, with q_d > 0 for a drawn token
    n = ok.long().cumprod(dim=1).sum(dim=1)
    # Only row b's column n_b is used: the residual there (or the bonus p_{k+1} when n_b = k).
    rows = torch.arange(B, device=p.device)
    p_n = p[rows, n]  # (B, V)
    q_n = torch.cat([q, torch.zeros_like(q[:, :1])], dim=1)[rows, n]  # q_{k+1} = 0: the bonus draws from p
    resid = (p_n - q_n).clamp_min(0)
    mass = resid.sum(-1, keepdim=True)
    resid = torch.where(mass > 0, resid / mass.clamp_min(1e-300), p_n)  # p == q: nothing to correct
    nxt = torch.zeros(B, k + 1, dtype=torch.long, device=p.device)
    nxt[rows, n] = _draw(resid, generator)
    return n, nxt


def speculative_generate(
    model,
    draft,
    rows: list[torch.Tensor],
    max_new_tokens: int,
    k: int,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    eos_ids: list[int],
    generator: torch.Generator | None,
    stats: dict,
    caches: tuple[Cache, Cache] | None = None,
) -> torch.Tensor:
    """Prompts (one 1-D tensor per row) -> (B, N) generated tokens, N >= max_new_tokens (the last round
    may run up to k past it; the caller cuts); fills ``stats``. ``caches``: the (target, draft) caches
    to use, for tests that inspect them afterwards; by default new ones of the length needed."""
    device = model.embed.weight.device
    B, lens = len(rows), [int(r.numel()) for r in rows]
    length = max(lens) + max_new_tokens + k + 1  # a round may run k tokens past the end
    tcache, dcache = caches or (model.new_cache(B, length), draft.new_cache(B, length))
    greedy = temperature == 0.0

    def probs(logits: torch.Tensor) -> torch.Tensor:
        return logits if greedy else probabilities(logits, temperature, top_k, top_p)

    def pick(pr: torch.Tensor) -> torch.Tensor:  # (B, V) -> (B,)
        return pr.argmax(dim=-1) if greedy else _draw(pr, generator)

    t0 = _now(device)
    logits = _prefill(model, rows, tcache)
    _prefill(draft, rows, dcache)
    stats["prefill_s"] = _now(device) - t0

    t0 = _now(device)
    out = torch.zeros(B, max_new_tokens + k + 1, dtype=torch.long, device=device)
    n_out, rounds, kept, row_kept = 0, 0, 0, 0
    eos = torch.tensor(eos_ids, dtype=torch.long, device=device) if eos_ids else None
    if max_new_tokens > 0:
        last = pick(probs(logits))  # (B,) the latest committed token: not yet in either cache
        out[:, 0] = last
        n_out = 1
        feed = last[:, None]  # what the draft reads first: one token, or two after a fully accepted round
        t_snap_needed, d_snap_needed = tcache.needs_snapshot, dcache.needs_snapshot
    while n_out < max_new_tokens and not (eos is not None and bool(torch.isin(out[:, :n_out], eos).any(1).all())):
        # 1. draft k tokens, keeping what its rollback needs after each step
        drafted, qs, snaps = [], [], []
        for _ in range(k):
            q = probs(_forward(draft, feed, dcache)[:, -1])
            if d_snap_needed:
                snaps.append(dcache.snapshot())
            feed = pick(q)[:, None]
            drafted.append(feed[:, 0])
            qs.append(q)
        drafted = torch.stack(drafted, dim=1)  # (B, k)
        # 2. verify all k in one (B, k+1) forward
        before = tcache.lengths.clone()
        t_snap = tcache.snapshot() if t_snap_needed else None
        verify_in = torch.cat([last[:, None], drafted], dim=1)  # (B, k+1)
        p = probs(_forward(model, verify_in, tcache))  # (B, k+1, V)
        n_b, nxt = accept(p, drafted, None if greedy else torch.stack(qs, dim=1), generator)
        n = int(n_b.min())  # the one host synchronisation of a round
        rows_idx = torch.arange(B, device=device)
        # row b stops at n: its corrected token, or its accepted d_{n+1} when it accepted more
        new = torch.where(n_b > n, drafted[:, min(n, k - 1)], nxt[rows_idx, n])  # (B,)
        # 3. roll back both caches to [.., t, d_1 .. d_n]
        if n < k:
            if t_snap is not None:
                tcache.lengths.copy_(before)
                tcache.restore(t_snap)
                _forward(model, verify_in[:, : n + 1], tcache)
            else:
                tcache.lengths.sub_(k - n)
            if snaps:
                dcache.restore(snaps[n])
            dcache.lengths.sub_(k - 1 - n)  # the draft read t, d_1 .. d_{k-1}
            feed = new[:, None]
        else:
            feed = torch.stack([drafted[:, -1], new], dim=1)  # the draft never read d_k
        tcache.host_max_len = int(before.max()) + n + 1
        dcache.host_max_len = tcache.host_max_len - feed.shape[1] + 1
        out[:, n_out : n_out + n] = drafted[:, :n]
        out[:, n_out + n] = new
        last = new
        n_out += n + 1
        rounds += 1
        kept += n
        row_kept += int(n_b.sum())
    out = out[:, :n_out]
    if eos is not None:  # after a row's first EOS it keeps emitting EOS, as generate's step does
        hit = torch.isin(out, eos).long()
        out = torch.where(hit.cumsum(dim=1) - hit > 0, eos[0], out)
    stats["decode_s"] = _now(device) - t0
    stats["new_tokens"] = min(n_out, max_new_tokens)
    stats["decode_steps"] = rounds  # verify forwards
    stats["num_draft_tokens"] = k
    stats["verify_steps"] = rounds
    stats["draft_steps"] = rounds * k
    stats["acceptance_rate"] = kept / (rounds * k) if rounds else None
    stats["row_acceptance_rate"] = row_kept / (rounds * k * B) if rounds else None
    stats["accepted_per_verify"] = kept / rounds if rounds else None
    stats["tokens_per_verify"] = (kept + rounds) / rounds if rounds else None
    stats["cache_bytes"] = tcache.nbytes()
    stats["draft_cache_bytes"] = dcache.nbytes()
    return out


def _prefill(model, rows: list[torch.Tensor], cache: Cache) -> torch.Tensor:
    """Prompts into ``cache`` (together when of one length, else row by row) -> last logits (B, V)."""
    if len({int(r.numel()) for r in rows}) == 1:
        return model(torch.stack(rows), cache=cache)[:, -1]
    return torch.cat([model(r[None], cache=cache.rows(b))[:, -1] for b, r in enumerate(rows)])


def _now(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()
