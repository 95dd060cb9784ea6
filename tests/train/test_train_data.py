"""DistillDataModule: sources, held-out split, and a batch order fixed by seed, step and rank."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

import archzoo.data
from archzoo.train.config import load_run_config
from archzoo.train.data import DistillDataModule, StreamBatchSampler


class CharTokenizer:
    """A stand-in for a Hugging Face tokenizer: one id per character, EOS = 0."""

    eos_token_id = 0

    def __call__(self, texts, add_special_tokens=False, verbose=False):
        return {"input_ids": [[1 + ord(c) % 250 for c in t] for t in texts]}


STUDENT = {
    "vocab_size": 256,
    "d_model": 16,
    "n_layers": 1,
    "mixer": {"type": "attention", "n_heads": 2},
    "ffn": {"type": "swiglu", "d_ff": 32},
}


def _module(data: dict, tokenizer=None, vocab_size=None) -> DistillDataModule:
    run = load_run_config(
        {
            "teacher": "t",
            "student": {"config": STUDENT, "init": "random"},
            "data": data,
            "stages": [{"name": "kd", "type": "kd", "steps": 6}],
        }
    )
    dm = DistillDataModule(run, tokenizer=tokenizer, vocab_size=vocab_size)
    dm.setup("fit")
    return dm


def _attach(dm, rank=0, world=1, step=0):
    dm.trainer = SimpleNamespace(global_rank=rank, world_size=world, global_step=step)
    return dm


def test_local_jsonl_is_tokenised_packed_and_split(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text("\n".join(json.dumps({"body": f"document number {i} " * 5}) for i in range(20)))
    dm = _module(
        {"source": "jsonl", "path": str(path), "text_field": "body", "block_len": 16, "val_fraction": 0.1},
        tokenizer=CharTokenizer(),
    )
    rows = torch.cat([dm.train_rows, dm.val_rows])
    assert rows.shape[1] == 17 and dm.val_rows.shape[0] == round(0.1 * rows.shape[0])
    stream = archzoo.data.tokenize_texts(archzoo.data.load_texts(path, "body"), CharTokenizer())
    assert sorted(map(tuple, rows.tolist())) == sorted(map(tuple, archzoo.data.pack_blocks(stream, 16).tolist()))
    again = _module(
        {"source": "jsonl", "path": str(path), "text_field": "body", "block_len": 16, "val_fraction": 0.1},
        tokenizer=CharTokenizer(),
    )
    assert torch.equal(again.train_rows, dm.train_rows), "the split depends on the seed only"


def test_max_tokens_stops_tokenising(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("abcdefgh" * 100)
    dm = _module(
        {"source": "text", "path": str(path), "block_len": 8, "val_fraction": 0, "max_tokens": 81},
        tokenizer=CharTokenizer(),
    )
    assert dm.train_rows.shape == (10, 9)


def test_shakespeare_reads_the_training_split_only(monkeypatch):
    asked = []

    def fake_texts(split="train", edition="all", cache_dir=None):
        asked.append(split)
        return ["to be or not to be " * 50]

    monkeypatch.setattr(archzoo.data, "shakespeare_texts", fake_texts)
    dm = _module({"source": "shakespeare", "block_len": 8}, tokenizer=CharTokenizer())
    assert asked == ["train"] and dm.train_rows.shape[1] == 9


def test_text_source_needs_a_tokenizer(tmp_path):
    (tmp_path / "a.txt").write_text("hello")
    with pytest.raises(archzoo.ConfigError, match="data.source: source 'text' needs a teacher with a tokenizer"):
        _module({"source": "text", "path": str(tmp_path / "a.txt")})


def test_random_source_and_loader_order():
    dm = _attach(_module({"source": "random", "block_len": 8, "batch_size": 4, "n_blocks": 10}, vocab_size=256))
    assert dm.train_rows.max() < 256 and dm.val_rows.shape[0] == 1
    batches = list(dm.train_dataloader())
    assert len(batches) == 6 and all(b.shape == (4, 9) for b in batches)
    # Resuming at step 2 yields exactly the batches an uninterrupted run sees from step 2 on.
    resumed = list(_attach(dm, step=2).train_dataloader())
    assert len(resumed) == 4 and all(torch.equal(a, b) for a, b in zip(resumed, batches[2:], strict=True))
    # Each pass over the rows is a permutation: every row once per pass.
    s = StreamBatchSampler(10, 5, seed=3, rank=0, world=1, start=0, stop=4)
    idx = [i for b in s for i in b]
    assert sorted(idx[:10]) == list(range(10)) and sorted(idx[10:]) == list(range(10)) and idx[:10] != idx[10:]


def test_ranks_split_the_single_process_stream():
    one = StreamBatchSampler(50, 4, seed=1, rank=0, world=1, start=0, stop=5)
    ranks = [StreamBatchSampler(50, 2, seed=1, rank=r, world=2, start=0, stop=5) for r in range(2)]
    for k in range(5):
        assert one.batch(k) == ranks[0].batch(k) + ranks[1].batch(k), f"micro-batch {k}"


def test_too_few_validation_blocks_for_the_devices():
    dm = _module({"source": "random", "block_len": 8, "n_blocks": 10, "val_fraction": 0.1}, vocab_size=256)
    with pytest.raises(archzoo.ConfigError, match="1 validation blocks cannot be shared by 2 devices"):
        _attach(dm, world=2).val_dataloader()


def test_mqar_source():
    dm = _module(
        {"source": "mqar", "block_len": 47, "n_blocks": 20, "mqar_kv_pairs": 6, "val_fraction": 0.1}, vocab_size=128
    )
    rows = torch.cat([dm.train_rows, dm.val_rows])
    assert rows.shape == (20, 48)
    inputs, _ = archzoo.data.mqar_examples(20, 128, 48, 6, seed=0)
    assert sorted(map(tuple, rows.tolist())) == sorted(map(tuple, inputs.tolist()))
    with pytest.raises(archzoo.ConfigError, match="mqar_kv_pairs"):
        _module({"source": "mqar", "block_len": 10, "n_blocks": 2, "mqar_kv_pairs": 6}, vocab_size=128)
