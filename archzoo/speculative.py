"""Speculative decoding: a draft model proposes ``k`` tokens, the target verifies them in one forward.

``ArchZooLM.generate(..., draft=student, num_draft_tokens=k)`` lands here. A round has static shapes, so on
CUDA it is captured whole in one CUDA graph (``archzoo.generation`` pools and captures it), and elsewhere the
same round function runs eagerly. One round (``SpeculativeRound.round``):

1. The draft reads ``[t, d_1 .. d_k]`` by ``k+1`` one-token steps through its own cache, where ``t`` is the
   latest committed token and ``d_j`` what step ``j-1`` drew (the last step's proposal is discarded: it runs
   so that the draft has read ``d_k`` when all ``k`` are kept, and every round is the same ``k+1`` steps).
2. The target reads ``[t, d_1 .. d_k]`` in one (B, k+1) forward through its cache and gets ``p_1 .. p_{k+1}``.
3. Row b accepts ``d_j`` while ``d_j == argmax p_j`` (greedy) or with probability
   ``min(1, p_j(d_j) / q_j(d_j))`` (sampling); the first refused position draws from
   ``normalize(max(p_j - q_j, 0))``, and a row that accepted all ``k`` draws from ``p_{k+1}`` (``accept``).
   The output is the target's own: greedy tokens equal its greedy decode, samples its distribution.
4. Each row keeps its own ``n_b`` draft tokens plus one token of the target's, so rows advance by different
   counts: outputs are written at per-row device offsets (``n_out``), the caches' ``lengths`` move per row.

Rollback (both caches must look as if the refused tokens were never seen). ``LayerState.by_length``
says which buffers rewind by lowering ``Cache.lengths`` (global attention K/V, MLA latents:
positions beyond a row's length are masked and later overwritten); everything else (sliding-window
ring buffers, linear-attention ``S``/``z``, S4D ``ssm``, Mamba ``conv``/``ssm``) is copied:

- draft: static snapshot slots (``_Slots``): slot ``i`` holds those buffers after the round's first ``i``
  tokens, ``i = 0 .. k``. Rollback picks each row's slot by a device index (a gather, no host read) and sets
  the lengths; keeping all ``k+1`` keeps the current state. A ring buffer (``LayerState.ring``) keeps only
  the k+1 slots the round overwrites (``_RingSlots``), saved before the first step and scattered back for the
  refused positions; the target's rings likewise around the verify.
- target whose every buffer rewinds by length or by ring slots (attention, MLA, sliding windows; the teacher):
  ``lengths = before + n_b + 1`` on the device, and the refused positions' ring slots put back. Nothing else:
  this is the captured path.
- target with buffers that need a copy (recurrent states, hybrids): one snapshot before the verify;
  rollback restores it and replays the kept ``[t, d_1 .. d_n]`` in one (B, n+1) forward. That forward's length
  depends on the data, so the host reads ``n`` every round, and a multi-token forward advances every row alike,
  so the batch keeps ``n = min_b n_b`` (a row that accepted more gives its accepted ``d_{n+1}``): still the
  target's distribution, because where a row stops depends only on tokens already accepted. This path runs
  eagerly (blocks compiled with ``compile=True``) and is never captured.

The host looks at the device only between batches of rounds (``_decode``): it reads the least advanced unfinished
row, queues as many rounds as that row surely still needs (``ceil(remaining / (k+1))``, at most ``SYNC_EVERY``
when EOS ids can end rows early), and looks again. A row that finished (``max_new_tokens`` reached, or an EOS
emitted) is frozen: its rounds keep nothing (``keep = 0``: lengths and draft state restored, no output written).
So rounds past a row's end cost time but change nothing, and no round writes past the output buffer or the
caches: both are sized for ``max_new_tokens + 2 (k+1)`` tokens past the longest prompt (``cache_length``).

Multi-token forwards use per-row positions (``_forward``: the decode context, positions from
``cache.lengths``, with T > 1), which the layers' decode paths support, so prompts of different
lengths need no padding. Recurrent layers (Mamba, linear attention, BASED) take such a forward token by token
through their update kernels: a compiled step block traces those (custom ops) and not the sequence kernels, and
the target computes what it would decoding alone. With ``generate(..., compile=True)`` both models' forwards run
their step blocks compiled by ``compile_step_blocks``.
"""

from __future__ import annotations

import time

import torch

from .cache import Cache
from .layers import ForwardContext
from .layers import fused as fused_layer
from .prefill import prefill_rows

# Rounds the host queues at most before it looks again whether every row has emitted an EOS id (without EOS ids
# it queues exactly the rounds the slowest row still needs, so none run past the end). A run with EOS ids may run
# up to SYNC_EVERY - 1 rounds after its last row ended; frozen rows make them no-ops.
SYNC_EVERY = 16


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


def cache_length(prompt_len: int, max_new_tokens: int, k: int) -> int:
    """Tokens each cache (and the output buffer) must hold: the longest prompt, the new tokens, and two rounds of
    slack: the round that crosses ``max_new_tokens`` may end ``k`` past it, and a frozen row's rounds still write
    (then drop) ``k+1`` positions past its length."""
    return prompt_len + max_new_tokens + 2 * (k + 1)


def _forward(model, ids: torch.Tensor, cache: Cache) -> torch.Tensor:
    """ids (B, T) -> logits (B, T, V); row b continues from ``cache.lengths[b]`` (rows may differ)."""
    if ids.shape[1] == 1:
        return model(ids, cache=cache)  # the ordinary (compilable) decode step
    # per-row positions from the device lengths; the fused projection copies when the cache asks for them
    ctx = ForwardContext(pos=None, lengths=cache.lengths, fused=cache.fused_weights)
    x = model.embed(ids)  # (B, T, d)
    # compiled by block when generate(compile=True) asked for it (and the cache lets it: Cache.compiled_blocks)
    blocks = model.step_blocks if model.step_blocks is not None and cache.compiled_blocks else model.blocks
    for block, state in zip(blocks, cache.layers, strict=True):
        x = block(x, state, ctx)
    cache.lengths.add_(ids.shape[1])
    if cache.fused_weights:  # as the one-token step's head: the final norm in the decode GEMV where it runs
        return fused_layer.decode_project(x, model.lm_head.weight, model.lm_head.bias, norm=model.norm)
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
    """probs (B, V) -> (B,) one draw per row, by an exponential race (``argmax(p / E)``, ``E ~ Exp(1)``, picks i
    with probability p_i): ``torch.multinomial`` checks its input with a host read, which a captured round cannot
    do (``sampling.sample_next`` draws the same way)."""
    race = torch.empty_like(probs).exponential_(1.0, generator=generator)
    return (probs / race).argmax(dim=-1)


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
    Device ops only: no host read, so it runs inside a captured round.
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


class _RingSlots:
    """The slots a round overwrites in a cache's ring buffers (``LayerState.ring``: (B, H, slots, D), position p in
    slot p % slots), saved before the round writes and put back for the positions it refuses: ``n`` positions a
    row from its length at the round's start, (B, H, n, D) a buffer, where a whole snapshot would copy every slot
    (a window of 128 at batch 64 and 30 layers: 189 MB a copy, ``n`` copies a round). Rings with fewer slots than
    ``n`` (a position would overwrite one the same round wrote) are left to ``_Slots``."""

    def __init__(self, cache: Cache, n: int):
        self.n = n
        self.pairs = [
            (buf, buf.new_empty((buf.shape[0], buf.shape[1], n, buf.shape[3])))
            for s in cache.layers
            if s is not None
            for name, buf in s.buffers.items()
            if name in s.ring and name not in s.by_length and buf.shape[2] >= n
        ]

    def _index(self, buf: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
        """(B,) first position -> (B, H, n, D) gather / scatter index of the slots of positions start .. start+n-1."""
        B, H, S, D = buf.shape
        slots = torch.remainder(start[:, None] + torch.arange(self.n, device=start.device), S)  # (B, n)
        return slots[:, None, :, None].expand(B, H, self.n, D)

    def save(self, start: torch.Tensor) -> None:
        for buf, saved in self.pairs:
            saved.copy_(buf.gather(2, self._index(buf, start)))

    def restore(self, start: torch.Tensor, keep: torch.Tensor) -> None:
        """Row b keeps positions start .. start + keep[b] - 1 as written; the slots of the later ones get back
        what they held before the round."""
        refused = (torch.arange(self.n, device=keep.device)[None, :] >= keep[:, None])[:, None, :, None]  # (B,1,n,1)
        for buf, saved in self.pairs:
            index = self._index(buf, start)
            buf.scatter_(2, index, torch.where(refused, saved, buf.gather(2, index)))

    def owns(self, buf: torch.Tensor) -> bool:
        return any(b is buf for b, _ in self.pairs)

    def nbytes(self) -> int:
        return sum(s.numel() * s.element_size() for _, s in self.pairs)


class _Slots:
    """Static copies of a cache's buffers that lowering ``lengths`` cannot rewind (``LayerState.by_length``), but
    for the ring buffers a ``_RingSlots`` (``rings``) keeps by their overwritten slots.

    ``n`` slots per buffer, stacked: (n, *buffer.shape); every buffer is batch-first (``Cache.rows`` relies on
    it too). ``save(i)`` copies the buffers into slot i; ``restore(slot)`` writes back, row b from slot
    ``slot[b]`` (a device index: a gather, no host read), and keeps row b's current state where ``slot[b] >= n``.
    """

    def __init__(self, cache: Cache, n: int, rings: _RingSlots | None = None):
        self.n = n
        self.pairs = [
            (buf, torch.empty((n, *buf.shape), dtype=buf.dtype, device=buf.device))
            for s in cache.layers
            if s is not None
            for name, buf in s.buffers.items()
            if name not in s.by_length and not (rings is not None and rings.owns(buf))
        ]

    def save(self, i: int) -> None:
        for buf, stack in self.pairs:
            stack[i].copy_(buf)

    def restore(self, slot: torch.Tensor) -> None:
        rows = torch.arange(slot.shape[0], device=slot.device)
        current = slot >= self.n
        index = slot.clamp(max=self.n - 1)
        for buf, stack in self.pairs:
            keep = current.view(-1, *([1] * (buf.dim() - 1)))
            buf.copy_(torch.where(keep, buf, stack[index, rows]))

    def nbytes(self) -> int:
        return sum(s.numel() * s.element_size() for _, s in self.pairs)


class SpeculativeRound:
    """Both caches, the static tensors a round reads and writes, the round function and (captured) its graph.

    ``round()`` has static shapes and, when the target rewinds by length (``replay`` False), reads nothing on the
    host: ``generation`` captures it in one CUDA graph on CUDA (``graph``) and pools it per batch size, length
    bucket, k, sampling settings, EOS ids and draft. With ``replay`` True (a target that needs snapshots) it
    reads the batch's ``n`` on the host once per round to replay the kept tokens, and is never captured.
    """

    def __init__(
        self,
        model,
        draft,
        caches: tuple[Cache, Cache],
        k: int,
        temperature: float,
        top_k: int | None,
        top_p: float | None,
        eos_ids: list[int],
        generator: torch.Generator | None,
    ):
        tcache, dcache = caches
        if tcache.max_seq_len != dcache.max_seq_len or tcache.batch_size != dcache.batch_size:
            raise ValueError("the target's and the draft's caches need one batch size and one length")
        self.model, self.draft, self.tcache, self.dcache, self.k = model, draft, tcache, dcache, k
        self.temperature, self.top_k, self.top_p, self.generator = temperature, top_k, top_p, generator
        B, dev = tcache.batch_size, tcache.device
        self.length = tcache.max_seq_len
        # Both models' decode steps read the fused projection copies, as generate's step does; the caller keeps
        # them fresh (ArchZooLM.refresh_fused).
        tcache.fused_weights = dcache.fused_weights = True
        self.last = torch.zeros(B, dtype=torch.long, device=dev)  # (B,) latest committed token, in neither cache
        self.out = torch.zeros(B, self.length, dtype=torch.long, device=dev)  # generated tokens, written by offset
        self.n_out = torch.zeros(B, dtype=torch.long, device=dev)  # (B,) tokens row b has generated
        self.done = torch.zeros(B, dtype=torch.bool, device=dev)  # (B,) row b reached the limit or emitted EOS
        self.limit = torch.zeros((), dtype=torch.long, device=dev)  # () max_new_tokens of this call
        # (4,): row-rounds (a row's round that kept tokens), draft tokens kept, draft tokens rows accepted before
        # the batch minimum, rounds in which some row kept tokens
        self.counts = torch.zeros(4, dtype=torch.long, device=dev)
        self.eos = torch.tensor(eos_ids, dtype=torch.long, device=dev) if eos_ids else None
        # Ring buffers: their k+1 overwritten slots a round; everything else that cannot rewind by length, whole.
        self.drings, self.trings = _RingSlots(dcache, k + 1), _RingSlots(tcache, k + 1)
        dslots, tslots = _Slots(dcache, k + 1, self.drings), _Slots(tcache, 1, self.trings)
        self.dslots = dslots if dslots.pairs else None
        # A target with buffers that neither rewind by length nor by ring slots (recurrent states, a ring narrower
        # than k+1): restore its snapshot and replay the kept tokens, the batch's minimum. Attention, MLA and
        # sliding windows roll back per row on the device.
        self.replay = bool(tslots.pairs)
        self.tslots = tslots if self.replay else None
        # Host bound of each cache's longest row at a round's start, for the eager capacity guard of one-token
        # forwards (``ArchZooLM._context`` reads and advances ``Cache.host_max_len``). The real lengths move on
        # the device by rollbacks the host never reads, so each round sets the worst case the cache allows:
        # ``length - (k+1)``, which cache_length's sizing guarantees. Nothing slices by it; a captured replay
        # runs no Python at all.
        self.bound = self.length - (k + 1)
        self.graph: torch.cuda.CUDAGraph | None = None

    def nbytes(self) -> int:
        """Bytes of the snapshot slots and saved ring slots (both caches' own are ``Cache.nbytes``)."""
        return sum(s.nbytes() for s in (self.dslots, self.tslots, self.drings, self.trings) if s is not None)

    def reset(self) -> None:
        for c in (self.tcache, self.dcache):
            c.reset()
        for t in (self.last, self.out, self.n_out, self.done, self.limit, self.counts):
            t.zero_()

    def step(self) -> None:
        """One round: the graph's replay when captured, else the round function."""
        if self.graph is not None:
            self.graph.replay()
        else:
            self.round()

    def _probs(self, logits: torch.Tensor) -> torch.Tensor:
        return logits if self.temperature == 0.0 else probabilities(logits, self.temperature, self.top_k, self.top_p)

    def _pick(self, probs: torch.Tensor) -> torch.Tensor:  # (B, V) -> (B,)
        return probs.argmax(dim=-1) if self.temperature == 0.0 else _draw(probs, self.generator)

    def start(self, first: torch.Tensor, max_new_tokens: int) -> None:
        """After the prefill: ``first`` (B,) the target's first new token."""
        self.last.copy_(first)
        self.out[:, 0] = first
        self.n_out.fill_(1)
        self.limit.fill_(max_new_tokens)
        self.done.copy_(self.n_out >= self.limit)
        if self.eos is not None:
            self.done |= (first[:, None] == self.eos).any(1)

    def round(self) -> None:
        """Draft k (+1) tokens, verify, accept, roll back, write the outputs. Static shapes; no host read unless
        ``replay``."""
        model, draft, tcache, dcache, k = self.model, self.draft, self.tcache, self.dcache, self.k
        B = self.last.shape[0]
        dev = self.last.device
        tcache.host_max_len = dcache.host_max_len = self.bound
        # A finished row is frozen: it keeps nothing. With replay every row advances alike, so rows freeze
        # together, once all are done (a row past its EOS keeps decoding until then; its tokens become EOS).
        active = (~self.done).any().expand(B) if self.replay else ~self.done
        t_before, d_before = tcache.lengths.clone(), dcache.lengths.clone()

        # 1. the draft reads [t, d_1 .. d_k]: k+1 one-token steps, snapshot slot i after its first i tokens (its
        # rings: the k+1 slots the steps overwrite, saved first)
        self.drings.save(d_before)
        token, drafted, qs = self.last[:, None], [], []
        for j in range(k + 1):
            if self.dslots is not None:
                self.dslots.save(j)
            logits = draft(token, cache=dcache)[:, -1]
            if j < k:  # the last step's proposal is not used
                q = self._probs(logits)
                token = self._pick(q)[:, None]
                drafted.append(token[:, 0])
                qs.append(q)
        drafted = torch.stack(drafted, dim=1)  # (B, k)

        # 2. the target verifies all k in one (B, k+1) forward
        if self.tslots is not None:
            self.tslots.save(0)
        self.trings.save(t_before)
        verify_in = torch.cat([self.last[:, None], drafted], dim=1)  # (B, k+1)
        p = self._probs(_forward(model, verify_in, tcache))  # (B, k+1, V)
        n_b, nxt = accept(p, drafted, None if self.temperature == 0.0 else torch.stack(qs, dim=1), self.generator)

        # 3. what each row keeps: its own n_b, or the batch's minimum when the target replays
        m = n_b.min().expand(B) if self.replay else n_b  # (B,) draft tokens kept
        rows = torch.arange(B, device=dev)
        # the row's token after them: the target's own where it stopped, its accepted d_{m+1} where it accepted more
        new = torch.where(n_b > m, drafted[rows, m.clamp(max=k - 1)], nxt[rows, m])  # (B,)
        keep = torch.where(active, m + 1, 0)  # tokens of [t, d_1 .. d_k] both caches keep

        # 4. roll back both caches to [.., t, d_1 .. d_m]
        dcache.lengths.copy_(d_before + keep)
        if self.dslots is not None:
            self.dslots.restore(keep)  # slot keep; keep == k+1 keeps the current state
        self.drings.restore(d_before, keep)
        if self.replay:
            self._replay_target(keep, t_before, verify_in)
        else:
            tcache.lengths.copy_(t_before + keep)
            self.trings.restore(t_before, keep)

        # 5. outputs [d_1 .. d_m, new] at each row's offset; a frozen row writes back what its columns hold
        emitted = torch.cat([drafted, new[:, None]], dim=1).scatter(1, m[:, None], new[:, None])  # (B, k+1)
        cols = torch.arange(k + 1, device=dev)
        offsets = self.n_out[:, None] + cols  # (B, k+1), < the buffer's width (cache_length)
        emitted = torch.where(active[:, None], emitted, self.out.gather(1, offsets))
        self.out.scatter_(1, offsets, emitted)
        if self.eos is not None:
            hit = (emitted[..., None] == self.eos).any(-1) & (cols <= m[:, None]) & active[:, None]
            self.done |= hit.any(dim=1)
        self.n_out.add_(keep)
        self.done |= self.n_out >= self.limit
        self.last.copy_(torch.where(active, new, self.last))
        a = active.long()
        self.counts.add_(torch.stack([a.sum(), (m * a).sum(), (n_b * a).sum(), a.amax()]))

    def _replay_target(self, keep: torch.Tensor, t_before: torch.Tensor, verify_in: torch.Tensor) -> None:
        """Roll back a target that cannot rewind by length: restore its pre-verify snapshot and replay the kept
        tokens (``keep`` is one count for every row here). The replay's length depends on the data: the one host
        read of an uncaptured round."""
        n = int(keep[0])
        if n == self.k + 1:
            return  # everything kept: the verify forward left the cache as it should be
        if self.tslots is not None:
            self.tslots.restore(torch.zeros_like(keep))
        self.trings.restore(t_before, torch.zeros_like(keep))  # the verify's slots as before it; the replay rewrites
        self.tcache.lengths.copy_(t_before)
        if n > 0:
            self.tcache.host_max_len = self.bound
            _forward(self.model, verify_in[:, :n], self.tcache)


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
    state: SpeculativeRound | None = None,
) -> torch.Tensor:
    """Prompts (one 1-D tensor per row) -> (B, N) generated tokens (a row past its EOS holds EOS), N the most any
    row generated, which may exceed max_new_tokens by up to k (the caller cuts); fills ``stats``.

    ``state``: a (pooled, possibly captured) ``SpeculativeRound`` to run; by default a new one over ``caches``
    (the (target, draft) caches, for tests that inspect them afterwards) or over new caches of the length needed.
    """
    B, lens = len(rows), [int(r.numel()) for r in rows]
    need = cache_length(max(lens), max_new_tokens, k)
    if state is None:
        caches = caches or (model.new_cache(B, need), draft.new_cache(B, need))
        state = SpeculativeRound(model, draft, caches, k, temperature, top_k, top_p, eos_ids, generator)
    if state.length < need:
        raise ValueError(
            f"{max(lens)} prompt + {max_new_tokens} new tokens + 2 rounds of {k + 1} need caches of {need} tokens, "
            f"these hold {state.length}"
        )
    device = state.last.device
    model.refresh_fused()  # the steps read the fused copies (cheap when nothing changed)
    draft.refresh_fused()
    state.reset()

    t0 = _now(device)
    logits = _prefill(model, rows, state.tcache)
    _prefill(draft, rows, state.dcache)
    stats["prefill_s"] = _now(device) - t0

    t0 = _now(device)
    launched, looks = 0, 0
    if max_new_tokens > 0:
        state.start(state._pick(state._probs(logits)), max_new_tokens)
        launched, looks = _decode(state, max_new_tokens, k)
    n_out = state.n_out.tolist()
    row_rounds, kept, row_kept, busy = state.counts.tolist()
    out = state.out[:, : min(max(n_out), state.out.shape[1])].clone() if max_new_tokens > 0 else state.out[:, :0]
    if state.eos is not None:  # after a row's first EOS it holds EOS, as generate's step does
        hit = (out[..., None] == state.eos).any(-1).long()
        out = torch.where(hit.cumsum(dim=1) - hit > 0, state.eos[0], out)
    stats["decode_s"] = _now(device) - t0
    stats["new_tokens"] = min(out.shape[1], max_new_tokens)
    stats["decode_steps"] = launched  # verify forwards (rounds) run, a finished row's included
    stats["num_draft_tokens"] = k
    stats["verify_steps"] = launched
    stats["draft_steps"] = launched * (k + 1)
    stats["rounds_past_end"] = launched - busy  # rounds queued after every row had finished (EOS checks)
    stats["host_reads"] = looks + (launched if state.replay else 0)  # host synchronisations of the decode loop
    stats["target_rollback"] = "replay" if state.replay else "lengths"
    stats["row_new_tokens"] = n_out  # per row, before the cut to max_new_tokens
    stats["acceptance_rate"] = kept / (row_rounds * k) if row_rounds else None
    stats["row_acceptance_rate"] = row_kept / (row_rounds * k) if row_rounds else None
    stats["accepted_per_verify"] = kept / row_rounds if row_rounds else None
    stats["tokens_per_verify"] = (kept + row_rounds) / row_rounds if row_rounds else None
    stats["cache_bytes"] = state.tcache.nbytes()
    stats["draft_cache_bytes"] = state.dcache.nbytes()
    stats["snapshot_bytes"] = state.nbytes()
    return out


def _decode(state: SpeculativeRound, max_new_tokens: int, k: int) -> tuple[int, int]:
    """Run rounds until every row is done -> (rounds run, host reads). The host reads the least advanced unfinished
    row's count and queues the rounds that row surely still needs (each round adds at most k+1 tokens to a row),
    at most ``SYNC_EVERY`` when EOS ids may end rows sooner."""
    launched = looks = 0
    while True:
        least = int(torch.where(state.done, max_new_tokens, state.n_out).min())  # the loop's one host read
        looks += 1
        if least >= max_new_tokens:  # every row reached the limit or emitted EOS
            return launched, looks
        rounds = -(-(max_new_tokens - least) // (k + 1))
        if state.eos is not None:
            rounds = min(rounds, SYNC_EVERY)
        for _ in range(rounds):
            state.step()
        launched += rounds


def _prefill(model, rows: list[torch.Tensor], cache: Cache) -> torch.Tensor:
    """Prompts into ``cache`` (one forward per distinct length, ``archzoo.prefill``) -> last logits (B, V)."""
    return prefill_rows(model, rows, cache)


def _now(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()
