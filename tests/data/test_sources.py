"""archzoo.data.sources (the schema and loader the trainer and the report share), the built-in prompt set,
teacher-generated corpora (batched, seeded, cached by key) and the held-out sets."""

from __future__ import annotations

import json

import pytest
import torch

import archzoo
import archzoo.data
import archzoo.eval
from archzoo.data import generate as gen
from archzoo.data import heldout, prompts, sources


class CharTokenizer:
    """One id per character, EOS = 1; ``encode`` / ``decode`` / ``__call__`` as a Hugging Face tokenizer."""

    bos_token_id, eos_token_id = None, 1

    def encode(self, text, add_special_tokens=False):
        return [2 + ord(c) % 60 for c in text]

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(ord("A") + (i % 60)) for i in ids if not (skip_special_tokens and i == 1))

    def __call__(self, texts, add_special_tokens=False, verbose=False):
        return {"input_ids": [self.encode(t) for t in texts]}


def _tiny_teacher():
    torch.manual_seed(0)
    model = archzoo.build_model("configs/models/gqa.yaml").eval()
    model.tokenizer = CharTokenizer()
    return model


# ----------------------------------------------------------------------------- schema


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ({"source": "jsonl", "path": "x.jsonl", "weight": 0}, r"src\.1\.weight: jsonl: Input should be greater than 0"),
        ({"source": "random", "weight": -1}, r"src\.1\.weight: random: Input should be greater than 0"),
        ({"source": "random", "weight": "lots"}, r"src\.1\.weight: random: Input should be a valid number"),
        ({"source": "jsonl"}, r"src\.1\.path: jsonl: source 'jsonl' needs a path"),
        ({"source": "shakespeare", "wieght": 1}, r"src\.1\.wieght: shakespeare: unknown key"),
        ({"source": "wiki"}, r"src\.1\.source: wiki: Input should be 'shakespeare'"),
    ],
)
def test_parse_sources_names_file_field_and_source(item, message):
    with pytest.raises(archzoo.ConfigError, match=message) as e:
        sources.parse_sources([{"source": "shakespeare"}, item], "src", "suite.yaml")
    assert str(e.value).startswith("suite.yaml: src.1.")


def test_parse_sources_defaults_and_describe():
    a, b = sources.parse_sources(
        [{"source": "teacher_generated", "size_tokens": 1000, "seed": 3, "weight": 0.7}, {"source": "shakespeare"}]
    )
    assert (a.weight, b.weight, a.size_tokens, a.seed) == (0.7, 1.0, 1000, 3)
    assert sources.describe(a) == "teacher_generated (1000 tokens, seed 3)" and sources.describe(b) == "shakespeare"
    c = sources.SourceConfig(source="jsonl", path="c.jsonl")
    assert sources.describe(c) == "jsonl 'c.jsonl'"


def test_check_path(tmp_path):
    (tmp_path / "a.txt").write_text("x")
    ok = sources.SourceConfig(source="text", path="a.txt")
    assert sources.check_path(ok, tmp_path) is None
    assert "no such file" in sources.check_path(sources.SourceConfig(source="text", path="b.txt"), tmp_path)
    assert "needs a .jsonl file" in sources.check_path(sources.SourceConfig(source="jsonl", path="a.txt"), tmp_path)


# ----------------------------------------------------------------------------- loading


def test_source_blocks_text_and_too_short(tmp_path):
    (tmp_path / "a.txt").write_text("abcdefghij" * 10)
    rows = sources.source_blocks(
        sources.SourceConfig(source="text", path="a.txt"), 8, CharTokenizer(), base_dir=tmp_path
    )
    assert rows.shape == ((101 - 1) // 8, 9)
    capped = sources.SourceConfig(source="text", path="a.txt", max_tokens=20)
    assert sources.source_blocks(capped, 8, CharTokenizer(), base_dir=tmp_path).shape == (2, 9)
    with pytest.raises(ValueError, match="do not fill one block"):
        sources.source_blocks(capped, 64, CharTokenizer(), base_dir=tmp_path)


def test_split_heldout_is_seeded_and_disjoint():
    rows = torch.arange(100).view(50, 2)
    train, val = sources.split_heldout(rows, 0.1, max_rows=3, seed=1)
    assert val.shape[0] == 3 and train.shape[0] == 47
    assert set(train[:, 0].tolist()).isdisjoint(val[:, 0].tolist())
    assert torch.equal(val, sources.split_heldout(rows, 0.1, max_rows=3, seed=1)[1])
    with pytest.raises(ValueError, match="leave none for training"):
        sources.split_heldout(rows[:1], 0.5)


def test_mix_rows_follows_the_weights():
    a = torch.zeros(30, 3, dtype=torch.long)  # a small source with most of the weight repeats
    b = torch.ones(270, 3, dtype=torch.long)  # a large one with little weight is subsampled
    b[:, 1] = torch.arange(270)
    mixed = sources.mix_rows([a, b], [3.0, 1.0], seed=0)
    assert mixed.shape[0] == 300 and int((mixed[:, 0] == 0).sum()) == 225
    picked = mixed[mixed[:, 0] == 1][:, 1]
    assert picked.unique().numel() == 75, "the large source's rows are drawn without repetition"
    assert torch.equal(mixed, sources.mix_rows([a, b], [3.0, 1.0], seed=0))
    assert sources.mix_rows([a], [5.0]) is a
    with pytest.raises(ValueError, match="weights must be > 0"):
        sources.mix_rows([a, b], [1.0, 0.0])


# ----------------------------------------------------------------------------- prompts


def test_prompt_set_is_wide_and_its_heldout_part_disjoint():
    train, held = prompts.prompt_set("train"), prompts.prompt_set("heldout")
    everything = prompts.prompt_set("all")
    assert len(everything) >= 200 and len(everything) == len(train) + len(held)
    assert {p.text for p in train}.isdisjoint(p.text for p in held)
    assert len({p.text for p in everything}) == len(everything), "no prompt twice"
    assert {p.register for p in everything} == set(prompts.DEFAULT_REGISTERS), "extra registers only when named"
    assert {p.kind for p in everything} == {"chat", "text"}
    assert held == prompts.prompt_set("heldout"), "the split is a rule, not a draw"
    wide_train, wide_held = (prompts.prompt_set(s, prompts.REGISTERS) for s in ("train", "heldout"))
    for register in prompts.REGISTERS:
        assert sum(p.register == register for p in wide_held) >= 2, register
        assert sum(p.register == register for p in wide_train) >= 20, register


def test_format_prompt_uses_the_chat_template_for_chat_prompts():
    class Templated(CharTokenizer):
        chat_template = "x"

        def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=True):
            return f"<user>{messages[0]['content']}<assistant>"

    chat = prompts.Prompt("code", "chat", "Write a loop.")
    assert prompts.format_prompt(chat, Templated()) == "<user>Write a loop.<assistant>"
    assert prompts.format_prompt(chat, CharTokenizer()) == "Write a loop."
    assert prompts.format_prompt(prompts.Prompt("prose", "text", "Once"), Templated()) == "Once"


# ----------------------------------------------------------------------------- generation


def test_generate_texts_one_prompt_per_row_seeded():
    model = _tiny_teacher()
    ps = ["a", "bbbb", "cc", "dddddd"]
    texts = gen.generate_texts(model, 6, max_new_tokens=5, batch_size=4, prompts=ps, seed=2)
    assert len(texts) == 6
    tok = CharTokenizer()
    firsts = sorted(tok.decode(tok.encode(p)) for p in ps)
    assert all(any(t.startswith(f) for f in firsts) for t in texts)
    assert len({next(f for f in firsts if t.startswith(f)) for t in texts[:4]}) == 4, "a different prompt per row"
    assert texts == gen.generate_texts(model, 6, max_new_tokens=5, batch_size=4, prompts=ps, seed=2)
    assert texts != gen.generate_texts(model, 6, max_new_tokens=5, batch_size=4, prompts=ps, seed=3)
    state = torch.random.get_rng_state()
    by_size = gen.generate_texts(model, max_new_tokens=5, batch_size=3, prompts=ps, seed=2, size_tokens=20)
    assert torch.equal(state, torch.random.get_rng_state()), "the caller's RNG is left alone"
    assert sum(len(t) + 1 for t in by_size) >= 20 and len(by_size) == 3


def test_teacher_corpus_is_cached_by_key(tmp_path, monkeypatch):
    model = _tiny_teacher()
    kw = {"max_new_tokens": 4, "batch_size": 8, "cache_dir": tmp_path}
    path = gen.teacher_corpus(model, 200, seed=1, **kw)
    texts = archzoo.data.load_texts(path)
    assert path.parent == tmp_path and sum(len(t) + 1 for t in texts) >= 200
    assert json.loads(path.with_suffix(".json").read_text())["texts"] == len(texts)
    assert not list(tmp_path.glob(".tmp-*")), "written atomically"

    def fail(*a, **k):
        raise AssertionError("regenerated a cached corpus")

    monkeypatch.setattr(gen, "generate_texts", fail)
    assert gen.teacher_corpus(model, 200, seed=1, **kw) == path
    monkeypatch.undo()
    other = gen.teacher_corpus(model, 200, seed=2, **kw)
    assert other != path and archzoo.data.load_texts(other) != texts
    path.unlink()
    assert archzoo.data.load_texts(gen.teacher_corpus(model, 200, seed=1, **kw)) == texts, "rebuilt the same"
    with torch.no_grad():
        model.lm_head.weight.mul_(1.5)
    assert gen.teacher_corpus(model, 200, seed=1, **kw) != path, "other weights, another key"
    held = gen.teacher_corpus(model, 100, seed=1, split="heldout", **kw)
    assert held != path


def test_teacher_generated_source(tmp_path, monkeypatch):
    monkeypatch.setenv("ARCHZOO_CACHE", str(tmp_path))
    model = _tiny_teacher()
    spec = sources.SourceConfig(source="teacher_generated", size_tokens=300, max_new_tokens=6, generate_batch_size=16)
    rows = sources.source_blocks(spec, 16, CharTokenizer(), teacher=model)
    assert rows.shape[1] == 17 and rows.shape[0] >= 300 // 16 - 2
    assert len(list((tmp_path / "corpora").glob("*.jsonl"))) == 1
    with pytest.raises(ValueError, match="needs the teacher"):
        sources.source_blocks(spec, 16, CharTokenizer())


# ----------------------------------------------------------------------------- held-out sets


def test_python_docs_is_long_human_prose():
    texts = heldout.python_docs_texts()
    assert len(texts) > 50 and sum(map(len, texts)) > 300_000
    assert any("for" in t and "statement" in t for t in texts)


def test_heldout_blocks_of_named_sets_and_files(tmp_path, monkeypatch):
    tok = CharTokenizer()
    rows = heldout.heldout_blocks("python-docs", tok, block_len=64, max_blocks=10)
    assert rows.shape == (10, 65)
    monkeypatch.setattr(archzoo.data, "shakespeare_texts", lambda split: [f"{split} text " * 40])
    assert heldout.heldout_texts("shakespeare-heldout") == ["heldout text " * 40]
    (tmp_path / "mine.txt").write_text("my own held-out text " * 20)
    assert heldout.heldout_blocks(tmp_path / "mine.txt", tok, block_len=32).shape[1] == 33
    with pytest.raises(ValueError, match="unknown held-out set 'wikitext'"):
        heldout.heldout_texts("wikitext")
    with pytest.raises(ValueError, match="needs the teacher"):
        heldout.heldout_texts("teacher-heldout")
    monkeypatch.setenv("ARCHZOO_CACHE", str(tmp_path))
    held = heldout.heldout_texts("teacher-heldout", _tiny_teacher(), size_tokens=100)
    firsts = {tok.decode(tok.encode(p.text)) for p in prompts.prompt_set("heldout")}
    assert held and all(any(t.startswith(f) for f in firsts) for t in held), "only held-out prompts"


@pytest.mark.parametrize("name", list(heldout.HELDOUT_MQAR))
def test_mqar_sets(name):
    x, y = heldout.mqar_set(name, n_examples=8)
    pairs = heldout.HELDOUT_MQAR[name]
    assert x.shape == y.shape == (8, heldout.MQAR_SEQ_LEN)
    assert ((y != -100).sum(1) == pairs).all() and int(x.max()) < heldout.MQAR_VOCAB
    assert torch.equal(x, heldout.mqar_set(name, n_examples=8)[0])
    model = _tiny_teacher()
    acc = archzoo.eval.mqar_accuracy(model, *heldout.mqar_set(name, vocab_size=model.cfg.vocab_size, n_examples=2))
    assert 0.0 <= acc <= 1.0


def test_a_large_corpus_is_built_in_shards_and_resumes_where_it_was_cut(tmp_path, monkeypatch):
    model = _tiny_teacher()
    kw = {"max_new_tokens": 4, "batch_size": 8}
    small = gen.teacher_corpus(model, 200, seed=1, cache_dir=tmp_path / "before", **kw)
    monkeypatch.setattr(gen, "SHARD_TOKENS", 100)
    assert gen.shard_sizes(250) == [100, 100, 50] and gen.shard_sizes(100) == [100] and gen.shard_sizes(7) == [7]
    whole = gen.teacher_corpus(model, 250, seed=1, cache_dir=tmp_path / "whole", **kw)
    texts = archzoo.data.load_texts(whole)
    assert sum(len(t) + 1 for t in texts) >= 250
    assert not (whole.parent / f"{whole.stem}.parts").exists(), "the parts go once the corpus is whole"
    assert json.loads(whole.with_suffix(".json").read_text())["shard_tokens"] == 100

    real, calls = gen.generate_texts, []

    def cut_at_third(*a, **k):  # the machine goes away during the third shard
        calls.append(k["seed"])
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(gen, "generate_texts", cut_at_third)
    with pytest.raises(KeyboardInterrupt):
        gen.teacher_corpus(model, 250, seed=1, cache_dir=tmp_path / "cut", **kw)
    assert len(list((tmp_path / "cut").glob("*.parts/*.jsonl"))) == 2, "each finished shard is kept"
    calls.clear()
    resumed = gen.teacher_corpus(model, 250, seed=1, cache_dir=tmp_path / "cut", **kw)
    assert len(calls) == 1, "only the shard in progress is generated again"
    assert archzoo.data.load_texts(resumed) == texts and resumed.name == whole.name
    # A corpus that fits one shard keeps the key and the texts it had before shards: one generate_texts call
    # with the corpus's own seed, and a key without a shard size.
    settings = {"max_new_tokens": 4, "temperature": 1.0, "top_p": 0.95, "split": "train"}
    key = gen.corpus_key(model, prompts.prompt_set("train"), 1, 200, "cpu", batch_size=8, **settings)
    assert small.name == f"{key}.jsonl"
    alone = real(model, None, 4, 8, 1.0, 0.95, prompts=prompts.prompt_set("train"), seed=1, size_tokens=200)
    assert archzoo.data.load_texts(small) == alone


def test_a_corpus_generated_in_another_dtype_uses_a_copy_and_its_own_key(tmp_path, monkeypatch):
    """On CUDA the corpus is generated in bf16 by default: from a copy (the teacher's weights are never rounded),
    under a key of its own. Exercised here on the CPU with the dtype given."""
    model = _tiny_teacher()
    sampled_by, real = [], gen.generate_texts
    monkeypatch.setattr(gen, "generate_texts", lambda m, *a, **k: sampled_by.append(m) or real(m, *a, **k))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    kw = {"max_new_tokens": 4, "batch_size": 8, "cache_dir": tmp_path}
    own = gen.teacher_corpus(model, 120, seed=1, **kw)
    low = gen.teacher_corpus(model, 120, seed=1, dtype=torch.bfloat16, **kw)
    assert low != own and json.loads(low.with_suffix(".json").read_text())["dtype"] == "bfloat16"
    assert "dtype" not in json.loads(own.with_suffix(".json").read_text()), "the model's own dtype: key as before"
    assert sum(len(t) + 1 for t in archzoo.data.load_texts(low)) >= 120
    assert [next(m.parameters()).dtype for m in sampled_by] == [torch.float32, torch.bfloat16]
    assert sampled_by[0] is model and sampled_by[1] is not model, "bf16: a copy samples, the model itself does not"
    after = model.state_dict()
    assert all(after[k].dtype == v.dtype and torch.equal(after[k], v) for k, v in before.items())
