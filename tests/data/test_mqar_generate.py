"""MQAR (Zoology's definition) and teacher-generated text."""

from __future__ import annotations

import json

import pytest
import torch

import archzoo
from archzoo.data import generate_texts, mqar_accuracy, mqar_examples, write_jsonl


def test_mqar_structure():
    V, L, P = 64, 40, 6
    x, y = mqar_examples(50, V, L, P, seed=1)
    assert x.shape == y.shape == (50, L)
    for i in range(50):
        keys, values = x[i, 0 : 2 * P : 2], x[i, 1 : 2 * P : 2]
        assert len(set(keys.tolist())) == P and bool((keys >= 1).all() and (keys < V // 2).all())
        assert bool((values >= V // 2).all() and (values < V).all())
        answer = dict(zip(keys.tolist(), values.tolist(), strict=True))
        q = (y[i] != -100).nonzero().squeeze(-1)
        assert len(q) == P, "every key is asked once"
        for t in q.tolist():
            assert t >= 2 * P, "queries come after the context"
            assert y[i, t] == answer[int(x[i, t])] == x[i, t + 1], "target is the queried key's value, next token"
    again, _ = mqar_examples(50, V, L, P, seed=1)
    assert torch.equal(x, again)


def test_mqar_bad_sizes():
    with pytest.raises(ValueError, match="num_kv_pairs"):
        mqar_examples(2, 16, 64, 8)
    with pytest.raises(ValueError, match="too short"):
        mqar_examples(2, 64, 10, 4)


def test_mqar_accuracy_of_an_oracle_and_a_random_model():
    x, y = mqar_examples(8, 32, 24, 4, seed=0)

    class Oracle(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, ids):
            out = torch.zeros(*ids.shape, 32)
            nxt = torch.cat([ids[:, 1:], ids[:, :1]], 1)  # peeks at the answer
            return out.scatter(-1, nxt[..., None], 1.0)

    assert mqar_accuracy(Oracle(), x, y) == 1.0
    model = archzoo.build_model(
        {
            "vocab_size": 32,
            "d_model": 32,
            "n_layers": 1,
            "mixer": {"type": "attention", "n_heads": 2},
            "ffn": {"type": "none"},
        }
    )
    assert 0.0 <= mqar_accuracy(model, x, y) < 0.5


class _Tok:
    bos_token_id, eos_token_id = 1, 2

    def encode(self, text, add_special_tokens=False):
        return [3 + (ord(c) % 20) for c in text]

    def decode(self, ids, skip_special_tokens=True):
        return " ".join(str(i) for i in ids if not (skip_special_tokens and i in (1, 2)))


def test_generate_texts_and_jsonl(tmp_path):
    model = archzoo.build_model("configs/models/gqa.yaml").eval()
    model.tokenizer = _Tok()
    texts = generate_texts(model, 5, max_new_tokens=6, batch_size=2, seed=3)
    assert len(texts) == 5 and all(isinstance(t, str) for t in texts)
    assert texts == generate_texts(model, 5, max_new_tokens=6, batch_size=2, seed=3), "seeded sampling repeats"
    out = write_jsonl(texts, tmp_path / "gen" / "t.jsonl")
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["text"] for r in rows] == texts
    assert archzoo.data.load_texts(out) == texts, "the trainer's jsonl source reads it back"
    with pytest.raises(ValueError, match="tokenizer"):
        model.tokenizer = None
        generate_texts(model, 1)
