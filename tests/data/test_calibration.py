"""Calibration specs -> token ids, the same for the trainer and the benchmark; bad specs name the key."""

from __future__ import annotations

import pytest
import torch

import archzoo
from archzoo.data import calibration as cal
from archzoo.data import calibration_ids, resolve_calibration


class _Tok:
    eos_token_id = 0

    def __call__(self, texts, **_):
        return {"input_ids": [[(ord(c) % 50) + 1 for c in t] for t in texts]}


def _teacher():
    torch.manual_seed(0)
    t = archzoo.build_model(archzoo.load_config("configs/models/gqa.yaml"))
    t.tokenizer = _Tok()
    return t


def test_shakespeare_spec_gives_blocks_in_stream_order(monkeypatch):
    monkeypatch.setattr("archzoo.data.shakespeare.shakespeare_texts", lambda split, ed: ["to be or not to be " * 40])
    ids = calibration_ids({"source": "shakespeare", "tokens": 64, "block_len": 16}, _teacher())
    assert ids.shape == (4, 16) and ids.dtype == torch.long
    again = resolve_calibration({"seed": 1, "calibration": {"source": "shakespeare", "tokens": 64, "block_len": 16}},
                                _teacher())  # fmt: skip
    assert torch.equal(again["calibration"], ids) and again["seed"] == 1
    assert resolve_calibration({"seed": 1}, None) == {"seed": 1}


def test_teacher_generated_spec_uses_the_cached_corpus(monkeypatch, tmp_path):
    seen = {}

    def fake_corpus(teacher, size_tokens, seed=0, **_):
        seen.update(size=size_tokens, seed=seed)
        p = tmp_path / "c.jsonl"
        p.write_text('{"text": "' + "abc " * 100 + '"}\n')
        return p

    monkeypatch.setattr("archzoo.data.generate.teacher_corpus", fake_corpus)
    ids = calibration_ids({"tokens": 32, "block_len": 8, "seed": 3}, _teacher())
    assert ids.shape == (4, 8) and seen == {"size": 40, "seed": 3}


@pytest.mark.parametrize(
    "spec,match",
    [
        ({"source": "wiki"}, "calibration.source"),
        ({"tokens": 0}, "calibration.tokens"),
        ({"tokenz": 5}, "unknown key"),
        ({"tokens": 8, "block_len": 16}, "at least one block"),
        ("shakespeare", "must be a mapping"),
    ],
)
def test_bad_specs_name_the_key(spec, match):
    with pytest.raises(ValueError, match=match):
        calibration_ids(spec, _teacher())


def test_keys_documented():
    assert set(cal.KEYS) == {"source", "tokens", "block_len", "seed"}
