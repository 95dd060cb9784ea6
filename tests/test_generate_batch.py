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
