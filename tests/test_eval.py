"""archzoo.eval: the library's held-out scorer (the trainer's validation and the report share it)."""

from __future__ import annotations

import math

import pytest
import torch

import archzoo
from archzoo.data import perplexity
from archzoo.eval import evaluate

from conftest import MODEL_CONFIGS, f64_model

GQA = next(p for p in MODEL_CONFIGS if p.stem == "gqa")
MQA = next(p for p in MODEL_CONFIGS if p.stem == "mqa")


def test_without_a_teacher_it_is_the_models_perplexity():
    model = f64_model(GQA)
    blocks = torch.randint(0, model.cfg.vocab_size, (5, 17))
    out = evaluate(None, model, blocks, batch_size=2, token_chunk=5)
    assert out["ppl_teacher"] is None and out["kl"] is None and out["tokens"] == 80
    assert out["ppl_student"] == pytest.approx(perplexity(model, blocks, batch_size=3), rel=1e-12)


def test_kl_of_a_model_to_itself_is_zero_and_to_another_positive():
    a, b = f64_model(GQA), f64_model(MQA, seed=1)
    blocks = torch.randint(0, a.cfg.vocab_size, (3, 9))
    same = evaluate(a, a, blocks)
    assert same["kl"] == pytest.approx(0.0, abs=1e-12) and same["ppl_teacher"] == same["ppl_student"]
    other = evaluate(a, b, blocks, batch_size=2, token_chunk=4)
    ids, tgt = blocks[:, :-1], blocks[:, 1:]
    with torch.no_grad():
        logq, logp = a(ids).log_softmax(-1), b(ids).log_softmax(-1)
    kl = (logq.exp() * (logq - logp)).sum(-1).mean().item()
    assert other["kl"] == pytest.approx(kl, rel=1e-10) and other["kl"] > 0
    nll = -logp.gather(-1, tgt[..., None]).mean().item()
    assert other["ppl_student"] == pytest.approx(math.exp(nll), rel=1e-10)


def test_bad_input():
    model = f64_model(GQA)
    with pytest.raises(ValueError, match=r"blocks must be \(N, L \+ 1\)"):
        evaluate(None, model, torch.zeros(3, 1, dtype=torch.long))
    other = archzoo.build_model({**archzoo.load_config(GQA).to_dict(), "vocab_size": 32})
    with pytest.raises(ValueError, match="teacher vocab_size 32"):
        evaluate(other, model, torch.zeros(2, 5, dtype=torch.long))


def test_position_buckets_split_the_same_tokens():
    """The buckets' figures are the same per-token KL and loss, taken over each range of positions; the
    tokens of all buckets together give the totals."""
    a, b = f64_model(GQA), f64_model(MQA, seed=1)
    blocks = torch.randint(0, a.cfg.vocab_size, (3, 12))  # L = 11 inputs a row
    out = evaluate(a, b, blocks, batch_size=2, token_chunk=5, position_buckets=[0, 1, 4, 11])
    with torch.no_grad():
        logq, logp = a(blocks[:, :-1]).log_softmax(-1), b(blocks[:, :-1]).log_softmax(-1)
    kl = (logq.exp() * (logq - logp)).sum(-1)  # (3, 11)
    nll = -logp.gather(-1, blocks[:, 1:, None])[..., 0]
    nll_t = -logq.gather(-1, blocks[:, 1:, None])[..., 0]
    got = out["by_position"]
    assert [(g["start"], g["end"], g["tokens"]) for g in got] == [(0, 1, 3), (1, 4, 9), (4, 11, 21)]
    for g in got:
        sl = slice(g["start"], g["end"])
        assert g["kl"] == pytest.approx(kl[:, sl].mean().item(), rel=1e-10)
        assert g["ppl_student"] == pytest.approx(math.exp(nll[:, sl].mean().item()), rel=1e-10)
        assert g["ppl_teacher"] == pytest.approx(math.exp(nll_t[:, sl].mean().item()), rel=1e-10)
    assert out["kl"] == pytest.approx(kl.mean().item(), rel=1e-10) and out["tokens"] == 33
    assert "by_position" not in evaluate(a, b, blocks)
    for bad in ([1, 4], [0], [0, 4, 4], [0, 12]):
        with pytest.raises(ValueError, match="position_buckets must rise from 0"):
            evaluate(a, b, blocks, position_buckets=bad)
