"""generate: greedy and sampling through the cache."""

from __future__ import annotations

import torch

from archzoo.sampling import sample_next

from conftest import MODEL_CONFIGS, f64_model

GQA = next(p for p in MODEL_CONFIGS if p.stem == "gqa")
SWA = next(p for p in MODEL_CONFIGS if p.stem == "swa")


def _greedy_without_cache(model, ids, n):
    for _ in range(n):
        nxt = model(ids)[:, -1].argmax(-1, keepdim=True)
        ids = torch.cat([ids, nxt], 1)
    return ids


def test_greedy_matches_uncached_argmax_loop():
    for path in (GQA, SWA):
        model = f64_model(path)
        prompt = torch.randint(0, model.cfg.vocab_size, (3, 5))
        with torch.no_grad():
            ref = _greedy_without_cache(model, prompt, 30)
        out = model.generate(prompt, 30)
        assert torch.equal(out, ref), path.stem


def test_eos_stops_and_pads():
    model = f64_model(GQA)
    prompt = torch.randint(0, model.cfg.vocab_size, (2, 4))
    free = model.generate(prompt, 10)
    eos = int(free[0, 6])  # the third token sequence 0 produces
    out = model.generate(prompt, 10, eos_token_id=eos)
    expected, ends = free.clone(), []
    for b in range(2):
        hits = (free[b, 4:] == eos).nonzero()
        if hits.numel():
            end = 4 + int(hits[0]) + 1  # the row's tokens up to and including its first eos
            expected[b, end:] = eos  # a finished sequence keeps emitting eos
            ends.append(end)
    width = out.shape[1]
    if len(ends) == 2:  # every row finished: generation may stop early, never before the last eos
        assert max(ends) <= width <= 14, f"width {width}, last eos at {max(ends) - 1}"
    else:
        assert width == 14, "a row still running gets all max_new_tokens"
    assert torch.equal(out, expected[:, :width]), "tokens before eos as without eos, eos after it"


def test_sampling_options():
    model = f64_model(GQA)
    prompt = torch.randint(0, model.cfg.vocab_size, (2, 4))
    greedy = model.generate(prompt, 8)
    assert torch.equal(model.generate(prompt, 8, temperature=1.0, top_k=1), greedy)
    assert torch.equal(model.generate(prompt, 8, temperature=0.7, top_p=1e-6), greedy)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    a = model.generate(prompt, 8, temperature=1.0, generator=g1)
    b = model.generate(prompt, 8, temperature=1.0, generator=g2)
    assert torch.equal(a, b)


def test_top_k_and_top_p_filtering():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]]).log_softmax(-1)
    torch.manual_seed(0)
    draws = {int(sample_next(logits, 1.0, top_k=2)) for _ in range(200)}
    assert draws == {0, 1}
    p = logits.exp()[0]
    # top_p just above p0 keeps the first two tokens, never the last two
    draws = {int(sample_next(logits, 1.0, top_p=float(p[0]) + 1e-3)) for _ in range(200)}
    assert draws == {0, 1}
