"""RoPE keeps its frequencies in fp32 through a cast of the model, so a bf16 model's angles stay right."""

from __future__ import annotations

import torch

import archzoo
from archzoo.layers.rope import RotaryEmbedding

from conftest import ROOT


def test_a_bf16_model_keeps_fp32_frequencies_and_exact_angles():
    model = archzoo.build_model(archzoo.load_config(ROOT / "configs/models/gqa.yaml")).to(torch.bfloat16)
    ropes = [m for m in model.modules() if isinstance(m, RotaryEmbedding)]
    assert ropes and all(r.inv_freq.dtype == torch.float32 for r in ropes)
    pos = torch.arange(0, 4096, 37)  # past 256, where bf16 stops holding every integer
    ref = RotaryEmbedding(ropes[0].dim, ropes[0].theta)
    for got, want in zip(ropes[0](pos, torch.bfloat16), ref(pos, torch.bfloat16), strict=True):
        assert got.dtype == torch.bfloat16 and torch.equal(got, want)
    # Before the fix a cast rounded the frequencies: cos off by up to 1.8 near position 1,000.
    rounded = ref.inv_freq.to(torch.bfloat16)
    wrong = (pos.to(torch.bfloat16)[:, None] * rounded).float().cos()
    assert (wrong - ref(pos, torch.float32)[0][:, : ref.dim // 2]).abs().max() > 0.5


def test_other_casts_and_devices_keep_the_buffer_as_it_should_be():
    rope = RotaryEmbedding(8, 500.0).half()
    assert rope.inv_freq.dtype == torch.float32
    rope = RotaryEmbedding(8, 500.0).to("meta")
    assert rope.inv_freq.dtype == torch.float32 and rope.inv_freq.is_meta
