"""The static speculative round (archzoo.speculative.SpeculativeRound): it reads nothing on the host when the target
rewinds by length, whatever the draft's family; it traces whole (one graph, no recompile over rounds); rounds past a
row's end change nothing and the output is cut right; pooled rounds are reused. On CUDA (marked ``gpu``): the round
captured in a CUDA graph gives the eager tokens, and a second call replays the pooled graph."""

from __future__ import annotations

import pytest
import torch
from test_speculative import FAMILIES, constant_draft, noisy_copy, prompts, windowed
from torch._dynamo.testing import CompileCounter
from torch.utils._python_dispatch import TorchDispatchMode

from archzoo import speculative
from archzoo.speculative import SpeculativeRound, cache_length

from conftest import f64_model, requires_cuda

# Ops that read a device value on the host (or size their output from the data): on CUDA each waits for the device,
# and inside a graph capture each is an error. (tests/layers/test_moe.py keeps a like list; split sizes read on the
# host come from ``tolist``, which the guard refuses.)
HOST_SYNC_OPS = {
    "aten._local_scalar_dense", "aten.item", "aten.is_nonzero", "aten.equal", "aten.allclose", "aten.nonzero",
    "aten.masked_select", "aten.bincount", "aten.unique", "aten._unique2", "aten.unique_consecutive",
    "aten.index[bool]", "aten.repeat_interleave[tensor]", "aten.multinomial",
}  # fmt: skip


class NoHostSync(TorchDispatchMode):
    """Fails on an ATen op that synchronises with the device (``HOST_SYNC_OPS``)."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = str(func.overloadpacket)
        if func is torch.ops.aten.index.Tensor and any(i is not None and i.dtype == torch.bool for i in args[1]):
            name += "[bool]"
        if func is torch.ops.aten.repeat_interleave.Tensor or (
            func is torch.ops.aten.repeat_interleave.self_Tensor and kwargs.get("output_size") is None
        ):
            name += "[tensor]"  # repeats from a tensor: the output size is read from the data
        if name in HOST_SYNC_OPS:
            raise AssertionError(f"host synchronisation inside the round: {name}")
        return func(*args, **kwargs)


@pytest.fixture
def no_host_reads():
    """A context in which a host read of a tensor fails: by ATen op (``NoHostSync``) and by the Python methods that
    read values without an ATen op on CPU (``tolist``, ``numpy``)."""

    def refuse(name):
        def method(self, *args, **kwargs):
            raise AssertionError(f"host read inside the round: Tensor.{name}")

        return method

    class Guard:
        def __enter__(self):
            self.patch = pytest.MonkeyPatch()
            for name in ("tolist", "numpy", "item"):
                self.patch.setattr(torch.Tensor, name, refuse(name))
            self.mode = NoHostSync().__enter__()

        def __exit__(self, *exc):
            self.mode.__exit__(*exc)
            self.patch.undo()

    return Guard()


def started_round(target, draft, k: int, new: int, temperature=0.0, top_k=None, top_p=None, eos_ids=()):
    """A round over the prompts of ``prompts()``, prefilled, with its first token: ready for ``round()``."""
    rows = prompts()
    length = cache_length(max(r.numel() for r in rows), new, k)
    caches = (target.new_cache(len(rows), length), draft.new_cache(len(rows), length))
    state = SpeculativeRound(target, draft, caches, k, temperature, top_k, top_p, list(eos_ids), None)
    target.refresh_fused()
    draft.refresh_fused()
    state.reset()
    logits = speculative._prefill(target, rows, state.tcache)
    speculative._prefill(draft, rows, state.dcache)
    state.start(state._pick(state._probs(logits)), new)
    return state


SAMPLING = {"greedy": {}, "sampling": {"temperature": 1.0, "top_k": 50, "top_p": 0.9}}


@pytest.mark.parametrize("settings", sorted(SAMPLING))
@pytest.mark.parametrize("draft_family", sorted(FAMILIES))
def test_round_reads_nothing_on_the_host(draft_family, settings, no_host_reads):
    """A target that rewinds by length (GQA) and a draft of every family: a round, rollbacks of the draft's
    snapshot slots and EOS bookkeeping included, runs no op that reads the device on the host."""
    target = f64_model(FAMILIES["gqa"])
    draft = f64_model(FAMILIES[draft_family], seed=3)
    with torch.no_grad():
        state = started_round(target, draft, 3, 20, eos_ids=(7,), **SAMPLING[settings])
        assert not state.replay
        with no_host_reads:
            for _ in range(3):
                state.round()
        assert int(state.n_out.min()) >= 4  # each round advanced every row


@pytest.mark.parametrize("target_family", ["mha", "mqa", "cla", "mla", "moe", "swa"])
def test_every_length_rewound_target_reads_nothing_on_the_host(target_family, no_host_reads):
    """The other targets that rewind by length (the captured path): their (B, k+1) verify forward, MoE routing
    and MLA's absorbed decode included, reads nothing on the host either; a sliding window's ring buffers roll
    back by the slots the verify overwrote, so it is one of them."""
    target = f64_model(FAMILIES[target_family])
    with torch.no_grad():
        state = started_round(target, f64_model(FAMILIES["mamba"], seed=3), 3, 20, temperature=1.0)
        assert not state.replay
        with no_host_reads:
            for _ in range(2):
                state.round()


def test_a_replaying_target_reads_the_host(no_host_reads):
    """The detector can tell: a target with recurrent state replays, and reads n on the host."""
    target = f64_model(FAMILIES["jamba"])
    with torch.no_grad():
        state = started_round(target, noisy_copy(target, 0.005), 3, 20)
        assert state.replay
        with pytest.raises(AssertionError, match="host"), no_host_reads:
            state.round()


@pytest.mark.parametrize("draft_family", ["mamba", "swa", "mla", "moe"])
def test_round_traces_whole_once(draft_family):
    """``torch.compile(round, fullgraph=True)`` traces the whole round (the k+1 draft steps, the verify forward,
    acceptance, rollback, output writes) as one graph, and rounds whose lengths move by rollback and by row do
    not retrace: what a CUDA graph capture needs. Its tokens equal the eager round's."""
    target = f64_model(FAMILIES["gqa"])
    draft = noisy_copy(target, 0.005) if draft_family == "gqa" else f64_model(FAMILIES[draft_family], seed=3)
    torch._dynamo.reset()
    with torch.no_grad():
        eager = started_round(target, draft, 3, 24, eos_ids=(7,))
        traced = started_round(target, draft, 3, 24, eos_ids=(7,))
        counter = CompileCounter()
        step = torch.compile(traced.round, backend=counter, fullgraph=True)
        for _ in range(5):
            eager.round()
            step()
    torch._dynamo.reset()
    assert counter.frame_count == 1, f"{draft_family}: traced {counter.frame_count} times over 5 rounds"
    assert torch.equal(eager.out, traced.out) and torch.equal(eager.n_out, traced.n_out)
    assert torch.equal(eager.tcache.lengths, traced.tcache.lengths)


@pytest.mark.parametrize("new", [1, 2, 6, 11])
def test_output_cut_at_max_new_tokens(new):
    """max_new_tokens not a multiple of k+1: rounds end past it, rows at different counts; the output is the
    target's own, cut at max_new_tokens, and no round runs after the slowest row is done (no EOS ids)."""
    target = f64_model(FAMILIES["gqa"])
    rows = prompts()
    ref = target.generate(rows, new, compile=False)
    drafts = {"noisy": noisy_copy(target, 0.005), "window": windowed(target, 4), "wrong": constant_draft()}
    for name, draft in drafts.items():
        out = target.generate(rows, new, draft=draft, num_draft_tokens=4)
        assert all(torch.equal(r, o) for r, o in zip(ref, out, strict=True)), (name, new)
        stats = target.last_generate_stats
        assert stats["new_tokens"] == new and stats["rounds_past_end"] == 0, (name, stats)
        assert all(n >= new for n in stats["row_new_tokens"]), (name, stats["row_new_tokens"])


@pytest.mark.parametrize("target_family", ["gqa", "jamba"])
def test_eos_mid_round_and_rounds_past_the_end(target_family, monkeypatch):
    """EOS ids that end every row inside a round, with the host looking only every 1000 rounds: the rounds queued
    past the end keep nothing, and each row's tokens equal the target's own up to its EOS (the tensor form holds
    EOS after it)."""
    monkeypatch.setattr(speculative, "SYNC_EVERY", 1000)
    target = f64_model(FAMILIES[target_family])
    draft = noisy_copy(target, 0.005)
    rows = prompts()
    alone = target.generate(rows, 30, compile=False)
    eos = sorted({int(a[len(r) + 6]) for r, a in zip(rows, alone, strict=True)})  # every row ends by its 7th token
    ref = target.generate(rows, 30, eos_token_id=eos, compile=False)
    out = target.generate(rows, 30, eos_token_id=eos, draft=draft, num_draft_tokens=3)
    assert all(torch.equal(r, o) for r, o in zip(ref, out, strict=True)), (ref, out)
    stats = target.last_generate_stats
    assert stats["rounds_past_end"] > 0 and stats["new_tokens"] <= 7 + 3, stats
    same = torch.stack([r[:3] for r in rows])  # rows of one length: the tensor form
    ref = target.generate(same, 30, eos_token_id=eos, compile=False)
    out = target.generate(same, 30, eos_token_id=eos, draft=draft, num_draft_tokens=3)
    n = min(ref.shape[1], out.shape[1])
    assert torch.equal(ref[:, :n], out[:, :n])
    assert (out[:, n:] == eos[0]).all()  # past every row's EOS


def test_pooled_round_is_reused(monkeypatch):
    """compile=True pools the round in the target's decode_pool (here dynamo with the eager backend: no CUDA
    graph on CPU): a second call, another prompt length in the same bucket, reuses it after a reset; another k or
    another draft gets its own entry; the tokens stay the target's."""
    target = f64_model(FAMILIES["gqa"])
    drafts = [noisy_copy(target, 0.005), f64_model(FAMILIES["mamba"], seed=2)]
    for m in (target, *drafts):
        monkeypatch.setattr(type(m), "compile_backend", "eager")
    torch._dynamo.reset()
    rows = prompts()
    ref = target.generate(rows, 16, compile=False)
    out = target.generate(rows, 16, draft=drafts[0], num_draft_tokens=3, compile=True)
    assert target.last_generate_stats["backend"] == "speculative_compiled"
    assert target.last_generate_stats["compile_s"] > 0
    assert all(torch.equal(r, o) for r, o in zip(ref, out, strict=True))
    shorter = [r[:-1] for r in rows]
    ref2 = target.generate(shorter, 16, compile=False)
    out2 = target.generate(shorter, 16, draft=drafts[0], num_draft_tokens=3, compile=True)
    assert target.last_generate_stats["compile_s"] == 0.0, "the pooled round is reused"
    assert all(torch.equal(r, o) for r, o in zip(ref2, out2, strict=True))
    keys = [key for key in target.decode_pool.entries if key[0] == "speculative"]
    assert len(keys) == 1
    target.generate(rows, 16, draft=drafts[0], num_draft_tokens=2, compile=True)
    out3 = target.generate(rows, 16, draft=drafts[1], num_draft_tokens=3, compile=True)
    assert all(torch.equal(r, o) for r, o in zip(ref, out3, strict=True))
    assert len([key for key in target.decode_pool.entries if key[0] == "speculative"]) == 3
    with pytest.raises(ValueError, match="generator= needs compile=False"):
        target.generate(rows, 4, draft=drafts[0], compile=True, temperature=1.0, generator=torch.Generator())
    torch._dynamo.reset()


def test_pooled_round_dropped_when_the_draft_releases_its_copies(monkeypatch):
    """The draft's ``release_fused`` frees the fused copies a captured round reads, and the next refresh makes them
    elsewhere; the round sits in the target's pool, which the draft's release cannot clear, so the pool's key must
    see the move (``weight_addresses`` covers the copies): the next call builds (captures) a new round instead of
    replaying one that reads freed memory."""
    target = f64_model(FAMILIES["gqa"])
    draft = noisy_copy(target, 0.005)
    for m in (target, draft):
        monkeypatch.setattr(type(m), "compile_backend", "eager")
    torch._dynamo.reset()
    rows = prompts()
    ref = target.generate(rows, 8, compile=False)
    target.generate(rows, 8, draft=draft, num_draft_tokens=3, compile=True)
    old = next(s for key, s in target.decode_pool.entries.items() if key[0] == "speculative")
    held = [m.fused.weight for m in draft.modules() if getattr(m, "fused", None) is not None]
    draft.release_fused()  # ``held`` keeps the old copies' memory, so the new ones surely land elsewhere
    out = target.generate(rows, 8, draft=draft, num_draft_tokens=3, compile=True)
    assert target.last_generate_stats["compile_s"] > 0, "a round over the released copies was reused"
    rounds = [s for key, s in target.decode_pool.entries.items() if key[0] == "speculative"]
    assert rounds and all(s is not old for s in rounds)
    assert all(torch.equal(r, o) for r, o in zip(ref, out, strict=True))
    del held
    torch._dynamo.reset()


def test_pooled_round_keyed_by_the_decode_switches(monkeypatch):
    """A captured round replays the kernels it was captured with: flipping ``layers.fused.DECODE_LINEAR`` between
    two compiled calls builds (on CUDA: captures) a round of its own, flipping back reuses the first, and the tokens
    are the target's own under each setting (the GEMV replaced by its reference scaled by 1.5, so they differ)."""
    from archzoo.generation import decode_switches
    from archzoo.kernels.decode_linear.naive import naive_decode_linear
    from archzoo.layers import fused
    from archzoo.layers.attention import Attention

    monkeypatch.setattr(fused, "decode_linear", lambda *args: 1.5 * naive_decode_linear(*args))
    # Q|K|V through the GEMV above too (not decode_qkv_rope, which the scaling would not reach): one model a setting
    monkeypatch.setattr(Attention, "step_fusion", lambda *args: None)
    target = f64_model(FAMILIES["gqa"])
    draft = noisy_copy(target, 0.005)
    for m in (target, draft):
        monkeypatch.setattr(type(m), "compile_backend", "eager")
    torch._dynamo.reset()
    rows = prompts()
    ref = {}
    for value in ("cublas", "kernel"):
        monkeypatch.setattr(fused, "DECODE_LINEAR", value)
        ref[value] = target.generate(rows, 12, compile=False)
    assert any(not torch.equal(a, b) for a, b in zip(ref["cublas"], ref["kernel"], strict=True))
    rounds = {}
    for value in ("cublas", "kernel", "cublas"):
        monkeypatch.setattr(fused, "DECODE_LINEAR", value)
        out = target.generate(rows, 12, draft=draft, num_draft_tokens=3, compile=True)
        assert all(torch.equal(r, o) for r, o in zip(ref[value], out, strict=True)), value
        (key, state), *_ = reversed(target.decode_pool.entries.items())  # the entry this call used
        assert key[0] == "speculative" and decode_switches() in key, key
        if value in rounds:
            assert state is rounds[value] and target.last_generate_stats["compile_s"] == 0.0, "flipped back: reused"
        else:
            assert target.last_generate_stats["compile_s"] > 0, f"DECODE_LINEAR={value!r}: the other's round reused"
        rounds[value] = state
    torch._dynamo.reset()


def test_moe_verify_past_the_static_limit_runs_eagerly(monkeypatch):
    """An MoE target whose (B, k+1) verify forward routes more than ``MoE.STATIC_MAX_TOKENS`` tokens by sorting
    (a host read: neither a fullgraph compile nor a capture can hold it): ``compile=True`` runs that call's rounds
    eagerly and says why, naming the batch and k; with fewer draft tokens the verify fits and the round compiles.
    The tokens are the target's own either way."""
    from archzoo.layers.moe import MoE

    monkeypatch.setattr(MoE, "STATIC_MAX_TOKENS", 6)
    target = f64_model(FAMILIES["moe"])
    draft = noisy_copy(target, 0.005)
    for m in (target, draft):
        monkeypatch.setattr(type(m), "compile_backend", "eager")
    torch._dynamo.reset()
    rows = prompts()  # 3 rows
    ref = target.generate(rows, 10, compile=False)
    out = target.generate(rows, 10, draft=draft, num_draft_tokens=1, compile=True)  # verify: 3 x 2 = 6 tokens
    assert target.last_generate_stats["backend"] == "speculative_compiled"
    assert all(torch.equal(r, o) for r, o in zip(ref, out, strict=True))
    out = target.generate(rows, 10, draft=draft, num_draft_tokens=3, compile=True)  # verify: 3 x 4 = 12 tokens
    stats = target.last_generate_stats
    assert stats["backend"] == "speculative" and stats["compile_s"] == 0.0, stats
    why = "the target's verify forward of batch 3 x (k+1) = 3 x 4 = 12 tokens: MoE layer blocks.0.ffn: 12 tokens"
    assert stats["uncaptured"].startswith(why) and "exceed MoE.STATIC_MAX_TOKENS=6" in stats["uncaptured"], stats
    assert all(torch.equal(r, o) for r, o in zip(ref, out, strict=True))
    assert len([key for key in target.decode_pool.entries if key[0] == "speculative"]) == 1, "not pooled"
    monkeypatch.setattr(MoE, "STATIC_MAX_TOKENS", 2)  # an MoE draft's own steps, batch 3, past the limit
    gqa = f64_model(FAMILIES["gqa"])
    out = gqa.generate(rows, 10, draft=target, num_draft_tokens=2, compile=True)
    assert gqa.last_generate_stats["uncaptured"].startswith("the draft's decode steps of batch 3: MoE layer")
    assert all(torch.equal(r, o) for r, o in zip(gqa.generate(rows, 10, compile=False), out, strict=True))
    torch._dynamo.reset()


# ------------------------------------------------------------------------------------------------ CUDA


@pytest.fixture
def _no_tf32():
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32 = old


@pytest.fixture
def _fresh_dynamo():
    """Every block of every model compiles under one code object (``Block.forward``), whose compiled entries dynamo
    caps (``allow_recompiles``: 64); a GPU run of several test files in one process (tests/test_gpu_decode.py's
    eighteen students first) would otherwise reach the cap here and fail with FailOnRecompileLimitHit, whatever
    the round does."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _cuda_fp32(model):
    return model.float().cuda()


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("draft_family", ["mamba", "gqa"])
def test_captured_speculative_equals_eager_on_cuda(draft_family, _no_tf32, _fresh_dynamo):
    """A teacher-shaped tiny target (GQA, SwiGLU): the round captured in one CUDA graph (inductor blocks) gives the
    eager speculative tokens and the target's own; a second call replays the pooled graph."""
    target = f64_model(FAMILIES["gqa"])
    draft = f64_model(FAMILIES["mamba"], seed=3) if draft_family == "mamba" else noisy_copy(target, 0.005)
    target, draft = _cuda_fp32(target), _cuda_fp32(draft)
    rows = [r.cuda() for r in prompts()]
    alone = target.generate(rows, 40, compile=False)
    eager = target.generate(rows, 40, draft=draft, num_draft_tokens=4, compile=False)
    captured = target.generate(rows, 40, draft=draft, num_draft_tokens=4, compile=True)
    stats = target.last_generate_stats
    assert stats["backend"] == "speculative_cuda_graph", stats
    for b, (a, e, c) in enumerate(zip(alone, eager, captured, strict=True)):
        assert torch.equal(a, e), f"row {b}: eager speculative differs from the target alone"
        assert torch.equal(e, c), f"row {b}: captured speculative differs from eager"
    again = target.generate(rows, 40, draft=draft, num_draft_tokens=4, compile=True)
    assert target.last_generate_stats["compile_s"] == 0.0
    assert target.last_generate_stats["backend"] == "speculative_cuda_graph"
    assert all(torch.equal(a, c) for a, c in zip(again, captured, strict=True))


@pytest.mark.gpu
@requires_cuda
def test_replaying_target_on_cuda_runs_uncaptured(_no_tf32, _fresh_dynamo):
    target = f64_model(FAMILIES["jamba"])
    target, draft = _cuda_fp32(target), _cuda_fp32(noisy_copy(target, 0.005))
    rows = [r.cuda() for r in prompts()]
    alone = target.generate(rows, 20, compile=False)
    out = target.generate(rows, 20, draft=draft, num_draft_tokens=3, compile=True)
    stats = target.last_generate_stats
    assert stats["backend"] == "speculative_compiled", stats
    for b, (a, o) in enumerate(zip(alone, out, strict=True)):
        where = (a != o).nonzero()[:1].tolist() if a.shape == o.shape else f"lengths {a.numel()} / {o.numel()}"
        assert torch.equal(a, o), f"row {b} differs from the target alone (first at {where}); stats {stats}"


@pytest.mark.gpu
@requires_cuda
def test_captured_sampling_follows_the_target(_no_tf32, _fresh_dynamo):
    """Sampling inside the captured round (default generator): the second new token's marginal is the target's."""
    from test_speculative import probabilities, tiny_vocab_model, total_variation

    V, N = 8, 4000
    target, draft = tiny_vocab_model("gqa", V, seed=0).cuda(), tiny_vocab_model("mamba", V, seed=1).cuda()
    prompt = torch.tensor([[1, 5, 2]], device="cuda")
    torch.manual_seed(0)
    out = target.generate(prompt.expand(N, -1), 3, temperature=1.0, draft=draft, num_draft_tokens=2, compile=True)
    assert target.last_generate_stats["backend"] == "speculative_cuda_graph"
    with torch.no_grad():
        p1 = probabilities(target(prompt)[0, -1], 1.0, None, None)
        seq2 = torch.cat([prompt.expand(V, -1), torch.arange(V, device="cuda")[:, None]], 1)
        p2 = p1 @ probabilities(target(seq2)[:, -1], 1.0, None, None)
    tv = total_variation(torch.bincount(out[:, 4], minlength=V).cpu(), p2.cpu())
    assert tv < 0.05, f"second token: TV {tv:.4f} from the target's marginal"
