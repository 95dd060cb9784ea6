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
