"""Sliding-window attention over a whole sequence: FlexAttention against SDPA with the window mask.

On the CPU FlexAttention runs uncompiled and forward only (``FLEX_ON_CPU``, no gradients); the GPU test
compares forward and every gradient in bf16.
"""

from __future__ import annotations

import logging

import pytest
import torch

import archzoo.kernels as K
from archzoo.layers import window as W

from conftest import MODEL_CONFIGS, assert_close, f64_model, requires_cuda

# The CPU path runs FlexAttention uncompiled on purpose (a reference check, not a speed path).
pytestmark = pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")


def _qkv(B, H, Hkv, T, D, Dv, dtype=torch.float32, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k = torch.randn(B, H, T, D, generator=g), torch.randn(B, Hkv, T, D, generator=g)
    v = torch.randn(B, Hkv, T, Dv, generator=g)
    return (t.to(device, dtype) for t in (q, k, v))


# B, H, Hkv, T, D, Dv, window: lengths below, at and past FlexAttention's 128-position blocks, windows of 1
# (each position alone), smaller and larger than a block; GQA 6/2 and MHA; Dv != D.
CASES = {
    "t75_w9_gqa": (2, 6, 2, 75, 16, 16, 9),
    "t130_w1": (1, 2, 2, 130, 16, 16, 1),
    "t300_w200_gqa": (1, 4, 1, 300, 32, 16, 200),
    "t257_w128": (2, 3, 3, 257, 16, 16, 128),
}


@pytest.mark.parametrize("case", CASES)
def test_flex_forward_matches_sdpa_on_cpu(case, monkeypatch):
    B, H, Hkv, T, D, Dv, window = CASES[case]
    q, k, v = _qkv(B, H, Hkv, T, D, Dv)
    monkeypatch.setattr(W, "FLEX_ON_CPU", True)
    with torch.no_grad():
        got = W.window_attention(q, k, v, window, scale=0.3)
        assert K.last_backend("sliding_window_attention") == "flex"
        assert_close(case, got, W.sdpa_window(q, k, v, window, scale=0.3), 1e-5)


def test_cpu_with_gradients_takes_sdpa(monkeypatch):
    q, k, v = _qkv(1, 2, 2, 40, 16, 16)
    monkeypatch.setattr(W, "FLEX_ON_CPU", True)
    W.window_attention(q.requires_grad_(), k, v, 8)
    assert K.last_backend("sliding_window_attention") == "sdpa"


def test_a_model_forward_through_flex(monkeypatch):
    """The SWA model's full forward (longer than its window) through FlexAttention gives SDPA's logits."""
    model = f64_model(next(p for p in MODEL_CONFIGS if p.stem == "swa")).float()
    window = model.cfg.blocks[0].mixer.window
    ids = torch.randint(0, model.cfg.vocab_size, (2, 3 * window + 5))
    with torch.no_grad():
        ref = model(ids)
        monkeypatch.setattr(W, "FLEX_ON_CPU", True)
        got = model(ids)
    assert K.last_backend("sliding_window_attention") == "flex"
    assert_close("swa logits", got, ref, 1e-5)


def test_a_failure_falls_back_to_sdpa(monkeypatch, caplog):
    from archzoo.kernels import _dispatch

    def broken(*a, **kw):
        raise RuntimeError("no kernel for this head dim")

    q, k, v = _qkv(1, 2, 2, 40, 16, 16)
    monkeypatch.setattr(W, "FLEX_ON_CPU", True)
    monkeypatch.setattr(W, "_flex", broken)
    monkeypatch.setattr(W, "_FAILED", {})
    monkeypatch.setattr(_dispatch, "_LOGGED", set())
    with torch.no_grad(), caplog.at_level(logging.WARNING, logger="archzoo.kernels"):
        got = W.window_attention(q, k, v, 8)
        W.window_attention(q, k, v, 8)
    assert K.last_backend("sliding_window_attention") == "sdpa"
    assert sum("FlexAttention failed here" in r.getMessage() for r in caplog.records) == 1, "logged once"
    assert_close("fallback", got, W.sdpa_window(q, k, v, 8), 1e-6)


@requires_cuda
@pytest.mark.parametrize("T, window", [(1000, 128), (4096, 512)])
def test_cuda_forward_and_gradients(T, window):
    q, k, v = _qkv(2, 9, 3, T, 64, 64, torch.bfloat16, "cuda")
    leaves = [t.requires_grad_() for t in (q, k, v)]
    out = W.window_attention(*leaves, window)
    assert K.last_backend("sliding_window_attention") == "flex"
    grads = torch.autograd.grad(out.float().square().sum(), leaves)
    ref = W.sdpa_window(*leaves, window)
    ref_grads = torch.autograd.grad(ref.float().square().sum(), leaves)
    assert_close("out", out.float(), ref.float(), 2e-2)
    for name, g, r in zip("qkv", grads, ref_grads, strict=True):
        assert_close(f"d{name}", g.float(), r.float(), 3e-2)
