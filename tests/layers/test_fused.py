"""Fused projection copies (archzoo/layers/fused.py): Q|K|V and gate|up in one GEMM for decode steps.

A decode step through a cache with ``fused_weights`` set gives the unfused step's logits for every
family; the copies follow in-place weight updates, new storage and dtype changes; ``generate``
keeps them fresh, so it returns what an uncached argmax loop returns after the weights changed.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch._dynamo.testing import CompileCounter

from archzoo.layers import fused
from archzoo.layers.fused import FusedLinears

from conftest import MODEL_CONFIGS, assert_close, f64_model, load_yaml

GQA = next(p for p in MODEL_CONFIGS if p.stem == "gqa")
S4 = next(p for p in MODEL_CONFIGS if p.stem == "s4")


def _fused_count(model) -> int:
    return sum(getattr(m, "fused", None) is not None for m in model.modules())


def _compare_steps(src, name: str) -> object:
    model = f64_model(src)
    ids = torch.randint(0, model.cfg.vocab_size, (2, 12), generator=torch.Generator().manual_seed(1))
    cache = model.new_cache(2, 12)
    with torch.no_grad():
        model(ids[:, :6], cache=cache)
        fused = copy.deepcopy(cache)
        fused.fused_weights = True
        model.refresh_fused()
        for t in range(6, 12):
            ref = model(ids[:, t : t + 1], cache=cache)
            got = model(ids[:, t : t + 1], cache=fused)
            assert_close(f"{name} step {t}", got, ref, 1e-12)
    return model


@pytest.mark.parametrize("path", MODEL_CONFIGS, ids=lambda p: p.stem)
def test_fused_decode_steps_match_unfused(path):
    model = _compare_steps(path, path.stem)
    if path.stem in ("gqa", "mha", "swa", "cla", "s4", "linear", "based"):
        assert _fused_count(model) > 0, "attention, linear attention, SwiGLU and S4D layers carry decode copies"


@pytest.mark.parametrize("init", ["real", "inv"])
def test_s4d_fused_step_for_each_init(init):
    """S4D's fused step (precomputed dA, dB, C; complex modes as real pairs) for the real and complex inits."""
    data = load_yaml(S4)
    data["mixer"] = {**data["mixer"], "init": init}
    _compare_steps(data, f"s4 {init}")


def test_copies_follow_weight_changes():
    torch.manual_seed(0)
    a, b = nn.Linear(8, 4, bias=True), nn.Linear(8, 6, bias=True)
    f = FusedLinears(a, b)
    x = torch.randn(3, 8)

    def check(what):
        ya, yb = f(x)
        assert_close(f"{what}: a", ya, a(x), 1e-6)
        assert_close(f"{what}: b", yb, b(x), 1e-6)

    with pytest.raises(RuntimeError, match="refresh"):
        f(x)
    assert f.refresh() and not f.refresh(), "a second refresh with nothing changed copies nothing"
    check("first copy")
    address = f.weight.data_ptr()
    with torch.no_grad():
        a.weight.mul_(2)  # an optimizer-style in-place update
        b.bias.add_(1)
    assert f.refresh() and f.weight.data_ptr() == address, "an in-place update is recopied in place"
    check("after an in-place update")
    b.weight = nn.Parameter(torch.randn(6, 8))  # new storage
    assert f.refresh()
    check("after new storage")
    a.double(), b.double()
    assert f.refresh() and f.weight.dtype == torch.float64
    ya, _ = f(x.double())
    assert_close("after .double()", ya, a(x.double()), 1e-12)
    with pytest.raises(ValueError, match="one input width"):
        FusedLinears(a, nn.Linear(5, 4))
    with pytest.raises(ValueError, match="biases on all or none"):
        FusedLinears(a, nn.Linear(8, 4, bias=False))


@pytest.mark.parametrize("path", [GQA, S4], ids=lambda p: p.stem)
def test_generate_sees_weight_updates(path, monkeypatch):
    """Weights updated in place between calls (a training step): the pooled, fused step follows
    (Q|K|V and gate|up copies; S4D's discretised spectrum)."""
    model = f64_model(path)
    monkeypatch.setattr(type(model), "compile_backend", "eager")  # dynamo tracing, no codegen on CPU
    prompt = torch.randint(0, model.cfg.vocab_size, (2, 5))
    model.generate(prompt, 8, compile=True)  # pools a compiled step reading the fused copies
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1.3)
        ids = prompt
        for _ in range(8):
            ids = torch.cat([ids, model(ids)[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(model.generate(prompt, 8, compile=True), ids)


def test_fused_step_compiles_once():
    torch._dynamo.reset()
    model = f64_model(GQA).float()
    cache = model.new_cache(2, 40, dtype=torch.float32)
    cache.fused_weights = True
    model.refresh_fused()
    ids = torch.randint(0, model.cfg.vocab_size, (2, 40))
    counter = CompileCounter()
    with torch.no_grad():
        model(ids[:, :4], cache=cache)
        step = torch.compile(lambda t: model(t, cache=cache), backend=counter, fullgraph=True)
        for t in range(4, 20):
            step(ids[:, t : t + 1])
    assert counter.frame_count == 1
    torch._dynamo.reset()


def test_release_frees_the_copies_and_generate_makes_them_again(monkeypatch):
    model = f64_model(S4)
    monkeypatch.setattr(type(model), "compile_backend", "eager")
    prompt = torch.randint(0, model.cfg.vocab_size, (1, 4))
    out = model.generate(prompt, 5, compile=True)
    held = [m.fused for m in model.modules() if getattr(m, "fused", None) is not None]
    assert held and all(getattr(f, "weight", None) is not None or getattr(f, "dA", None) is not None for f in held)
    model.release_fused()
    assert not model.decode_pool.entries
    assert all(getattr(f, "weight", None) is None and getattr(f, "dA", None) is None for f in held)
    assert torch.equal(model.generate(prompt, 5, compile=True), out)


def test_decode_project_says_why_it_does_not_take_the_gemv(monkeypatch, caplog):
    """DECODE_LINEAR = "kernel": shapes the GEMV takes run it, a bias too (in its epilogue); a projection it cannot
    take (more than 64 rows, a SwiGLU pair with a bias) runs F.linear with the reason recorded and logged, and gives
    F.linear's result."""
    import logging

    import archzoo.kernels as K
    from archzoo.kernels import _dispatch
    from archzoo.layers import fused
    from archzoo.layers.norm import RMSNorm

    monkeypatch.setattr(fused, "DECODE_LINEAR", "kernel")
    monkeypatch.setattr(_dispatch, "_LOGGED", set())
    g = torch.Generator().manual_seed(0)
    w, b = torch.randn(7, 12, generator=g), torch.randn(7, generator=g)
    norm = RMSNorm(12)
    x = torch.randn(2, 1, 12, generator=g)
    assert_close("fits", fused.decode_project(x, w, None, norm), torch.nn.functional.linear(norm(x), w), 1e-6)
    assert K.last_backend("decode_linear") in ("naive", "triton")
    got = fused.decode_project(x, w, b, norm)  # a bias: the GEMV's epilogue
    assert K.last_backend("decode_linear") in ("naive", "triton")
    assert_close("bias", got, torch.nn.functional.linear(norm(x), w, b), 1e-6)
    with caplog.at_level(logging.WARNING, logger="archzoo.kernels"):
        got = fused.decode_project(torch.randn(65, 1, 12, generator=g), w, None)
    assert K.last_backend("decode_linear") == "cublas", "65 rows"
    w8, b8 = torch.randn(8, 12, generator=g), torch.randn(8, generator=g)
    monkeypatch.setattr(_dispatch, "_LOGGED", set())  # logged once per (op, backend): let the second reason log
    with caplog.at_level(logging.WARNING, logger="archzoo.kernels"):
        got = fused.decode_project(x, w8, b8, swiglu=True)
    assert K.last_backend("decode_linear") == "cublas", "a SwiGLU pair with a bias"
    assert_close("swiglu with a bias", got, fused.swiglu_pairs(torch.nn.functional.linear(x, w8, b8)), 1e-6)
    reasons = [r.getMessage() for r in caplog.records if "F.linear runs" in r.getMessage()]
    assert any("65 rows" in m for m in reasons) and any("SwiGLU pair with a bias" in m for m in reasons), reasons


def test_auto_takes_the_gemv_on_cuda_up_to_its_rows(monkeypatch):
    """``DECODE_LINEAR = "auto"`` (the default): the GEMV for steps of at most ``AUTO_MAX_ROWS`` rows on a device of
    ``AUTO_DEVICES`` (CUDA, where it was measured), F.linear on the CPU and above the rows; "kernel" everywhere."""
    assert fused.DECODE_LINEAR == "auto" and fused.AUTO_DEVICES == ("cuda",)
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    n = fused.AUTO_MAX_ROWS
    assert fused.gemv_for(n, cuda) and not fused.gemv_for(n + 1, cuda) and not fused.gemv_for(1, cpu)
    monkeypatch.setattr(fused, "DECODE_LINEAR", "kernel")
    assert fused.gemv_for(64, cpu) and fused.gemv_for(1, cuda)
    monkeypatch.setattr(fused, "DECODE_LINEAR", "cublas")
    assert not fused.gemv_for(1, cuda)


@pytest.mark.parametrize("family", ["mamba", "jamba", "based", "linear", "s4"])
def test_recurrent_step_through_the_decode_gemv(family, monkeypatch):
    """A Mamba layer's decode step on the fused path: in_proj with the block's norm, x_proj, dt_proj and o_proj with
    the residual through ``decode_project`` (the decode GEMV where it runs: its reference form on this CPU), the
    same logits as the plain step (jamba: beside attention layers, which take their own fused copies); a linear
    attention (BASED's Taylor map, or ELU) layer's Q|K|V copy with the norm and O with the residual likewise; S4D's
    o_proj with the residual."""
    import archzoo.kernels as K
    from archzoo.layers.linear_attention import LinearAttention
    from archzoo.layers.mamba import Mamba
    from archzoo.layers.s4 import S4D

    model = f64_model(next(p for p in MODEL_CONFIGS if p.stem == family)).float()
    ids = torch.randint(0, model.cfg.vocab_size, (2, 10), generator=torch.Generator().manual_seed(2))
    caches = [model.new_cache(2, 10, dtype=torch.float32) for _ in range(2)]
    caches[0].fused_weights = True
    model.refresh_fused()
    calls = []
    for m in model.modules():
        if isinstance(m, Mamba):
            real = m._step
            m._step = lambda *a, real=real, **k: (
                calls.append((a[2], a[3] is not None, a[4] is not None)) or real(*a, **k)
            )
        if isinstance(m, (LinearAttention, S4D)):
            real = m.forward
            m.forward = lambda x, st, ctx, norm=None, residual=None, real=real: (
                calls.append((bool(ctx.fused), norm is not None, residual is not None))
                or real(x, st, ctx, norm, residual)
            )
    with torch.no_grad():
        for c in caches:
            model(ids[:, :5], cache=c)
        for t in range(5, 10):
            monkeypatch.setattr(fused, "DECODE_LINEAR", "kernel")
            K._dispatch.record("decode_linear", "none")
            got = model(ids[:, t : t + 1], cache=caches[0])
            assert K.last_backend("decode_linear") not in ("none", "cublas"), K.last_backend("decode_linear")
            monkeypatch.setattr(fused, "DECODE_LINEAR", "cublas")
            ref = model(ids[:, t : t + 1], cache=caches[1])
            # 3e-5: the fused Mamba step reads x_proj and dt_proj folded into one weight (mamba.FOLD_DT), whose
            # fp32 product rounds otherwise than the two projections do
            assert_close(f"{family} step {t}", got, ref, 3e-5)
    assert (True, True, True) in calls, "the fused step hands the norm and the residual to the layer"
    assert (False, False, False) in calls, "the plain step normalises and adds the residual in the block"
