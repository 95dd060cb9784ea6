"""Speculative decoding (archzoo.speculative): greedy output equals the target's own for every family,
whatever the draft; caches after rollback equal those of a run that never saw the refused tokens;
speculative sampling follows the target's distribution; bad drafts get one clear error. The static round's
capture properties (no host read, traced whole, rounds past the end, pooling, CUDA) are in
test_speculative_capture.py."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import archzoo
from archzoo import speculative
from archzoo.speculative import accept, probabilities, speculative_generate

from conftest import MODEL_CONFIGS, f64_model, load_yaml

FAMILIES = {p.stem: p for p in MODEL_CONFIGS}
PROMPT_LENS = (5, 9, 3)  # rows of different lengths: per-row positions throughout


def noisy_copy(model, scale: float, seed: int = 1):
    """The target with perturbed weights: a draft that agrees often but not always (partial acceptance)."""
    draft = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in draft.parameters():
            noise = torch.randn(p.shape, generator=g, dtype=p.dtype).to(p.device)  # CPU noise: same on any device
            p.add_(scale * p.abs().mean() * noise)
    return draft


class ConstantHead(nn.Module):
    """An LM head whose logits always pick ``token``: a draft that is always wrong (or always right
    where the target happens to pick it)."""

    def __init__(self, vocab: int, token: int):
        super().__init__()
        self.vocab, self.token = vocab, token

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(*x.shape[:-1], self.vocab, dtype=x.dtype, device=x.device)
        logits[..., self.token] = 10.0
        return logits


def constant_draft(token: int = 0):
    draft = f64_model(FAMILIES["mha"], seed=7)
    draft.lm_head = ConstantHead(draft.cfg.vocab_size, token)
    return draft


def prompts(seed: int = 0, lens=PROMPT_LENS):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 512, (n,), generator=g) for n in lens]


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_greedy_equals_target_for_every_family(family):
    target = f64_model(FAMILIES[family])
    other = f64_model(FAMILIES["mamba" if family != "mamba" else "swa"], seed=1)  # another family, random
    rows = prompts()
    ref = target.generate(rows, 24, compile=False)
    drafts = {
        "noisy copy": (noisy_copy(target, 0.005), 3),  # partial acceptance: rollback at every depth
        "other family": (other, 2),
        "always wrong": (constant_draft(), 3),
        "always right": (target, 4),
    }
    rates = {}
    for name, (draft, k) in drafts.items():
        out = target.generate(rows, 24, draft=draft, num_draft_tokens=k)
        for b, (r, o) in enumerate(zip(ref, out, strict=True)):
            assert torch.equal(r, o), f"{family}, draft {name}, k={k}: row {b} differs\n{r}\n{o}"
        rates[name] = target.last_generate_stats["row_acceptance_rate"]
    assert rates["always right"] == 1.0, rates
    assert rates["always wrong"] < 0.1, rates
    assert 0.0 < rates["noisy copy"] < 1.0, f"{family}: the noisy draft should be partly accepted: {rates}"


def test_greedy_same_length_batch_tensor_and_eos():
    target = f64_model(FAMILIES["jamba"])
    draft = noisy_copy(target, 0.005)
    ids = torch.randint(0, 512, (3, 6), generator=torch.Generator().manual_seed(3))
    ref = target.generate(ids, 20, compile=False)
    out = target.generate(ids, 20, draft=draft, num_draft_tokens=3)
    assert torch.equal(ref, out)
    eos = int(ref[0, 10])  # a token row 0 emits: it stops there
    ref = target.generate(list(ids), 20, eos_token_id=eos, compile=False)
    out = target.generate(list(ids), 20, eos_token_id=eos, draft=draft, num_draft_tokens=3)
    assert all(torch.equal(r, o) for r, o in zip(ref, out, strict=True)), (ref, out)


def _reference_cache(model, prompt: torch.Tensor, generated: torch.Tensor, length: int):
    """A one-row cache that saw ``prompt`` and then ``generated`` one decode step at a time."""
    cache = model.new_cache(1, length)
    model(prompt[None], cache=cache)
    for t in range(generated.numel()):
        model(generated[None, t : t + 1], cache=cache)
    return cache


def _assert_row_equal(spec, b: int, ref, what: str):
    """Row b of cache ``spec`` equals the one-row cache ``ref``: every buffer, up to the row's length where the
    buffer rewinds by length (beyond it the buffer holds stale entries, masked)."""
    n = int(ref.lengths[0])
    assert int(spec.lengths[b]) == n, f"{what}: length {int(spec.lengths[b])} != {n}"
    for i, (s, r) in enumerate(zip(spec.layers, ref.layers, strict=True)):
        if s is None:
            continue
        for name, buf in s.buffers.items():
            got, want = buf[b], r[name][0]
            if name in s.by_length:
                got, want = got[..., :n, :], want[..., :n, :]
            err = (got - want).abs().max().item()
            assert err < 1e-9, f"{what}: layer {i} buffer {name}: max abs diff {err:.3g}"


def windowed(model, window: int):
    """``model`` (global attention) with a sliding window: the same weights, a ring-buffer cache that needs
    snapshots, and outputs that differ from the model's once the context passes the window (partial acceptance)."""
    data = model.cfg.model_dump()
    data["mixer"] = {**data["mixer"], "window": window}
    out = archzoo.build_model(data).double().eval()
    out.load_state_dict(model.state_dict())
    return out


ROLLBACK_CASES = {  # target family -> its draft; based, jamba, s4 replay (batch minimum), mla, gqa and swa do not
    "swa": lambda t: noisy_copy(t, 0.003),
    "based": lambda t: noisy_copy(t, 0.003),
    "jamba": lambda t: noisy_copy(t, 0.003),
    "s4": lambda t: noisy_copy(t, 0.003),
    "mla": lambda t: noisy_copy(t, 0.003),
    "gqa": lambda t: windowed(t, 6),  # rows advance on their own; the draft's ring buffers restored per row
}


@pytest.mark.parametrize("family", sorted(ROLLBACK_CASES))
@pytest.mark.parametrize("eos", [False, True], ids=["no_eos", "eos"])
def test_rollback_leaves_caches_as_if_refused_tokens_were_never_seen(family, eos, monkeypatch):
    """After a run, row b of both caches equals a cache that saw its prompt and its kept tokens one step at a
    time. With an EOS id that ends one row early (the host looking only every 1000 rounds), the rounds that run
    past that row's end keep nothing for it."""
    target = f64_model(FAMILIES[family])
    _check_rollback(family, target, ROLLBACK_CASES[family](target), eos, monkeypatch)


@pytest.mark.parametrize("window", [6, 3], ids=["ring_slots", "narrow_ring_whole"])
def test_ring_draft_rollback_by_slots_or_whole(window, monkeypatch):
    """A sliding-window draft's ring buffers are rolled back by the k+1 slots a round overwrites (``_RingSlots``)
    when the ring has at least k+1 slots, and by whole snapshots (``_Slots``) when a round would overwrite a slot
    it wrote itself (window 3 < k+1 = 4); either way the caches end as if the refused tokens were never seen."""
    target = f64_model(FAMILIES["gqa"])
    draft = windowed(target, window)
    state = speculative.SpeculativeRound(target, draft, (target.new_cache(1, 64), draft.new_cache(1, 64)), 3,
                                         0.0, None, None, [], None)  # fmt: skip
    n_rings = len(state.drings.pairs)
    assert (n_rings > 0, state.dslots is None) == (window >= 4, window >= 4), (n_rings, state.dslots)
    if window >= 4:  # the saved slots: k+1 positions a ring, not the ring
        assert state.nbytes() == sum(b[:, :, :4].numel() * b.element_size() for b, _ in state.drings.pairs)
    _check_rollback("gqa", target, draft, False, monkeypatch)


def _check_rollback(family: str, target, draft, eos: bool, monkeypatch) -> None:
    monkeypatch.setattr(speculative, "SYNC_EVERY", 1000)
    rows = prompts(seed=5)
    k, new = 3, 30  # past the 16-token windows of swa / based
    eos_ids = []
    if eos:
        eos_ids = [int(target.generate(rows[1:2], 12, compile=False)[0][len(rows[1]) + 11])]  # row 1 ends early
    length = speculative.cache_length(max(PROMPT_LENS), new, k)
    caches = (target.new_cache(3, length), draft.new_cache(3, length))
    state = speculative.SpeculativeRound(target, draft, caches, k, 0.0, None, None, eos_ids, None)
    stats = {}
    with torch.no_grad():
        speculative_generate(target, draft, rows, new, k, 0.0, None, None, eos_ids, None, stats, state=state)
        out = state.out  # the tokens as generated (the returned ones hold EOS after a row's first EOS)
        assert 0 < stats["acceptance_rate"] < 1, stats
        assert stats["target_rollback"] == ("lengths" if family in ("mla", "gqa", "swa") else "replay"), stats
        tcache, dcache = caches
        for b, r in enumerate(rows):
            n = stats["row_new_tokens"][b]  # both caches hold all but the latest token
            if not eos:
                assert n >= new, (b, n, stats["row_new_tokens"])
            elif b == 1 and stats["target_rollback"] == "lengths":  # rows freeze on their own (replay: together)
                assert n <= 12 + k, (b, n, stats["row_new_tokens"])
            kept = out[b, : n - 1]
            _assert_row_equal(tcache, b, _reference_cache(target, r, kept, length), f"{family} target row {b}")
            _assert_row_equal(dcache, b, _reference_cache(draft, r, kept, length), f"{family} draft row {b}")


def tiny_vocab_model(family: str, vocab: int, seed: int):
    data = load_yaml(FAMILIES[family])
    data.update(vocab_size=vocab, d_model=32, n_layers=2, init_std=0.5)
    data.pop("layers", None)
    if data["mixer"]["type"] == "attention":
        data["mixer"].update(n_heads=2, n_kv_heads=1)
    elif data["mixer"]["type"] == "mamba":
        data["mixer"].update(d_state=4)
    data["ffn"] = {"type": "swiglu", "d_ff": 64}
    torch.manual_seed(seed)
    return archzoo.build_model(data).double().eval()


def total_variation(counts: torch.Tensor, probs: torch.Tensor) -> float:
    return 0.5 * (counts.double() / counts.sum() - probs).abs().sum().item()


def test_accept_rule_emits_the_targets_distribution():
    """The verify rule alone: the token each row emits at the first position is distributed as p_1,
    whatever q; and given the first was accepted, the second as p_2."""
    V, k, N = 6, 2, 200_000
    g = torch.Generator().manual_seed(0)
    p = torch.softmax(2 * torch.randn(1, k + 1, V, generator=g, dtype=torch.float64), -1).expand(N, -1, -1)
    q = torch.softmax(2 * torch.randn(1, k, V, generator=g, dtype=torch.float64), -1).expand(N, -1, -1)
    drafted = torch.stack([torch.multinomial(q[:, j], 1, replacement=True, generator=g)[:, 0] for j in range(k)], 1)
    n, nxt = accept(p, drafted, q, g)
    first = torch.where(n > 0, drafted[:, 0], nxt[:, 0])
    counts = torch.bincount(first, minlength=V)
    tv = total_variation(counts, p[0, 0])
    assert tv < 0.01, f"first token: TV {tv:.4f} from p_1 (q is {total_variation(counts, q[0, 0]):.3f} away)"
    sel = n > 0
    second = torch.where(n[sel] > 1, drafted[sel, 1], nxt[sel, 1])
    tv = total_variation(torch.bincount(second, minlength=V), p[0, 1])
    assert tv < 0.01, f"second token: TV {tv:.4f} from p_2"


def test_speculative_sampling_matches_target_distribution():
    """End to end through generate (top-k too): the second and third new tokens, which pass through
    the accept / reject rule (each row on its own: the GQA target rewinds by length), follow the target's
    exact marginals."""
    V, N, top_k = 8, 6000, 6
    target = tiny_vocab_model("gqa", V, seed=0)
    draft = tiny_vocab_model("mamba", V, seed=1)
    prompt = torch.tensor([[1, 5, 2]])
    g = torch.Generator().manual_seed(1234)
    out = target.generate(
        prompt.expand(N, -1), 3, temperature=1.0, top_k=top_k, generator=g, draft=draft, num_draft_tokens=2
    )
    stats = target.last_generate_stats
    assert 0.05 < stats["row_acceptance_rate"] < 0.95, stats
    with torch.no_grad():
        p1 = probabilities(target(prompt)[0, -1], 1.0, top_k, None)  # (V,)
        seq2 = torch.cat([prompt.expand(V, -1), torch.arange(V)[:, None]], 1)
        p2_given = probabilities(target(seq2)[:, -1], 1.0, top_k, None)  # (V, V)
        p2 = p1 @ p2_given
        seq3 = torch.cat([seq2.repeat_interleave(V, 0), torch.arange(V).repeat(V)[:, None]], 1)
        p3 = (p1[:, None] * p2_given).reshape(-1) @ probabilities(target(seq3)[:, -1], 1.0, top_k, None)
        q2 = probabilities(draft(seq2)[:, -1], 1.0, top_k, None)
    new = out[:, 3:]
    for j, want in ((1, p2), (2, p3)):
        tv = total_variation(torch.bincount(new[:, j], minlength=V), want)
        assert tv < 0.035, f"token {j + 1}: TV {tv:.4f} from the target's marginal"
    # the test can tell: the draft's own next-token distribution is far from the target's
    assert 0.5 * (p1 @ (q2 - p2_given).abs()).sum() > 0.1


def test_bad_drafts_and_arguments():
    target = f64_model(FAMILIES["gqa"])
    rows = torch.zeros(1, 4, dtype=torch.long)
    other_vocab = tiny_vocab_model("gqa", 64, seed=0)
    with pytest.raises(ValueError, match="vocab_size 64 differs from the target's 512"):
        target.generate(rows, 4, draft=other_vocab)
    for k in (0, -2, 1.5):
        with pytest.raises(ValueError, match="num_draft_tokens must be an integer >= 1"):
            target.generate(rows, 4, draft=target, num_draft_tokens=k)
    with pytest.raises(ValueError, match="draft must be an ArchZooLM"):
        target.generate(rows, 4, draft=object())
    draft = f64_model(FAMILIES["mqa"])
    target.tokenizer, draft.tokenizer = _Tok({"a": 0}), _Tok({"b": 0})
    with pytest.raises(ValueError, match="tokenizer differs"):
        target.generate(rows, 4, draft=draft)
    draft.tokenizer = _Tok({"a": 0})
    assert target.generate(rows, 4, draft=draft).shape == (1, 8)


class _Tok:
    def __init__(self, vocab):
        self.vocab = vocab

    def get_vocab(self):
        return self.vocab


@pytest.mark.parametrize("path", MODEL_CONFIGS, ids=lambda p: p.stem)
def test_verify_step_traces_once(path):
    """The verify forward, a (B, k+1) step through the cache at each row's own position, traces whole
    (``fullgraph``) and once over rounds whose lengths move by rollbacks, and equals the eager forward:
    the shape a captured speculative round would replay (issue 20, item 2)."""
    from torch._dynamo.testing import CompileCounter

    from archzoo.speculative import _forward

    torch._dynamo.reset()
    model = f64_model(path).float()
    k, B = 3, 2
    ids = torch.randint(0, model.cfg.vocab_size, (B, 40), generator=torch.Generator().manual_seed(0))
    cache = model.new_cache(B, 40, dtype=torch.float32)
    with torch.no_grad():
        for b, n in enumerate((4, 6)):  # rows at different lengths
            model(ids[b : b + 1, :n], cache=cache.rows(b))
        counter = CompileCounter()
        verify = torch.compile(lambda x: _forward(model, x, cache), backend=counter, fullgraph=True)
        for r in range(4):
            x = ids[:, 10 + 4 * r : 10 + 4 * r + k + 1]
            before = copy.deepcopy(cache)
            got = verify(x)
            ref = _forward(model, x, before)
            assert torch.allclose(got, ref, rtol=1e-4, atol=1e-5), f"{path.stem} round {r}"
            cache.lengths.sub_(r % 3)  # a rollback: lengths move back on the device (by-length buffers)
    torch._dynamo.reset()
    assert counter.frame_count == 1, f"{path.stem}: compiled {counter.frame_count} times"


@pytest.mark.parametrize("family", ["mha", "mamba", "jamba"])
def test_compiled_speculative_equals_eager(family, monkeypatch):
    """generate(draft=, compile=True): both models' forwards through their compiled step blocks (dynamo with the
    eager backend here: tracing, no codegen), greedy tokens equal to the eager speculative run and to the target."""
    target = f64_model(FAMILIES[family])
    draft = noisy_copy(target, 0.005)
    for m in (target, draft):
        monkeypatch.setattr(type(m), "compile_backend", "eager")
    rows = prompts()
    ref = target.generate(rows, 20, compile=False)
    torch._dynamo.reset()
    out = target.generate(rows, 20, draft=draft, num_draft_tokens=3, compile=True)
    assert target.last_generate_stats["backend"] == "speculative_compiled"
    assert target.step_blocks is not None and draft.step_blocks is not None
    for b, (r, o) in enumerate(zip(ref, out, strict=True)):
        assert torch.equal(r, o), f"{family}: row {b} differs"
    torch._dynamo.reset()


@pytest.mark.parametrize("family", ["mamba", "jamba", "linear", "based"])
def test_multi_token_decode_forward_runs_the_update_kernels(family, monkeypatch):
    """A (B, k+1) forward in a decode step (the verify and replay of a recurrent target) goes token by token through
    the update kernels, never the sequence kernels: a compiled step block (fullgraph) traces the update kernels as
    custom ops but not the sequence kernels' host launches (on an H200 the Jamba target's verify failed so), and the
    logits equal those of one-token steps (float64; the projections' products over (B, T) and (B, 1) rows round
    alike only up to BLAS's blocking)."""
    from archzoo.layers import linear_attention as la_mod
    from archzoo.layers import mamba as mamba_mod

    model = f64_model(FAMILIES[family])
    prompt = torch.randint(0, model.cfg.vocab_size, (2, 6))
    more = torch.randint(0, model.cfg.vocab_size, (2, 4))
    with torch.no_grad():
        one, many = model.new_cache(2, 16), model.new_cache(2, 16)
        model(prompt, cache=one)
        model(prompt, cache=many)
        want = torch.cat([speculative._forward(model, more[:, t : t + 1], one) for t in range(4)], dim=1)

        def refuse(*args, **kwargs):
            raise AssertionError("a sequence kernel ran in a decode step")

        for mod, names in ((mamba_mod, ("causal_conv1d_fn", "selective_scan_fn")),
                           (la_mod, ("linear_attention", "based_attention"))):  # fmt: skip
            for name in names:
                monkeypatch.setattr(mod, name, refuse)
        got = speculative._forward(model, more, many)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert torch.equal(many.lengths, one.lengths)
