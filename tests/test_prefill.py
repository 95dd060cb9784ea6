"""prefill_rows: prompts of different lengths, one forward per distinct length (or one right-padded forward
where every buffer is indexed by position), equal to row by row."""

from __future__ import annotations

import pytest
import torch

from archzoo.prefill import prefill_rows

from conftest import MODEL_CONFIGS, f64_model, load_yaml

FAMILIES = ["gqa", "swa", "mla", "based", "mamba", "s4", "moe", "jamba", "cla"]
PATHS = [p for p in MODEL_CONFIGS if p.stem in FAMILIES]
LENGTHS = (5, 3, 5, 8, 3, 5, 1)  # groups of 3, 2 and 1 rows, and a prompt of one token


def row_by_row(model, rows, cache):
    return torch.cat([model(r[None], cache=cache.rows(b))[:, -1] for b, r in enumerate(rows)])


def states(cache):
    return [None if s is None else {k: v.clone() for k, v in s.buffers.items()} for s in cache.layers]


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.stem)
def test_grouped_prefill_equals_row_by_row(path):
    model = f64_model(path)
    torch.manual_seed(1)
    rows = [torch.randint(0, model.cfg.vocab_size, (n,)) for n in LENGTHS]
    want_cache = model.new_cache(len(rows), 16)
    want = row_by_row(model, rows, want_cache)
    got_cache = model.new_cache(len(rows), 16)
    got = prefill_rows(model, rows, got_cache)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert got_cache.lengths.tolist() == list(LENGTHS)
    for i, (g, w) in enumerate(zip(states(got_cache), states(want_cache), strict=True)):
        assert (g is None) == (w is None), f"layer {i}"
        by_length = got_cache.layers[i].by_length if g is not None else ()
        for k in w or {}:
            if k in by_length:  # indexed by position: equal up to each row's length (a padded prefill writes past it)
                for b, n in enumerate(LENGTHS):
                    torch.testing.assert_close(
                        g[k][b][..., :n, :], w[k][b][..., :n, :], rtol=1e-12, atol=1e-12, msg=f"layer {i} {k} row {b}"
                    )
            else:
                torch.testing.assert_close(g[k], w[k], rtol=1e-12, atol=1e-12, msg=f"layer {i} buffer {k}")
    # The cache goes on decoding as the row-by-row one would.
    step = torch.randint(0, model.cfg.vocab_size, (len(rows), 1))
    with torch.no_grad():
        got, want = model(step, cache=got_cache), model(step, cache=want_cache)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.stem)
def test_generate_with_repeated_lengths_equals_each_row_alone(path):
    model = f64_model(path)
    torch.manual_seed(2)
    prompts = [torch.randint(0, model.cfg.vocab_size, (n,)) for n in LENGTHS]
    out = model.generate(prompts, 4)
    for p, got in zip(prompts, out, strict=True):
        assert torch.equal(got, model.generate(p[None], 4)[0]), f"{path.stem}: a row differs from the row alone"


def test_shared_states_stay_shared_in_empty_rows():
    model = f64_model(next(p for p in PATHS if p.stem == "cla"))
    cache = model.new_cache(3, 8)
    sub = cache.empty_rows(2)
    ids = {id(s) for s in cache.layers if s is not None}
    sub_ids = {id(s) for s in sub.layers if s is not None}
    assert len(sub_ids) == len(ids)
    for s, t in zip(cache.layers, sub.layers, strict=True):
        assert (s is None) == (t is None)
        for k, v in (s.buffers if s is not None else {}).items():
            assert t[k].shape == (2, *v.shape[1:]) and t[k].dtype == v.dtype and not t[k].any()


def test_put_rows_refuses_a_cache_of_another_size():
    model = f64_model(PATHS[0])
    cache = model.new_cache(3, 8)
    with pytest.raises(ValueError, match="put_rows: 2 rows"):
        cache.put_rows(torch.tensor([0, 1, 2]), cache.empty_rows(2))


def test_moe_with_capacity_at_inference_prefills_row_by_row():
    """Capacity at inference makes routing depend on the batch: each row must route as it would alone (equal up to
    the LM head's rounding on one position against the whole prompt's; a token routed otherwise differs by far
    more)."""
    data = load_yaml(next(p for p in PATHS if p.stem == "moe"))
    data["ffn"] = {**data["ffn"], "capacity_at_inference": True, "capacity_factor": 0.5}
    model = f64_model(data)
    torch.manual_seed(3)
    rows = [torch.randint(0, model.cfg.vocab_size, (n,)) for n in LENGTHS]
    want = row_by_row(model, rows, model.new_cache(len(rows), 16))
    torch.testing.assert_close(prefill_rows(model, rows, model.new_cache(len(rows), 16)), want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "stem, padded", [("gqa", True), ("mla", True), ("cla", True), ("swa", False), ("mamba", False)]
)
def test_one_padded_forward_where_every_buffer_is_indexed_by_position(stem, padded, monkeypatch):
    """Attention, MLA and CLA caches take the rows in one right-padded forward; a ring buffer or a recurrent state
    would take the pads in, so those keep one forward per length; too much padding too (PAD_BUDGET)."""
    import archzoo.prefill as P

    model = f64_model(next(p for p in MODEL_CONFIGS if p.stem == stem))
    rows = [torch.randint(0, model.cfg.vocab_size, (n,)) for n in LENGTHS]
    calls = []
    real = model.hidden_states
    monkeypatch.setattr(
        model, "hidden_states", lambda ids, *a, **k: calls.append(tuple(ids.shape)) or real(ids, *a, **k)
    )
    with torch.no_grad():
        prefill_rows(model, rows, model.new_cache(len(rows), 16))
    assert (calls == [(len(rows), max(LENGTHS))]) == padded, calls
    if padded:
        calls.clear()
        monkeypatch.setattr(P, "PAD_BUDGET", 1.0)  # 7 rows x 8 > 30 prompt tokens: one forward per length
        with torch.no_grad():
            prefill_rows(model, rows, model.new_cache(len(rows), 16))
        assert len(calls) == len(set(LENGTHS)), calls


@pytest.mark.parametrize("lengths", [(6, 6, 6), (5, 3, 5, 2)], ids=["one-length", "groups"])
def test_only_the_last_positions_reach_the_lm_head(lengths):
    """The prefill applies the LM head to each row's last position only (the whole prompt's logits were 25.8 GB for
    the teacher at 64 x 4,096 in bf16), with the logits the full forward gives there."""
    path = next(p for p in PATHS if p.stem == "swa")  # a ring buffer: one forward per length, never padded
    model = f64_model(path)
    torch.manual_seed(3)
    rows = [torch.randint(0, model.cfg.vocab_size, (n,)) for n in lengths]
    seen: list[tuple[int, ...]] = []
    hook = model.lm_head.register_forward_hook(lambda mod, args, out: seen.append(tuple(args[0].shape)))
    try:
        got = prefill_rows(model, rows, model.new_cache(len(rows), 16))
    finally:
        hook.remove()
    assert all(len(s) == 2 for s in seen), f"the LM head saw more than one position a row: {seen}"
    assert sum(s[0] for s in seen) == len(rows), seen
    with torch.no_grad():
        want = torch.cat([model(r[None])[:, -1] for r in rows])
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
