"""MLA: the absorbed (decode) path equals the decompressed (training) path."""

from __future__ import annotations

import pytest
import torch

from archzoo.layers import ForwardContext

from conftest import MODEL_CONFIGS, assert_close, f64_model

MLA = next(p for p in MODEL_CONFIGS if p.stem == "mla")


@pytest.mark.parametrize("q_lora", [True, False])
def test_absorbed_equals_decompressed(q_lora):
    from conftest import load_yaml

    data = load_yaml(MLA)
    if not q_lora:
        data["mixer"]["q_lora_rank"] = None
    model = f64_model(data)
    mixer = model.blocks[0].mixer
    x = torch.randn(2, 13, model.cfg.d_model, dtype=torch.float64, requires_grad=True)
    mixer.absorb = False
    ref = mixer(x, None, ForwardContext())
    (gx_ref,) = torch.autograd.grad(ref.square().sum(), x)
    mixer.absorb = True
    out = mixer(x, None, ForwardContext())
    (gx,) = torch.autograd.grad(out.square().sum(), x)
    assert_close("mla output absorbed vs decompressed", out, ref, 1e-12)
    assert_close("mla d(input) absorbed vs decompressed", gx, gx_ref, 1e-12)


def test_decode_uses_absorbed_path_and_matches():
    model = f64_model(MLA)
    ids = torch.randint(0, model.cfg.vocab_size, (1, 12))
    with torch.no_grad():
        full = model(ids)
        cache = model.new_cache(1, 12)
        model(ids[:, :6], cache=cache)
        calls = []
        mixer = model.blocks[0].mixer
        orig = mixer._decode  # the decode step: absorbed attention over the cached latent rows
        mixer._decode = lambda *a: calls.append(1) or orig(*a)
        step = model(ids[:, 6:7], cache=cache)
        assert calls, "decode did not take the absorbed decode step"
        nope = model.blocks[0].mixer.kv_b_proj
        nope.register_forward_hook(lambda *a: calls.append("decompressed"))
        model(ids[:, 7:8], cache=cache)
    assert "decompressed" not in calls, "a decode step up-projected the latent cache"
    assert_close("mla decode logits", step, full[:, 6:7], 1e-10)
