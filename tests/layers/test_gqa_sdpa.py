"""``archzoo.layers.attention.GQA_SDPA``: causal attention over a whole sequence with fewer K/V heads than query
heads, through SDPA's ``enable_gqa`` ("native") or with the K/V heads repeated ("expand"), gives the same output
and gradients; a bad value is a ValueError naming the setting."""

from __future__ import annotations

import pytest
import torch

from archzoo.layers import attention as attn


@pytest.mark.parametrize("kv_heads", [1, 3])
def test_expand_equals_native(kv_heads, monkeypatch):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 9, 37, 16, generator=g, dtype=torch.float64, requires_grad=True)
    k, v = (torch.randn(2, kv_heads, 37, 16, generator=g, dtype=torch.float64, requires_grad=True) for _ in "kv")
    do = torch.randn(2, 9, 37, 16, generator=g, dtype=torch.float64)
    results = {}
    for mode in ("native", "expand"):
        monkeypatch.setattr(attn, "GQA_SDPA", mode)
        out = attn.attend(q, k, v, q_pos=None, k_pos=None)
        grads = torch.autograd.grad(out, (q, k, v), do)
        results[mode] = (out, *grads)
    for want, got in zip(results["native"], results["expand"], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_bad_setting_is_named(monkeypatch):
    monkeypatch.setattr(attn, "GQA_SDPA", "fast")
    q, k = torch.randn(1, 4, 5, 8), torch.randn(1, 2, 5, 8)
    with pytest.raises(ValueError, match="GQA_SDPA must be one of native, expand; got 'fast'"):
        attn.attend(q, k, k, q_pos=None, k_pos=None)
