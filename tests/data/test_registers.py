"""Prompt registers chosen by name (the extra ``technical`` register, a ``teacher_generated`` source's
``registers``), the long held-out teacher set, and the two recipes that train on long teacher documents.

Every corpus generated before registers could be chosen keeps its key: the default prompt sets and the keys
of the shipped corpora are pinned here to the values they had before."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
import yaml
from test_sources import CharTokenizer, _tiny_teacher

import archzoo
from archzoo.data import generate as gen
from archzoo.data import heldout, prompts, sources

from conftest import ROOT

LONG = ["prose", "encyclopedic", "technical"]


def _prompts_hash(ps: list[prompts.Prompt]) -> str:
    return hashlib.sha256(json.dumps([[p.register, p.kind, p.text] for p in ps]).encode()).hexdigest()[:16]


class _Fixed(torch.nn.Module):
    """A model whose fingerprint is the same under any torch: the keys below depend on nothing else."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.arange(6.0).view(2, 3))


def _key_of(monkeypatch, **kw) -> str:
    """The key ``teacher_corpus`` computes for ``_Fixed`` (stopped before anything is generated)."""
    real, keys = gen.corpus_key, []

    class Stop(Exception):
        pass

    def capture(*a, **k):
        keys.append(real(*a, **k))
        raise Stop

    monkeypatch.setattr(gen, "corpus_key", capture)
    with pytest.raises(Stop):
        gen.teacher_corpus(_Fixed(), device="cpu", **kw)
    monkeypatch.setattr(gen, "corpus_key", real)
    return keys[0]


# ----------------------------------------------------------------------------- old keys stay


def test_default_prompt_sets_and_existing_corpus_keys_are_unchanged(monkeypatch):
    """Pinned before the ``technical`` register and ``registers`` existed: adding registers must not move these."""
    assert _prompts_hash(prompts.prompt_set("train")) == "aab90ae8484b6b2d"
    assert _prompts_hash(prompts.prompt_set("heldout")) == "d070961ac95d57b7"
    assert _prompts_hash(prompts.prompt_set("all")) == "232f50c4e2e23267"
    assert prompts.prompt_set("train", prompts.DEFAULT_REGISTERS) == prompts.prompt_set("train")
    # the shipped recipes' 20M-token corpus (sharded, bf16), teacher-heldout, and the MLA calibration corpus
    assert _key_of(monkeypatch, size_tokens=20_000_000, batch_size=512, dtype=torch.bfloat16) == "1d8dd513dd184e113604"
    assert _key_of(monkeypatch, size_tokens=131_072, split="heldout") == "e68361bfa1f65b19c8f2"
    assert _key_of(monkeypatch, size_tokens=8192 + 512) == "c0230eb55109e70c00a7"


# ----------------------------------------------------------------------------- registers


def test_registers_select_prompts_and_extra_ones_only_by_name():
    assert prompts.REGISTERS == prompts.DEFAULT_REGISTERS + prompts.EXTRA_REGISTERS
    assert "technical" in prompts.EXTRA_REGISTERS and "technical" not in prompts.DEFAULT_REGISTERS
    chosen = prompts.prompt_set("train", ["technical", "prose"])
    assert [p.register for p in chosen] == sorted((p.register for p in chosen), key=["prose", "technical"].index)
    assert {p.register for p in chosen} == {"prose", "technical"} and {p.kind for p in chosen} == {"text"}
    assert chosen == prompts.prompt_set("train", ["prose", "technical", "prose"]), "order and repeats are no matter"
    tech = prompts.prompt_set("all", ["technical"])
    assert 28 <= len(tech) <= 40, "about as many as the other text registers"
    held = prompts.prompt_set("heldout", ["technical"])
    assert 2 <= len(held) < len(tech) and {p.text for p in held} <= {p.text for p in tech}
    assert not any(p.register == "technical" for p in prompts.prompt_set("all"))
    everything = prompts.prompt_set("all", prompts.REGISTERS)
    assert len({p.text for p in everything}) == len(everything), "no prompt twice, extras included"
    valid = ", ".join(prompts.REGISTERS)
    with pytest.raises(ValueError, match=f"unknown register 'manuals'; expected one of {valid}"):
        prompts.prompt_set("train", ["prose", "manuals"])
    with pytest.raises(ValueError, match="registers is empty"):
        prompts.check_registers([])


def test_registers_field_is_validated_with_file_field_and_names(tmp_path):
    (a,) = sources.parse_sources([{"source": "teacher_generated", "registers": ["technical", "prose"]}])
    assert a.registers == ["prose", "technical"], "kept in REGISTERS order"
    assert sources.describe(a) == "teacher_generated (20000000 tokens, seed 0, registers prose, technical)"
    (b,) = sources.parse_sources([{"source": "teacher_generated"}])
    assert b.registers is None and sources.describe(b) == "teacher_generated (20000000 tokens, seed 0)"
    bad = [{"source": "shakespeare"}, {"source": "teacher_generated", "registers": ["prose", "manuals"]}]
    with pytest.raises(archzoo.ConfigError, match=r"src\.1\.registers: teacher_generated: unknown register 'manuals'"):
        sources.parse_sources(bad, "src", "suite.yaml")
    with pytest.raises(archzoo.ConfigError, match=r"src\.0\.registers: shakespeare: only source 'teacher_generated'"):
        sources.parse_sources([{"source": "shakespeare", "registers": ["prose"]}], "src", "suite.yaml")
    # a run YAML: the ConfigError names the file and the field (the CLI prints it as one line and exits 2, as for
    # every bad run config: tests/train/test_train_config.py)
    from archzoo.train.config import load_run_config

    run = yaml.safe_load((ROOT / "configs" / "distill" / "smollm2-swa-long.yaml").read_text())
    run["student"]["config"] = str(ROOT / "configs" / "students" / "swa.yaml")
    run["data"]["sources"][2]["registers"] = ["prose", "manuals"]
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(run))
    with pytest.raises(archzoo.ConfigError) as e:
        load_run_config(path)
    assert str(e.value).startswith(f"{path}: data.sources.2.registers: teacher_generated: unknown register 'manuals'")
    assert str(e.value).endswith(f"expected one of {', '.join(prompts.REGISTERS)}")


def test_registers_enter_the_key_only_when_given(tmp_path, monkeypatch):
    model, tok = _tiny_teacher(), CharTokenizer()
    kw = {"max_new_tokens": 4, "batch_size": 8, "cache_dir": tmp_path}
    plain = gen.teacher_corpus(model, 100, seed=1, **kw)
    settings = {"max_new_tokens": 4, "temperature": 1.0, "top_p": 0.95, "split": "train"}
    assert plain.stem == gen.corpus_key(model, prompts.prompt_set("train"), 1, 100, "cpu", batch_size=8, **settings)
    assert "registers" not in json.loads(plain.with_suffix(".json").read_text())
    long = gen.teacher_corpus(model, 100, seed=1, registers=["technical", "prose"], **kw)
    assert long != plain and json.loads(long.with_suffix(".json").read_text())["registers"] == ["prose", "technical"]
    firsts = {tok.decode(tok.encode(p.text)) for p in prompts.prompt_set("train", ["prose", "technical"])}
    texts = archzoo.data.load_texts(long)
    assert texts and all(any(t.startswith(f) for f in firsts) for t in texts), "only the chosen registers' prompts"
    assert gen.teacher_corpus(model, 100, seed=1, registers=["prose", "technical"], **kw) == long, "order: same key"
    # every default register named: the same prompts, but chosen, so a key of its own
    named = gen.teacher_corpus(model, 100, seed=1, registers=prompts.DEFAULT_REGISTERS, **kw)
    assert named != plain
    # through a source: the field reaches teacher_corpus
    monkeypatch.setenv("ARCHZOO_CACHE", str(tmp_path / "cache"))
    spec = sources.SourceConfig(
        source="teacher_generated", registers=["technical"], size_tokens=100, max_new_tokens=4, generate_batch_size=8
    )
    assert sources.source_blocks(spec, 16, tok, teacher=model).shape[1] == 17
    (meta,) = (tmp_path / "cache" / "corpora").glob("*.json")
    assert json.loads(meta.read_text())["registers"] == ["technical"]


# ----------------------------------------------------------------------------- teacher-long-heldout


def test_teacher_long_heldout_is_long_samples_of_the_heldout_text_prompts(tmp_path, monkeypatch):
    assert "teacher-long-heldout" in heldout.HELDOUT_TEXT_SETS
    assert heldout.LONG_HELDOUT_REGISTERS == tuple(LONG) and heldout.LONG_HELDOUT_MAX_NEW_TOKENS == 1536
    assert {kind for r in LONG for kind in {p.kind for p in prompts.prompt_set("all", [r])}} == {"text"}
    with pytest.raises(ValueError, match="'teacher-long-heldout' needs the teacher"):
        heldout.heldout_texts("teacher-long-heldout")
    calls, real = [], gen.teacher_corpus

    def spy(*a, **k):
        calls.append(k)
        return real(*a, **k)

    monkeypatch.setattr(gen, "teacher_corpus", spy)
    monkeypatch.setattr(heldout, "LONG_HELDOUT_MAX_NEW_TOKENS", 24)  # 1,536 on the CPU would take minutes
    monkeypatch.setenv("ARCHZOO_CACHE", str(tmp_path))
    model, tok = _tiny_teacher(), CharTokenizer()
    texts = heldout.heldout_texts("teacher-long-heldout", model, size_tokens=300)
    assert calls[0]["split"] == "heldout" and calls[0]["registers"] == tuple(LONG)
    assert calls[0]["max_new_tokens"] == 24
    held = prompts.prompt_set("heldout", LONG)
    firsts = {tok.decode(tok.encode(p.text)) for p in held}
    assert texts and all(any(t.startswith(f) for f in firsts) for t in texts), "only held-out text prompts"
    assert {p.register for p in held} == set(LONG)
    assert max(len(t) for t in texts) > min(len(f) for f in firsts) + 8, "the teacher continued them"

    def fail(*a, **k):
        raise AssertionError("regenerated a cached held-out set")

    monkeypatch.setattr(gen, "generate_texts", fail)
    assert heldout.heldout_texts("teacher-long-heldout", model, size_tokens=300) == texts, "cached"
    # the benchmark suite takes the name (its schema lists the built-in sets of archzoo.data.heldout)
    from archzoo.bench.suite import HeldoutSet

    built_in = set(heldout.HELDOUT_TEXT_SETS) - {"shakespeare-heldout"}  # the suite's own `type: shakespeare`
    assert built_in == {HeldoutSet(name="x", set=s).set for s in built_in}


# ----------------------------------------------------------------------------- the recipes


@pytest.mark.parametrize("name", ["swa", "mla"])
def test_long_recipes_add_long_documents_to_the_shipped_recipe(name):
    from archzoo.train.config import load_run_config

    base = load_run_config(ROOT / "configs" / "distill" / f"smollm2-{name}.yaml")
    run = load_run_config(ROOT / "configs" / "distill" / f"smollm2-{name}-long.yaml")
    general, shakespeare, long = run.data.sources
    old_general, old_shakespeare = base.data.sources
    assert general.model_copy(update={"weight": 0.8}) == old_general, "the same 20M corpus (and key)"
    assert shakespeare == old_shakespeare
    assert (general.weight, shakespeare.weight, long.weight) == (0.5, 0.2, 0.3)
    assert long.source == "teacher_generated" and long.registers == LONG
    assert (long.max_new_tokens, long.size_tokens, long.seed, long.generate_batch_size) == (1536, 6_000_000, 1, 256)
    assert run.total_steps == base.total_steps and run.data.block_len == base.data.block_len == 4096
    assert run.stages == base.stages and run.optimizer == base.optimizer and run.student == base.student
    for suite in (ROOT / "configs" / "bench").glob("*.yaml"):  # scored by their own suite only
        if suite.name != "smollm2-long.yaml":
            assert f"smollm2-{name}-long" not in suite.read_text(), f"{suite.name}: a suite of its own scores them"
    assert f"runs/smollm2-{name}-long" in (ROOT / "configs" / "bench" / "smollm2-long.yaml").read_text()
