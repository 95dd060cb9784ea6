"""Data mixtures in the run YAML (``data.sources``): weighted packing, a held-out split per source, a
teacher-generated source, and bad mixtures refused with one line, exit 2 and nothing written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import yaml

import archzoo
from archzoo.train.config import load_run_config
from archzoo.train.data import DistillDataModule

TEACHER = {
    "vocab_size": 64,
    "d_model": 32,
    "n_layers": 2,
    "mixer": {"type": "attention", "n_heads": 4, "n_kv_heads": 2},
    "ffn": {"type": "swiglu", "d_ff": 64},
    "init_std": 0.1,
}
STUDENT = {**TEACHER, "mixer": {"type": "attention", "n_heads": 4, "n_kv_heads": 1}}
WORDS = "to be or not that is the question".split()


def _word_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({"<unk>": 0, "<eos>": 1, **{w: i + 2 for i, w in enumerate(WORDS)}}, "<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<eos>")


def _run(tmp_path, data: dict, steps: int = 4) -> dict:
    return {
        "teacher": str(tmp_path / "teacher"),
        "student": {"config": STUDENT, "init": "random"},
        "data": data,
        "stages": [{"name": "kd", "type": "kd", "steps": steps}],
        "optimizer": {"lr": 3e-3},
        "trainer": {"accelerator": "cpu", "devices": 1, "log_every_n_steps": 1, "enable_progress_bar": False},
        "checkpoint": {"every_n_steps": 100},
    }


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.setenv("ARCHZOO_CACHE", str(tmp_path / "cache"))
    torch.manual_seed(0)
    teacher = archzoo.build_model(TEACHER)
    teacher.tokenizer = _word_tokenizer()
    teacher.save_pretrained(tmp_path / "teacher")
    (tmp_path / "a.txt").write_text("to be or not to be " * 100)  # 601 tokens with the EOS
    (tmp_path / "b.jsonl").write_text("".join(f'{{"text": "that is the question {i}"}}\n' for i in range(60)))
    (tmp_path / "tiny.txt").write_text("to be")
    return tmp_path


def test_mixture_rows_follow_the_weights_with_a_split_per_source(workdir):
    data = {
        "sources": [
            {"source": "text", "path": "a.txt", "weight": 3, "name": "a"},
            {"source": "jsonl", "path": "b.jsonl", "weight": 1},
        ],
        "block_len": 8,
        "val_fraction": 0.1,
        "max_val_blocks": 6,
    }
    (workdir / "run.yaml").write_text(yaml.safe_dump(_run(workdir, data)))
    run = load_run_config(workdir / "run.yaml")
    assert [s.weight for s in run.data.source_list()] == [3, 1] and run.data.mixture
    dm = DistillDataModule(run, tokenizer=_word_tokenizer(), vocab_size=64)
    dm.setup("fit")
    assert list(dm.val_rows_by_source) == ["a", "1:jsonl"]
    assert all(v.shape[0] == 3 for v in dm.val_rows_by_source.values()), "max_val_blocks shared by the sources"
    eos, q = 1, 2 + WORDS.index("question")
    from_a = ~((dm.train_rows == q).any(1) | (dm.train_rows == 0).any(1))  # b's rows hold 'question' / <unk>
    share = from_a.float().mean().item()
    assert abs(share - 0.75) < 0.05, f"source a holds {share:.2f} of the rows, weight 3 of 4"
    assert eos in dm.train_rows and torch.equal(dm.val_rows, torch.cat(list(dm.val_rows_by_source.values())))


def test_single_source_form_is_one_source_of_weight_one(workdir):
    run = load_run_config(_run(workdir, {"source": "text", "path": str(workdir / "a.txt"), "block_len": 8}))
    (spec,) = run.data.source_list()
    assert (spec.source, spec.weight, run.data.mixture) == ("text", 1.0, False)
    dm = DistillDataModule(run, tokenizer=_word_tokenizer(), vocab_size=64)
    dm.setup("fit")
    assert dm.train_rows.shape[0] + dm.val_rows.shape[0] == 600 // 8


def test_a_teacher_generated_mixture_distills(workdir):
    from archzoo.train.run import run_distill

    data = {
        "sources": [
            {"source": "teacher_generated", "size_tokens": 400, "max_new_tokens": 8, "weight": 0.7, "seed": 1},
            {"source": "text", "path": "a.txt", "weight": 0.3},
        ],
        "block_len": 8,
        "batch_size": 2,
        "val_fraction": 0.1,
        "max_val_blocks": 4,
    }
    (workdir / "run.yaml").write_text(yaml.safe_dump(_run(workdir, data, steps=3)))
    result = run_distill(workdir / "run.yaml", workdir / "out")
    assert result["global_step"] == 3
    assert len(list((workdir / "cache" / "corpora").glob("*.jsonl"))) == 1, "generated once, cached"
    # Validation per source (its held-out split) besides the totals.
    import csv

    rows = list(csv.DictReader((workdir / "out" / "logs" / "metrics.csv").open()))
    for key in ("val/ppl", "val/kl", "val/0_teacher_generated/ppl", "val/0_teacher_generated/kl", "val/1_text/ppl",
                "val/1_text/ppl_teacher"):  # fmt: skip
        assert any(r.get(key) for r in rows), f"{key} not logged"


BAD_MIXTURES = {  # what is wrong -> (sources, where the one error line points and what it names)
    "missing file": (
        [{"source": "text", "path": "a.txt"}, {"source": "jsonl", "path": "gone.jsonl"}],
        r"data\.sources\.1\.path: jsonl: 'gone\.jsonl': no such file",
    ),
    "zero weight": (
        [{"source": "text", "path": "a.txt", "weight": 0}],
        r"data\.sources\.0\.weight: text: Input should be greater than 0",
    ),
    "negative weight": (
        [{"source": "text", "path": "a.txt"}, {"source": "random", "weight": -0.5, "name": "noise"}],
        r"data\.sources\.1\.weight: noise: Input should be greater than 0",
    ),
    "weight does not parse": (
        [{"source": "text", "path": "a.txt", "weight": "a lot"}],
        r"data\.sources\.0\.weight: text: Input should be a valid number",
    ),
    "fewer tokens than one block": (
        [{"source": "text", "path": "a.txt"}, {"source": "text", "path": "tiny.txt"}],
        r"data\.sources\.1: text 'tiny\.txt': 3 tokens do not fill one block of 8 \+ 1",
    ),
}


@pytest.mark.parametrize("case", list(BAD_MIXTURES))
def test_a_bad_mixture_exits_2_naming_the_source_and_writes_nothing(workdir, capsys, case):
    from archzoo.cli import main

    mixture, message = BAD_MIXTURES[case]
    (workdir / "run.yaml").write_text(yaml.safe_dump(_run(workdir, {"sources": mixture, "block_len": 8})))
    out = workdir / "out"
    assert main(["distill", str(workdir / "run.yaml"), "--output-dir", str(out)]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "run.yaml" in lines[0], captured.err
    assert re.search(message, lines[0]), lines[0]
    assert not out.exists(), f"{case}: wrote {sorted(p.name for p in out.rglob('*'))} before failing"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"block_len": 8}, "data.source: give `source` (one corpus) or `sources`"),
        ({"source": "random", "sources": [{"source": "random"}]}, "data.sources: give either"),
        ({"sources": [{"source": "random"}], "edition": "folio"}, "data.edition: with `sources`, set it inside"),
        ({"sources": []}, "data.sources: List should have at least 1 item"),
    ],
)
def test_source_or_sources(workdir, data, message):
    with pytest.raises(archzoo.ConfigError, match=re.escape(message)):
        load_run_config(_run(workdir, data))


def test_prepare_corpus_tool_fills_the_cache_the_run_reads(workdir, monkeypatch):
    """tools/prepare_corpus.py builds the run's teacher-generated corpus into the cache and packs it; the run then
    finds it there (nothing generated again)."""
    import json
    import os
    import subprocess
    import sys

    from archzoo.data import generate as gen
    from archzoo.train.run import run_distill

    data = {"sources": [{"source": "teacher_generated", "size_tokens": 300, "max_new_tokens": 8, "seed": 2}],
            "block_len": 8, "batch_size": 2, "val_fraction": 0.1, "max_val_blocks": 4}  # fmt: skip
    (workdir / "run.yaml").write_text(yaml.safe_dump(_run(workdir, data, steps=2)))
    tool = Path(__file__).resolve().parents[2] / "tools" / "prepare_corpus.py"
    res = subprocess.run([sys.executable, str(tool), str(workdir / "run.yaml"), "--pack", str(workdir / "pack")],
                         capture_output=True, text=True, env={**os.environ}, timeout=300)  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    line = json.loads(res.stdout.splitlines()[0])
    assert line["size_tokens"] == 300 and line["texts"] > 0
    assert list((workdir / "cache" / "corpora").glob("*.jsonl")), "the corpus is in the cache"
    assert (workdir / "pack" / "corpora.tgz.00").is_file()

    def no_generation(*a, **k):
        raise AssertionError("the run generated the corpus again")

    monkeypatch.setattr(gen, "generate_texts", no_generation)
    assert run_distill(workdir / "run.yaml", workdir / "out")["global_step"] == 2
