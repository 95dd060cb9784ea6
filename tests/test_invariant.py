"""Full forward == prefill + decode steps, for every shipped config and several splits."""

from __future__ import annotations

import pytest
import torch

from conftest import MODEL_CONFIGS, assert_close, f64_model

T = 48  # longer than every tiny config's window and linear-attention chunk

SPLITS = [
    [1] * T,  # token by token from the start
    [7] + [1] * (T - 7),  # short prefill, then decode
    [T - 1, 1],  # long prefill, one step
    [5, 11, 1, 1, 20, 10],  # chunked prefill with multi-token steps
    [T],  # prefill only
]


@pytest.mark.parametrize("path", MODEL_CONFIGS, ids=lambda p: p.stem)
def test_full_forward_equals_prefill_plus_decode(path):
    model = f64_model(path)
    torch.manual_seed(1)
    ids = torch.randint(0, model.cfg.vocab_size, (2, T))
    with torch.no_grad():
        full = model(ids)
        for split in SPLITS:
            assert sum(split) == T
            cache = model.new_cache(2, T)
            outs, pos = [], 0
            for n in split:
                outs.append(model(ids[:, pos : pos + n], cache=cache))
                pos += n
                assert cache.seq_len == pos
            assert_close(f"{path.stem} logits, split {split[:6]}", torch.cat(outs, 1), full, 1e-10)


@pytest.mark.parametrize("path", MODEL_CONFIGS, ids=lambda p: p.stem)
def test_cache_reuse_after_reset(path):
    model = f64_model(path)
    ids = torch.randint(0, model.cfg.vocab_size, (1, 20))
    cache = model.new_cache(1, 20)
    with torch.no_grad():
        a = model(ids, cache=cache)
        cache.reset()
        b = model(ids, cache=cache)
    assert torch.equal(a, b)


def test_bounded_cache_runs_past_max_seq_len():
    """A cache of only windowed layers accepts any length; a global layer's cache refuses to overflow."""
    import archzoo

    cfg = {
        "vocab_size": 64,
        "d_model": 32,
        "n_layers": 2,
        "init_std": 0.2,
        "mixer": {"type": "attention", "n_heads": 2, "window": 4},
        "ffn": {"type": "swiglu", "d_ff": 32},
    }
    model = archzoo.build_model(cfg).double().eval()
    ids = torch.randint(0, 64, (1, 30))
    with torch.no_grad():
        full = model(ids)
        cache = model.new_cache(1, 8)
        assert cache.capacity is None
        steps = torch.cat([model(ids[:, i : i + 1], cache=cache) for i in range(30)], 1)
    assert_close("windowed logits past max_seq_len", steps, full, 1e-10)
    cfg["layers"] = [{"at": [1], "mixer": {"window": None}}]
    model = archzoo.build_model(cfg).eval()
    cache = model.new_cache(1, 8)
    model(ids[:, :8], cache=cache)
    with pytest.raises(ValueError, match="cache holds 8 tokens"):
        model(ids[:, 8:9], cache=cache)


@pytest.mark.parametrize("path", MODEL_CONFIGS, ids=lambda p: p.stem)
def test_cached_forward_is_differentiable_per_call(path):
    """With gradients on, each cached call backpropagates on its own: the cache holds no autograd history."""
    model = f64_model(path)
    ids = torch.randint(0, model.cfg.vocab_size, (1, 12))
    cache = model.new_cache(1, 12)
    for chunk in (ids[:, :5], ids[:, 5:6], ids[:, 6:12]):
        model(chunk, cache=cache).square().mean().backward()
    for state in cache.layers:
        for name, t in state.buffers.items() if state is not None else []:
            assert t.grad_fn is None and not t.requires_grad, f"cache buffer {name} carries autograd history"


def test_mla_with_per_layer_rope_pairs():
    """MLA layers with different ``rope_pairs`` (a conversion with mla_rope='norm'): each layer rotates at its own
    frequencies in the full forward (where one RoPE table per forward is shared by layers that can share it) and
    in decode steps alike."""
    import archzoo

    base = archzoo.load_config(next(p for p in MODEL_CONFIGS if p.stem == "mla")).to_dict()
    base["layers"] = [{"at": [0, 2], "mixer": {"type": "mla", "rope_pairs": [1, 5, 9, 15]}},
                      {"at": [1], "mixer": {"type": "mla", "rope_pairs": [0, 2, 4, 6]}}]  # fmt: skip
    model = f64_model(base)
    freqs = [b.mixer.rope.inv_freq for b in model.blocks]
    assert torch.equal(freqs[0], freqs[2]) and not torch.equal(freqs[0], freqs[1])
    assert not torch.equal(freqs[3], freqs[0]) and not torch.equal(freqs[3], freqs[1])  # layer 3: the default
    ids = torch.randint(0, model.cfg.vocab_size, (2, 20), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        full = model(ids)
        cache = model.new_cache(2, 20)
        steps = [model(ids[:, :5], cache=cache)] + [model(ids[:, i : i + 1], cache=cache) for i in range(5, 20)]
        steps = torch.cat(steps, 1)
        plain = archzoo.build_model({**base, "layers": []}).double()
        plain.load_state_dict(model.state_dict())
        other = plain(ids)
    assert_close("MLA with per-layer rope_pairs: prefill + decode vs full", steps, full, 1e-10)
    assert (other - full).abs().max() > 1e-3, "the pairs changed nothing: the layers' own frequencies were not used"
