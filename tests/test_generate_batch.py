"""generate with prompts of different lengths, and with the compiled, pooled decode step."""

from __future__ import annotations

import pytest
import torch

from conftest import MODEL_CONFIGS, f64_model

GQA = next(p for p in MODEL_CONFIGS if p.stem == "gqa")

FAMILIES = ["gqa", "swa", "mla", "based", "mamba", "s4", "moe", "jamba", "cla"]
PATHS = [p for p in MODEL_CONFIGS if p.stem in FAMILIES]


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.stem)
def test_ragged_prompts_generate_as_if_alone(path):
    model = f64_model(path)
    V = model.cfg.vocab_size
    prompts = [torch.randint(0, V, (n,)) for n in (3, 9, 6)]
    out = model.generate(prompts, 7)
    assert isinstance(out, list) and len(out) == 3
    for p, got in zip(prompts, out, strict=True):
        alone = model.generate(p[None], 7)[0]
        assert torch.equal(got, alone), f"{path.stem}: a row of a ragged batch differs from the row alone"


def test_attention_mask_picks_each_rows_prompt_and_pads_the_end():
    model = f64_model(PATHS[0])
    V = model.cfg.vocab_size
    ids = torch.randint(1, V, (2, 6))
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1]])  # left padding on row 1
    out = model.generate(ids, 5, attention_mask=mask, pad_token_id=-1)
    assert out.shape == (2, 11)
    assert torch.equal(out[0], model.generate(ids[:1], 5)[0])
    alone = model.generate(ids[1:, 2:], 5)[0]
    assert torch.equal(out[1, :9], alone) and out[1, 9:].tolist() == [-1, -1]


def test_eos_ends_rows_independently():
    model = f64_model(PATHS[0])
    prompts = [torch.randint(0, model.cfg.vocab_size, (n,)) for n in (4, 7)]
    free = model.generate(prompts, 12)
    eos = int(free[0][4 + 2])  # row 0's third new token
    out = model.generate(prompts, 12, eos_token_id=eos)
    assert out[0].tolist() == free[0][: 4 + 3].tolist(), "row 0 stops right after its EOS"
    row1 = free[1][7:].tolist()
    cut = row1.index(eos) + 1 if eos in row1 else len(row1)
    assert out[1].tolist() == free[1][: 7 + cut].tolist(), "row 1 runs on to its own EOS or the end"


@pytest.mark.parametrize("path", [p for p in PATHS if p.stem in ("gqa", "mamba", "mla")], ids=lambda p: p.stem)
def test_compiled_generate_equals_eager_and_reuses_its_step(path, monkeypatch):
    torch._dynamo.reset()
    model = f64_model(path)
    monkeypatch.setattr(type(model), "compile_backend", "eager")  # dynamo tracing, no codegen on CPU
    V = model.cfg.vocab_size
    prompts = torch.randint(0, V, (2, 5))
    eager = model.generate(prompts, 10, compile=False)
    assert model.last_generate_stats["backend"] == "eager"
    compiled = model.generate(prompts, 10, compile=True)
    assert torch.equal(compiled, eager), "compiled greedy tokens differ from eager ones"
    assert model.last_generate_stats["backend"] == "compiled" and model.last_generate_stats["compile_s"] > 0
    assert len(model.decode_pool.entries) == 1
    longer = torch.randint(0, V, (2, 11))  # another prompt length in the same bucket: the same step
    again = model.generate(longer, 6, compile=True)
    assert len(model.decode_pool.entries) == 1 and model.last_generate_stats["compile_s"] == 0.0
    assert torch.equal(again, model.generate(longer, 6, compile=False))
    torch._dynamo.reset()


def test_bad_input_is_a_clear_error():
    model = f64_model(PATHS[0])
    with pytest.raises(ValueError, match=r"prompt\(s\) \[1\] are empty"):
        model.generate([[1, 2], []], 3)
    with pytest.raises(ValueError, match="attention_mask"):
        model.generate(torch.ones(2, 3, dtype=torch.long), 3, attention_mask=torch.ones(2, 4))
    with pytest.raises(ValueError, match="generator= needs compile=False"):
        model.generate(
            torch.ones(1, 3, dtype=torch.long), 3, temperature=1.0, compile=True, generator=torch.Generator()
        )
    cache = model.new_cache(1, 4)
    with torch.no_grad():
        model(torch.ones(1, 4, dtype=torch.long), cache=cache)
        with pytest.raises(ValueError, match="cache holds 4 tokens; 4 seen \\+ 1 new exceeds it"):
            model(torch.ones(1, 1, dtype=torch.long), cache=cache)


def test_a_copied_model_starts_with_an_empty_decode_pool(monkeypatch):
    import copy
    import pickle

    torch._dynamo.reset()
    model = f64_model(PATHS[0])
    monkeypatch.setattr(type(model), "compile_backend", "eager")
    model.generate(torch.randint(0, model.cfg.vocab_size, (1, 4)), 3, compile=True)
    assert len(model.decode_pool.entries) == 1
    assert len(copy.deepcopy(model).decode_pool.entries) == 0
    assert len(pickle.loads(pickle.dumps(model.decode_pool)).entries) == 0
    torch._dynamo.reset()


def test_pool_recaptures_when_the_weights_move(monkeypatch):
    """A pooled step reads the weights where they were; new storage (load_state_dict(assign=True)) drops the pool."""
    import copy

    model = f64_model(GQA)
    monkeypatch.setattr(type(model), "compile_backend", "eager")
    prompt = torch.randint(0, model.cfg.vocab_size, (2, 5))
    model.generate(prompt, 6, compile=True)
    (first,) = model.decode_pool.entries.values()
    model.generate(prompt, 6, compile=True)
    assert list(model.decode_pool.entries.values()) == [first], "same weights: the pooled step is reused"
    other = copy.deepcopy(model)
    with torch.no_grad():
        for p in other.parameters():
            p.mul_(0.7)
    model.load_state_dict(other.state_dict(), assign=True)
    out = model.generate(prompt, 6, compile=True)
    assert first not in model.decode_pool.entries.values(), "moved weights: captured anew"
    assert torch.equal(out, other.generate(prompt, 6, compile=False))


# The switches of ``generation.decode_switches``: (module, value that leaves the kernel off, value that turns it on,
# the kernel's name in that module, its reference to wrap, whether the switch acts only where the kernels run).
def _switch(name: str):
    from archzoo.kernels.decode_attention.naive import naive_decode_attention
    from archzoo.kernels.decode_linear.naive import naive_decode_linear
    from archzoo.layers import attention, fused

    return {
        "DECODE_LINEAR": (fused, "cublas", "kernel", "decode_linear", naive_decode_linear, False),
        "DECODE_ATTENTION": (attention, "sdpa", "kernel", "decode_attention", naive_decode_attention, True),
    }[name]


@pytest.mark.parametrize("switch", ["DECODE_LINEAR", "DECODE_ATTENTION"])
def test_a_flipped_decode_switch_gets_its_own_pooled_step(switch, monkeypatch):
    """A captured graph replays the kernels it was captured with, whatever a switch says later: the pool's key holds
    ``decode_switches()``, so a flip between two compiled calls builds (on CUDA: captures) a step of its own, and
    flipping back finds the first again. The tokens follow the switch: the kernel it turns on is replaced by its
    reference scaled by 1.5, so the two settings decode differently, and the compiled blocks run the current
    setting's form (dynamo guards on the module global: a flip recompiles)."""
    from archzoo.generation import decode_switches

    module, off, on, kernel, reference, where_kernels_run = _switch(switch)
    if where_kernels_run:  # the decode attention's device check: CPU tensors take it under Triton's interpreter
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(module, kernel, lambda *args: 1.5 * reference(*args))
    torch._dynamo.reset()
    model = f64_model(GQA).float()  # the decode attention kernel takes fp16 / bf16 / fp32
    monkeypatch.setattr(type(model), "compile_backend", "eager")
    prompt = torch.randint(0, model.cfg.vocab_size, (2, 5), generator=torch.Generator().manual_seed(0))
    ref = {}
    for value in (off, on):
        monkeypatch.setattr(module, switch, value)
        ref[value] = model.generate(prompt, 8, compile=False)
    assert not torch.equal(ref[off], ref[on]), "the scaled kernel should change the tokens"
    steps = {}
    for value in (off, on, off):
        monkeypatch.setattr(module, switch, value)
        assert (switch, value) in decode_switches()
        out = model.generate(prompt, 8, compile=True)
        assert torch.equal(out, ref[value]), f"{switch}={value!r}: compiled tokens differ from eager ones under it"
        (key, step), *_ = reversed(model.decode_pool.entries.items())  # the entry this call used
        assert key[-1] == decode_switches(), key
        if value in steps:
            assert step is steps[value] and model.last_generate_stats["compile_s"] == 0.0, "flipped back: reused"
        else:
            assert model.last_generate_stats["compile_s"] > 0, f"{switch}={value!r}: a step of the other was reused"
        steps[value] = step
    assert len(model.decode_pool.entries) == 2
    torch._dynamo.reset()


def test_moe_past_its_static_limit_generates_eagerly_and_says_why(monkeypatch, caplog):
    """A batch past ``MoE.STATIC_MAX_TOKENS`` routes by sorting, which reads the host (a fullgraph compile fails on
    it, a CUDA graph capture with an obscure CUDA error): ``generate(compile=True)`` runs that call eagerly, logs
    why once and says so in ``last_generate_stats``; it is not pooled. A batch within the limit still compiles, and
    ``compile=False`` after a compiled call runs the plain blocks (the compiled ones cannot take the sorted path)."""
    import logging

    from archzoo.generation import uncapturable
    from archzoo.kernels import _dispatch
    from archzoo.layers.moe import MoE

    torch._dynamo.reset()
    monkeypatch.setattr(MoE, "STATIC_MAX_TOKENS", 2)
    monkeypatch.setattr(_dispatch, "_LOGGED", set())
    model = f64_model(next(p for p in MODEL_CONFIGS if p.stem == "moe"))
    monkeypatch.setattr(type(model), "compile_backend", "eager")
    assert uncapturable(model, 2) is None and uncapturable(f64_model(GQA), 100) is None
    why = "MoE layer blocks.0.ffn: 3 tokens exceed MoE.STATIC_MAX_TOKENS=2, the static path's limit"
    assert uncapturable(model, 3) == why
    V = model.cfg.vocab_size
    small, large = torch.randint(0, V, (2, 5)), torch.randint(0, V, (3, 5))
    out = model.generate(small, 6, compile=True)
    assert model.last_generate_stats["backend"] == "compiled" and "uncaptured" not in model.last_generate_stats
    assert torch.equal(out, model.generate(small, 6, compile=False))
    ref = model.generate(large, 6, compile=False)  # after a compiled call: the plain blocks
    with caplog.at_level(logging.WARNING, logger="archzoo.kernels"):
        for _ in range(2):
            out = model.generate(large, 6, compile=True)
            stats = model.last_generate_stats
            assert stats["backend"] == "eager" and stats["compile_s"] == 0.0, stats
            assert stats["uncaptured"].startswith("a decode step of batch 3: MoE layer blocks.0.ffn: 3 tokens"), stats
            assert torch.equal(out, ref)
    logged = [r.getMessage() for r in caplog.records if "runs this call eagerly" in r.getMessage()]
    assert len(logged) == 1 and "STATIC_MAX_TOKENS=2" in logged[0], caplog.text
    assert len(model.decode_pool.entries) == 1, "the eager call is not pooled"
    torch._dynamo.reset()
