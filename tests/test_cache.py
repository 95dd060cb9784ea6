"""Cache bytes: measured == archzoo.cache_bytes == the published formula."""

from __future__ import annotations

import pytest
import torch

import archzoo

from conftest import MODEL_CONFIGS, load_yaml


@pytest.mark.parametrize("path", MODEL_CONFIGS, ids=lambda p: p.stem)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("seq_len", [1, 17, 300])
def test_measured_equals_analytic(path, dtype, seq_len):
    model = archzoo.build_model(path)
    for batch in (1, 3):
        cache = model.new_cache(batch, seq_len, dtype=dtype)
        assert cache.nbytes() == archzoo.cache_bytes(model.cfg, batch, seq_len, dtype)
        for state in cache.layers:
            for t in state.buffers.values() if state is not None else []:
                assert t.dtype == dtype or t.dtype == torch.float32, "state buffers are in the cache dtype (or fp32)"


def _attn(**mixer):
    return {
        "vocab_size": 64,
        "d_model": 64,
        "n_layers": 6,
        "mixer": {"type": "attention", "n_heads": 8, **mixer},
        "ffn": {"type": "swiglu", "d_ff": 64},
    }


L, B, HD = 6, 2, 8


@pytest.mark.parametrize("n_kv", [8, 4, 1], ids=["mha", "gqa", "mqa"])
@pytest.mark.parametrize("T", [1, 100, 4096])
def test_gqa_formula(n_kv, T):
    cfg = _attn(n_kv_heads=n_kv)
    assert archzoo.cache_bytes(cfg, B, T, torch.bfloat16) == B * 2 * L * T * n_kv * HD * 2


@pytest.mark.parametrize("T", [1, 100, 4096])
def test_cla2_halves_the_cache(T):
    gqa = archzoo.cache_bytes(_attn(n_kv_heads=2), B, T)
    cla = archzoo.cache_bytes(_attn(n_kv_heads=2, cla_group=2), B, T)
    assert cla * 2 == gqa
    model = archzoo.build_model(_attn(n_kv_heads=2, cla_group=2))
    assert model.state_owners == [0, 0, 2, 2, 4, 4]
    assert [s is None for s in model.new_cache(1, 4).layers] == [False, True] * 3
    cla3 = archzoo.cache_bytes(_attn(n_kv_heads=2, cla_group=3), B, T)
    assert cla3 * 3 == gqa


@pytest.mark.parametrize("T", [1, 15, 16, 17, 4096])
def test_window_formula(T):
    W = 16
    cfg = _attn(n_kv_heads=2, window=W)
    assert archzoo.cache_bytes(cfg, B, T) == B * 2 * L * min(T, W) * 2 * HD * 2
    model = archzoo.build_model(cfg)
    assert model.new_cache(B, T, dtype=torch.bfloat16).nbytes() == archzoo.cache_bytes(cfg, B, T)


@pytest.mark.parametrize("T", [1, 100, 4096])
def test_mla_formula(T):
    path = next(p for p in MODEL_CONFIGS if p.stem == "mla")
    data = load_yaml(path)
    m = data["mixer"]
    n = data["n_layers"]
    assert (
        archzoo.cache_bytes(data, B, T, torch.bfloat16) == n * B * T * (m["kv_lora_rank"] + m["qk_rope_head_dim"]) * 2
    )


def test_mla_cache_holds_latent_and_rope_key_only():
    model = archzoo.build_model(next(p for p in MODEL_CONFIGS if p.stem == "mla"))
    cache = model.new_cache(2, 10)
    m = model.cfg.mixer
    for state in cache.layers:  # one row per token: [latent c_kv | shared RoPE key]
        assert set(state.buffers) == {"latent"}
        assert state["latent"].shape == (2, 10, m.kv_lora_rank + m.qk_rope_head_dim)


def test_buffers_are_static_during_decode():
    """Decode writes into the preallocated buffers: no buffer is replaced or resized."""
    model = archzoo.build_model(next(p for p in MODEL_CONFIGS if p.stem == "swa")).eval()
    cache = model.new_cache(1, 40)
    ptrs = [[t.data_ptr() for t in s.buffers.values()] for s in cache.layers if s is not None]
    ids = torch.randint(0, 64, (1, 40))
    with torch.no_grad():
        model(ids[:, :10], cache=cache)
        for i in range(10, 40):
            model(ids[:, i : i + 1], cache=cache)
    assert ptrs == [[t.data_ptr() for t in s.buffers.values()] for s in cache.layers if s is not None]
