"""Decode GEMV with fused RMSNorm: the naive reference against the model's RMSNorm + F.linear, the Triton kernel
against the naive reference.

Without a GPU the kernel runs on CPU tensors in Triton's interpreter with tiny tiles (``INTERPRET_CONFIG``: at
most 32 columns a tile, a pretend GPU of 4 SMs), so K and N off the tiles, several K tiles per program, the
halving of BLOCK_N and the split-K pass are all exercised at K, N below 100. Outputs are compared by relative
error (RMS of the difference over RMS of the reference). The kernel repeats RMSNorm's roundings, so in the
interpreter bf16 matches the reference to the bit; the tolerances leave room for a GPU's summation order.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import archzoo.kernels as K
from archzoo.kernels._testing import import_triton_kernels, rel_err
from archzoo.kernels.decode_linear import naive_decode_linear, rms_norm, torch_decode_linear
from archzoo.layers.norm import RMSNorm

from conftest import interpreter_only, requires_cuda

_mods, _skip = import_triton_kernels("archzoo.kernels.decode_linear.triton")
T = _mods[0] if _mods else None
needs_triton = pytest.mark.skipif(_skip is not None, reason=_skip or "")
DEV = "cuda" if torch.cuda.is_available() else "cpu"
TOL = {torch.float32: 1e-6, torch.bfloat16: 2e-3, torch.float16: 2e-3}


def _inputs(M, Kd, N, dtype=torch.float32, norm=True, device="cpu", seed=0, norm_dtype=None):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(M, Kd, generator=g) * 3.0
    w = torch.randn(N, Kd, generator=g) / Kd**0.5
    nw = 0.5 + torch.rand(Kd, generator=g) if norm else None
    nw = nw.to(device, norm_dtype or dtype) if norm else None
    return x.to(device, dtype), w.to(device, dtype), nw


def _assert(name, got, ref, tol):
    assert got.shape == ref.shape, f"{name}: shape {tuple(got.shape)} != {tuple(ref.shape)}"
    assert got.dtype == ref.dtype, f"{name}: dtype {got.dtype} != {ref.dtype}"
    err = rel_err(got.float().cpu(), ref.float().cpu())
    assert err <= tol, f"{name}: relative error {err:.2e} > {tol:.0e}"


def test_naive_is_the_models_rmsnorm_then_linear():
    """rms_norm is RMSNorm.forward to the bit (bf16, and a float64 x normalised in fp32 as the module does);
    the naive GEMV is F.linear of it in float64, rounded to x's dtype."""
    x, w, nw = _inputs(3, 40, 7, torch.bfloat16)
    norm = RMSNorm(40, eps=1e-6).to(torch.bfloat16)
    with torch.no_grad():
        norm.weight.copy_(nw)
        assert torch.equal(rms_norm(x, nw, 1e-6), norm(x)), "rms_norm must round where RMSNorm rounds"
        norm64 = RMSNorm(40, eps=1e-6).double()
        norm64.weight.copy_(nw)
        assert torch.equal(rms_norm(x.double(), nw.double(), 1e-6), norm64(x.double()))
        ref = F.linear(norm(x).double(), w.double())
    _assert("naive", naive_decode_linear(x, w, nw, 1e-6), ref.to(torch.bfloat16), 2e-3)
    _assert("naive, no norm", naive_decode_linear(x, w), F.linear(x.double(), w.double()).bfloat16(), 2e-3)
    x64, w64, nw64 = (t.double() for t in (x, w, nw))
    _assert("naive f64", naive_decode_linear(x64, w64, nw64, 1e-6), F.linear(norm64(x64), w64), 1e-12)
    _assert("torch form", torch_decode_linear(x, w, nw, 1e-6), naive_decode_linear(x, w, nw, 1e-6), 2e-3)


# (K, N): K and N off the tiles, N below one block (5), N over several blocks (70), K over several tiles (100).
CASES = {"k37_n5": (37, 5), "k100_n33": (100, 33), "k37_n70": (37, 70)}


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("norm", [True, False], ids=["norm", "plain"])
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("M", [1, 3, 16, 37, 64])
def test_triton_matches_naive(M, case, norm, dtype):
    """The default plan: M = 1 (2-D GEMV accumulator), 3 (element-wise, rows padded to 4), 16 (tl.dot)."""
    Kd, N = CASES[case]
    x, w, nw = _inputs(M, Kd, N, dtype, norm, DEV)
    got = T.decode_linear(x, w, nw, 1e-5)
    _assert(f"y[M={M}, {case}, norm={norm}, {dtype}]", got, naive_decode_linear(x, w, nw, 1e-5), TOL[dtype])


@needs_triton
@pytest.mark.parametrize("dot", [False, True], ids=["elementwise", "dot"])
@pytest.mark.parametrize("splits", [1, 2, 3])
def test_forced_split_k(splits, dot, monkeypatch):
    """Split K 1, 2, 3 ways (each split normalises its slice with the whole row's rms), on both product paths;
    the result does not depend on the split beyond fp32 round-off, and repeats to the bit. (bf16 with a split
    is in test_triton_matches_naive: the default plan splits K=37, N=5 three ways.)"""
    dtype = torch.float32
    monkeypatch.setitem(T.CONFIG_OVERRIDE, "SPLIT_K", splits)
    monkeypatch.setitem(T.CONFIG_OVERRIDE, "DOT_MIN_M", 1 if dot else 17)
    M, Kd, N = 3, 100, 33
    x, w, nw = _inputs(M, Kd, N, dtype, True, DEV)
    plan = T.launch_plan(M, N, Kd, x.device)
    align = T._config(x.device)["SPLIT_ALIGN"]
    assert plan["n_splits"] == min(splits, -(-Kd // align)) and plan["use_dot"] == dot, plan
    n, chunk = plan["n_splits"], plan["chunk"]
    assert chunk % align == 0 and n * chunk >= Kd > (n - 1) * chunk, plan
    got = T.decode_linear(x, w, nw)
    _assert(f"y[splits={splits}, dot={dot}, {dtype}]", got, naive_decode_linear(x, w, nw), TOL[dtype])
    assert torch.equal(got, T.decode_linear(x, w, nw)), "two calls must agree to the bit"


@needs_triton
def test_strided_inputs():
    """x as a column slice of a wider buffer and as a transposed view; norm_weight as a stepped slice."""
    M, Kd, N = 3, 37, 33
    x, w, nw = _inputs(M, Kd, N, torch.float32, True, DEV)
    wide = torch.zeros(M, 2 * Kd + 3, device=DEV)
    wide[:, 3 : 3 + Kd] = x
    xs = wide[:, 3 : 3 + Kd]  # stride (2K + 3, 1), offset 3
    xt = x.t().contiguous().t()  # stride (1, M)
    nws = torch.zeros(2 * Kd, device=DEV)
    nws[::2] = nw
    ref = naive_decode_linear(x, w, nw)
    _assert("x column slice", T.decode_linear(xs, w, nw), ref, 1e-6)
    _assert("x transposed", T.decode_linear(xt, w, nw), ref, 1e-6)
    _assert("norm_weight stepped", T.decode_linear(x, w, nws[::2]), ref, 1e-6)


@needs_triton
def test_mixed_norm_dtype():
    """fp32 norm weights with bf16 x: the norm's output is fp32 (torch's promotion), the dot takes fp32."""
    x, w, nw = _inputs(16, 37, 33, torch.bfloat16, True, DEV, norm_dtype=torch.float32)
    _assert("y", T.decode_linear(x, w, nw), naive_decode_linear(x, w, nw), 2e-3)


def _plan_on(monkeypatch, sms: int):
    """launch_plan with CUDA_CONFIG on a pretend GPU of ``sms`` SMs (no GPU needed)."""
    monkeypatch.setattr(T, "_sm_count", lambda index: sms)
    dev = torch.device("cuda", 0)
    return lambda M, N, Kd: T.launch_plan(M, N, Kd, dev)


@needs_triton
def test_plan_on_the_teachers_shapes(monkeypatch):
    """CUDA_CONFIG on an H200 (132 SMs) at the teacher's projections: at M = 1 rows of weight alone fill the GPU
    (BLOCK_N halved, no split, one launch); at M = 16 (tl.dot, BLOCK_N >= 16) the narrow ones split K."""
    plan = _plan_on(monkeypatch, 132)
    shapes = {"qkv": (960, 576), "o": (576, 576), "gate_up": (3072, 576), "down": (576, 1536)}
    for name, (N, Kd) in shapes.items():
        p1 = plan(1, N, Kd)
        assert p1["n_splits"] == 1 and p1["n_blocks"] >= 132 and not p1["use_dot"], (name, p1)
        assert p1["BLOCK_N"] * p1["BLOCK_K"] <= T.CUDA_CONFIG["MAX_TILE"], (name, p1)
        p16 = plan(16, N, Kd)
        assert p16["use_dot"] and p16["BLOCK_N"] >= 16 and p16["n_blocks"] * p16["n_splits"] >= 132, (name, p16)
        assert p16["n_splits"] * p16["chunk"] >= Kd > (p16["n_splits"] - 1) * p16["chunk"], (name, p16)
        p64 = plan(64, N, Kd)  # 64 rows: weight blocks of 64 rows, so each program's x serves more weight
        assert p64["use_dot"] and p64["BLOCK_M"] == 64 and p64["BLOCK_N"] == 64, (name, p64)
        assert p64["n_splits"] * p64["chunk"] >= Kd and 64 * p64["BLOCK_K"] <= T.CUDA_CONFIG["MAX_TILE"], (name, p64)
    assert plan(1, 576, 576)["BLOCK_K"] == 1024, "a program's whole K in one tile: its loads issue at once"
    rope = T.launch_plan(64, 960, 576, torch.device("cuda", 0), rope=True)  # never split: 16-row blocks stay
    assert rope["BLOCK_N"] == 16 and rope["n_splits"] == 1, rope


@needs_triton
def test_plan_policy_in_the_interpreter_config(monkeypatch):
    dev = torch.device("cpu")
    monkeypatch.setattr(T, "CONFIG_OVERRIDE", {})
    small = T.launch_plan(1, 5, 37, dev)  # 1 block of 8 < 8 programs: halve to 2, then 3 blocks < 4 SMs: split
    assert small["BLOCK_N"] == 2 and small["n_blocks"] == 3 and small["n_splits"] == 3, small
    wide = T.launch_plan(1, 70, 37, dev)  # 9 blocks of 8 >= 8 programs: as it is, no split
    assert wide["BLOCK_N"] == 8 and wide["n_splits"] == 1, wide
    dot = T.launch_plan(16, 5, 100, dev)
    assert dot["use_dot"] and dot["BLOCK_M"] == 16 and dot["BLOCK_N"] == 16 and dot["n_splits"] == 4, dot


@interpreter_only
@needs_triton
def test_dispatch_and_fallback_reasons(monkeypatch, caplog):
    from archzoo.kernels import _dispatch

    x, w, nw = _inputs(3, 37, 33)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert torch.equal(K.decode_linear(x, w, nw), naive_decode_linear(x, w, nw))
    assert K.last_backend("decode_linear") == "naive"
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    _assert("triton", K.decode_linear(x, w, nw), naive_decode_linear(x, w, nw), 1e-6)
    assert K.last_backend("decode_linear") == "triton"
    for what, (xx, ww, nn), reason in [
        ("M > 64", _inputs(65, 37, 33), "M=65 rows > 64"),
        ("float64", _inputs(3, 37, 33, torch.float64), "float64 inputs"),
    ]:
        monkeypatch.setattr(_dispatch, "_LOGGED", set())
        with caplog.at_level(logging.WARNING, logger="archzoo.kernels"):
            got = K.decode_linear(xx, ww, nn)
        assert K.last_backend("decode_linear") == "torch", what
        assert any(reason in r.getMessage() for r in caplog.records), f"{what}: the reason is logged"
        _assert(what, got, naive_decode_linear(xx, ww, nn), 1e-6)
        caplog.clear()


@interpreter_only
@needs_triton
def test_a_kernel_that_does_not_compile_falls_back(monkeypatch, caplog):
    import triton

    from archzoo.kernels import _dispatch

    def broken(*a, **k):
        raise triton.OutOfResources(300_000, 232_448, "shared memory")

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(T, "_run", broken)
    monkeypatch.setattr(_dispatch, "_FAILED", {})
    monkeypatch.setattr(_dispatch, "_LOGGED", set())
    x, w, nw = _inputs(1, 37, 5)
    with caplog.at_level(logging.WARNING, logger="archzoo.kernels"):
        got = K.decode_linear(x, w, nw)
    assert K.last_backend("decode_linear") == "torch"
    assert any("did not compile" in r.getMessage() for r in caplog.records)
    _assert("y", got, naive_decode_linear(x, w, nw), 1e-6)


def test_traced_through_the_custom_op(monkeypatch):
    """A compiled step keeps the call whole: one graph (fullgraph), each call run by archzoo::decode_linear."""
    from archzoo.kernels import _capture

    x, w, nw = _inputs(2, 37, 33)
    w2 = torch.randn(5, 33)
    calls = []
    inner = _capture._decode_linear
    monkeypatch.setattr(_capture, "_decode_linear", lambda *a: calls.append(a) or inner(*a))

    def step(x, w, nw, w2):
        return K.decode_linear(K.decode_linear(x, w, nw, 1e-6), w2)

    got = torch.compile(step, fullgraph=True, backend="aot_eager")(x, w, nw, w2)
    _assert("y", got, naive_decode_linear(naive_decode_linear(x, w, nw, 1e-6), w2), 1e-6)
    assert len(calls) == 2, "each call goes through the custom op"
    assert calls[0][3] == 1e-6 and calls[1][2] is None


def test_bad_input():
    x, w, nw = _inputs(2, 37, 33)
    bad = [
        (dict(x=x[0]), r"x must be an \(M, K\) tensor, got shape \(37,\)"),
        (dict(x=x[None]), r"x must be an \(M, K\) tensor, got shape \(1, 2, 37\)"),
        (dict(w=w[0]), r"weight must be an \(N, K\) tensor"),
        (dict(w=w[:, :36]), r"weight must have shape \(N, K\) = \(N, 37\) to match x \(2, 37\), got \(33, 36\)"),
        (dict(nw=nw[:36]), r"norm_weight must have shape \(K,\) = \(37,\), got \(36,\)"),
        (dict(x=x.long(), w=w.long()), "x must be float16, bfloat16, float32 or float64, got torch.int64"),
        (dict(w=w.half()), "x and weight must share a dtype"),
        (dict(eps=-1.0), "eps must be a number >= 0"),
        (dict(x=x[:, :0], w=w[:, :0], nw=None), "K and N must be >= 1"),
    ]
    for change, msg in bad:
        a = {**dict(x=x, w=w, nw=nw, eps=1e-5), **change}
        with pytest.raises(ValueError, match=msg):
            K.decode_linear(a["x"], a["w"], a["nw"], a["eps"])


@needs_triton
def test_config_from_the_environment(monkeypatch):
    """ARCHZOO_DECODE_LINEAR_CONFIG (what tools/tune_gemv.py suggests) becomes CONFIG_OVERRIDE at import; a bad one is
    refused with a message naming the variable and what is wrong."""
    gt = T
    assert gt.config_from_env(None) == {} and gt.config_from_env("  ") == {}
    want = dict(BLOCK_N=32, FIXUP=True, M_TILE=None)
    assert gt.config_from_env('{"BLOCK_N": 32, "FIXUP": true, "M_TILE": null}') == want
    for text, msg in [
        ("{BLOCK_N: 32}", "must be a JSON object of decode GEMV settings"),
        ("[32]", "must be a JSON object"),
        ('{"BLOK_N": 32}', r"unknown keys \['BLOK_N'\]"),
        ('{"BLOCK_N": "32"}', "values must be numbers"),
    ]:
        with pytest.raises(ValueError, match=f"ARCHZOO_DECODE_LINEAR_CONFIG.*{msg}|{msg}"):
            gt.config_from_env(text)
    code = "from archzoo.kernels.decode_linear import triton as t; print(t.CONFIG_OVERRIDE)"
    env = {**os.environ, "TRITON_INTERPRET": "1", gt.CONFIG_ENV: '{"BLOCK_N": 32}'}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "{'BLOCK_N': 32}", out.stderr[-2000:]
    env[gt.CONFIG_ENV] = '{"BLOK_N": 32}'
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "ARCHZOO_DECODE_LINEAR_CONFIG: unknown keys ['BLOK_N']" in out.stderr, out.stderr
    # the plans follow it: the same plan as setting CONFIG_OVERRIDE by hand
    monkeypatch.setattr(gt, "CONFIG_OVERRIDE", gt.config_from_env('{"BLOCK_N": 4, "MIN_BLOCK_N": 4}'))
    assert gt.launch_plan(1, 64, 32, torch.device("cpu"))["BLOCK_N"] == 4


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given without a GPU")
def test_bench_gemv_without_a_gpu_says_so(tmp_path, capsys):
    """``archzoo bench kernels --ops gemv`` is GPU-only: the one-line exit-2 message of the other GPU ops."""
    from archzoo.cli import main

    out = tmp_path / "k.json"
    assert main(["bench", "kernels", "--ops", "gemv", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: the kernel benchmark needs a CUDA GPU (") and "\n" not in err, err
    assert not out.exists()


# The teacher's (SmolLM2-135M) four projections of a decode step: (N, K, with the norm before it).
TEACHER = {"qkv": (960, 576, True), "o": (576, 576, False), "gate_up": (3072, 576, True), "down": (576, 1536, False)}


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("M", [1, 16, 64])
@pytest.mark.parametrize("proj", TEACHER)
def test_cuda_teacher_shapes_bf16(proj, M):
    """bf16 at the teacher's projections against the unfused form (RMSNorm, then cuBLAS's F.linear); repeats to
    the bit, and replays the same in a CUDA graph."""
    N, Kd, norm = TEACHER[proj]
    x, w, nw = _inputs(M, Kd, N, torch.bfloat16, norm, "cuda")
    got = K.decode_linear(x, w, nw)
    assert K.last_backend("decode_linear") == "triton"
    _assert(f"{proj} M={M} vs F.linear", got, torch_decode_linear(x, w, nw), 5e-3)
    _assert(f"{proj} M={M} vs naive", got, naive_decode_linear(x, w, nw), 2e-3)
    assert torch.equal(got, K.decode_linear(x, w, nw)), "two calls must agree to the bit"
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out = K.decode_linear(x, w, nw)
    g.replay()
    torch.cuda.synchronize()
    assert torch.equal(out, got), "a CUDA-graph replay must give the eager result"


@pytest.mark.gpu
@requires_cuda
def test_cuda_pdl_chain_matches_plain_launches(monkeypatch):
    """Four layers' chain of decode kernels (Q|K|V-sized GEMV with its norm, decode attention, the output GEMV
    with the residual, the SwiGLU GEMV with its norm, the down GEMV with the residual), launched with
    programmatic dependent launch (archzoo/kernels/_pdl.py), equals the plain launches to the bit, eagerly and
    replayed in a CUDA graph (where the programmatic edges are captured). A kernel that read its input before the
    one before had written it would differ."""
    from archzoo.kernels import _pdl

    rnd, layers = _pdl_chain_layers(4, q_rows=576)
    kc, vc = rnd(1, 3, 1024, 64), rnd(1, 3, 1024, 64)
    lengths = torch.tensor([700], device="cuda")
    x0 = rnd(1, 576)

    def chain(x):
        for p in layers:
            q = K.decode_linear(x, p["wq"], p["n1"])  # (1, 576): nine heads of 64
            o = K.decode_attention(q.view(1, 9, 64), kc, vc, lengths).reshape(1, 576)
            x = K.decode_linear(o, p["wo"], residual=x)
            a = K.decode_linear(x, p["wgu"], p["n2"], swiglu=True)  # (1, 1536)
            x = K.decode_linear(a, p["wd"], residual=x)
        return x

    plain = chain(x0)
    monkeypatch.setattr(_pdl, "ENABLED", True)
    pdl = chain(x0)
    assert K.last_backend("decode_linear") == "triton" and torch.equal(pdl, plain), "PDL changed the result"
    _assert_replays_give(chain, x0, plain, "a replay with PDL edges must give the plain result")


def _pdl_chain_layers(n_layers, q_rows):
    """Skips without PDL (compute capability 9.0, a Triton with gdc_wait); -> (rnd, layers): a bf16 random-tensor
    maker and ``n_layers`` layers of the teacher's projections (Q|K|V of ``q_rows`` rows, O back to d_model 576,
    gate|up 3,072 interleaved, down 1,536 -> 576) with their norms' weights."""
    from archzoo.kernels import _pdl

    if torch.cuda.get_device_capability()[0] < 9 or not _pdl.HAS_PDL:
        pytest.skip("PDL needs compute capability 9.0 and a Triton with gdc_wait")
    g = torch.Generator(device="cuda").manual_seed(0)

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, device="cuda") * scale).to(torch.bfloat16)

    layers = [dict(wq=rnd(q_rows, 576, scale=0.05), wo=rnd(576, q_rows, scale=0.05), wgu=rnd(3072, 576, scale=0.05),
                   wd=rnd(576, 1536, scale=0.05), n1=rnd(576), n2=rnd(576)) for _ in range(n_layers)]  # fmt: skip
    return rnd, layers


def _assert_replays_give(chain, x0, want, message):
    """``chain(x0)`` captured in a CUDA graph and replayed three times gives ``want`` to the bit each time."""
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = chain(x0)
    for _ in range(3):
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(out, want), message


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("M", [8, 16, 64])
def test_cuda_l2_prefetch_matches_plain(M, monkeypatch):
    """The GEMV's L2 prefetch (``CUDA_CONFIG["L2_PREFETCH"]``: with PDL on the tl.dot path each program asks L2 for
    its weight slice before it waits on the kernel before) changes no bit: a chain of the teacher's four
    projections with their epilogues over three layers, plain launches against PDL with the prefetch, eagerly and
    replayed in a CUDA graph."""
    from archzoo.kernels import _pdl
    from archzoo.kernels.decode_linear import triton as gt

    rnd, layers = _pdl_chain_layers(3, q_rows=960)
    x0 = rnd(M, 576)

    def chain(x):
        for p in layers:
            q = K.decode_linear(x, p["wq"], p["n1"])  # (M, 960)
            x = K.decode_linear(q, p["wo"], residual=x)
            a = K.decode_linear(x, p["wgu"], p["n2"], swiglu=True)  # (M, 1536)
            x = K.decode_linear(a, p["wd"], residual=x)
        return x

    plain = chain(x0)
    monkeypatch.setattr(_pdl, "ENABLED", True)
    monkeypatch.setitem(gt.CONFIG_OVERRIDE, "L2_PREFETCH", True)
    got = chain(x0)
    assert K.last_backend("decode_linear") == "triton" and torch.equal(got, plain), "the prefetch changed the result"
    _assert_replays_give(chain, x0, plain, "a replay with the prefetch must give the plain result")


def test_l2_prefetch_is_planned_only_with_pdl_on_the_dot_path(monkeypatch):
    """``L2_PREFETCH`` reaches the kernel only where it can pay and run: launched with PDL (CUDA, compute
    capability 9.0) and on the tl.dot path (M >= DOT_MIN_M); never under the interpreter (no inline PTX there)."""
    from archzoo.kernels.decode_linear import triton as gt

    def planned(M, pdl):
        monkeypatch.setattr(gt, "pdl_enabled", lambda device: pdl)
        x, w = torch.randn(M, 64), torch.randn(48, 64)
        p = gt._plan(x, w, None, 1e-5)
        gt._PLANS.clear()
        names = gt._gemv_kernel.arg_names[-len(p.consts) :]
        return dict(zip(names, p.consts, strict=True))

    monkeypatch.setitem(gt.CONFIG_OVERRIDE, "L2_PREFETCH", True)
    assert planned(16, True)["L2_PREFETCH"] and planned(16, True)["PF_LINE"] == 32  # fp32: 32 elements a line
    assert not planned(3, True)["L2_PREFETCH"], "the element-wise path loads its first tile early instead"
    assert not planned(16, False)["L2_PREFETCH"], "without PDL there is nothing to overlap"
    monkeypatch.setitem(gt.CONFIG_OVERRIDE, "L2_PREFETCH", False)
    assert not planned(16, True)["L2_PREFETCH"]
    assert gt.CUDA_CONFIG["L2_PREFETCH"] is True and gt.INTERPRET_CONFIG["L2_PREFETCH"] is False  # on where timed


@needs_triton
def test_epilogue_plans_on_the_teachers_shapes(monkeypatch):
    """EPILOGUE_PLANS (CUDA_CONFIG): at 8-31 rows on the tl.dot path each epilogue takes its EPILOGUE_PLAN keys (the
    H100 sweep's per-projection winners), nothing else changes: 1 and 64 rows, a projection without an epilogue, and
    {"EPILOGUE_PLANS": false} plan as the flat configuration."""
    monkeypatch.setattr(T, "_sm_count", lambda index: 132)
    dev = torch.device("cuda", 0)
    shapes = {"rope": (960, 576), "residual": (576, 1536), "swiglu": (3072, 576)}
    for epi, (N, Kd) in shapes.items():
        flags = dict(swiglu=epi == "swiglu", rope=epi == "rope", residual=epi == "residual")
        for M in (8, 16, 31):
            p = T.launch_plan(M, N, Kd, dev, **flags)
            want = T.EPILOGUE_PLAN[epi]
            assert p["BLOCK_K"] == want.get("MAX_BLOCK_K", p["BLOCK_K"]) and p["num_warps"] == want.get("num_warps", 4)
            assert p["BLOCK_N"] >= want.get("MIN_BLOCK_N", 1), (epi, M, p)
            monkeypatch.setitem(T.CONFIG_OVERRIDE, "EPILOGUE_PLANS", False)
            if M < 31:  # (at 31 rows x's 32-row tile already caps Q|K|V's BLOCK_K at 256)
                assert T.launch_plan(M, N, Kd, dev, **flags) != p, (epi, M, "the plan should differ from the flat one")
            monkeypatch.delitem(T.CONFIG_OVERRIDE, "EPILOGUE_PLANS")
        for M in (1, 4, 32, 64):
            p = T.launch_plan(M, N, Kd, dev, **flags)
            monkeypatch.setitem(T.CONFIG_OVERRIDE, "EPILOGUE_PLANS", False)
            assert T.launch_plan(M, N, Kd, dev, **flags) == p, (epi, M)
            monkeypatch.delitem(T.CONFIG_OVERRIDE, "EPILOGUE_PLANS")
    assert T.launch_plan(16, 576, 1536, dev) == T.launch_plan(16, 576, 1536, dev, residual=False)


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_epilogue_plans_match_naive(dtype, monkeypatch):
    """The per-epilogue plans (on in the interpreter through CONFIG_OVERRIDE, with the interpreter's small tiles as
    the base) compute what the reference does: residual, SwiGLU, at 8 and 16 rows, K not a multiple of the tile."""
    monkeypatch.setitem(T.CONFIG_OVERRIDE, "EPILOGUE_PLANS", True)
    monkeypatch.setattr(T, "EPILOGUE_PLAN", {"swiglu": dict(BLOCK_N=16, MIN_BLOCK_N=16),
                                             "residual": dict(MAX_BLOCK_K=16, num_warps=2)})  # fmt: skip
    Kd, Fd = 100, 35
    for M in (8, 16):
        x, w, nw = _inputs(M, Kd, 2 * Fd, dtype, True, DEV, seed=M)
        assert T.launch_plan(M, 2 * Fd, Kd, x.device, residual=True)["BLOCK_K"] == 16
        res = torch.randn(M, 2 * Fd, generator=torch.Generator().manual_seed(1)).to(DEV, dtype)
        got = T.decode_linear(x, w, nw, 1e-5, residual=res)
        _assert(f"residual[M={M}]", got, naive_decode_linear(x, w, nw, 1e-5, residual=res), TOL[dtype])
        got = T.decode_linear(x, w, nw, 1e-5, swiglu=True)
        _assert(f"swiglu[M={M}]", got, naive_decode_linear(x, w, nw, 1e-5, swiglu=True), TOL[dtype])


# ---------------------------------------------------------------- epilogues: residual add, SwiGLU (issue 18)


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("splits", [1, 2, 3])
@pytest.mark.parametrize("M", [1, 3, 16, 64])
def test_epilogues_match_naive(M, splits, dtype, monkeypatch):
    """residual + y (one rounding) and silu(g) * u of interleaved (gate, up) rows, odd F = 35, K = 100 split 1, 2,
    3 ways (the reduction kernel applies the epilogue), on the 2-D, element-wise and tl.dot paths. bf16 matches
    the reference to the bit in the interpreter (the SwiGLU repeats the unfused path's roundings)."""
    monkeypatch.setitem(T.CONFIG_OVERRIDE, "SPLIT_K", splits)
    Kd, Fd = 100, 35
    x, w, nw = _inputs(M, Kd, 2 * Fd, dtype, True, DEV, seed=M + splits)
    assert T.launch_plan(M, 2 * Fd, Kd, x.device, swiglu=True)["n_splits"] == splits
    res = (torch.randn(M, 2 * Fd, generator=torch.Generator().manual_seed(1)) * 2).to(DEV, dtype)
    got = T.decode_linear(x, w, nw, 1e-5, residual=res)
    _assert(f"residual[M={M}, splits={splits}]", got, naive_decode_linear(x, w, nw, 1e-5, residual=res), TOL[dtype])
    got = T.decode_linear(x, w, nw, 1e-5, swiglu=True)
    ref = naive_decode_linear(x, w, nw, 1e-5, swiglu=True)
    _assert(f"swiglu[M={M}, splits={splits}]", got, ref, TOL[dtype])
    if dtype == torch.bfloat16 and M <= 16:
        assert torch.equal(got, ref), "bf16 SwiGLU must repeat the unfused roundings"
    elif dtype == torch.bfloat16:  # 64 rows: x's tiles are narrower (BLOCK_K 32 here), so the fp32 sums over K run
        # in another order than the reference's and an output next to a rounding boundary may flip by one ulp
        off = got != ref
        ulp = ref.float().abs().clamp_min(1e-30) * 2**-7
        assert off.float().mean() <= 1e-3 and ((got.float() - ref.float()).abs() <= ulp)[off].all(), (
            "bf16 SwiGLU must repeat the unfused roundings (at most a rare one-ulp flip from the sum's order)"
        )
    # the unfused path: F.linear's gate and up, F.silu(gate) * up, in x's dtype
    h = rms_norm(x, nw, 1e-5)
    unfused = F.silu(naive_decode_linear(h, w[0::2])) * naive_decode_linear(h, w[1::2])
    _assert(f"swiglu vs unfused[M={M}]", got, unfused, TOL[dtype])


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("splits, fixup", [(1, False), (3, False), (3, True)], ids=["1split", "3splits", "fixup"])
@pytest.mark.parametrize("M", [37, 64])
def test_row_tiles_match_naive(M, splits, fixup, dtype, monkeypatch):
    """x's rows in tiles of 16 a program on the tl.dot path (``M_TILE``: 3 and 4 row blocks, the last ragged at 37),
    with the norm, the residual, SwiGLU and a bias, K split 1 or 3 ways (the reduction kernel, or the fixup with a
    counter a row block and column block), against the reference."""
    monkeypatch.setitem(T.CONFIG_OVERRIDE, "M_TILE", 16)
    monkeypatch.setitem(T.CONFIG_OVERRIDE, "SPLIT_K", splits)
    monkeypatch.setitem(T.CONFIG_OVERRIDE, "FIXUP", fixup)
    Kd, Fd = 100, 35
    plan = T.launch_plan(M, 2 * Fd, Kd, torch.device(DEV))
    assert plan["m_blocks"] == -(-M // 16) and plan["BLOCK_M"] == 16 and plan["n_splits"] == splits
    x, w, nw = _inputs(M, Kd, 2 * Fd, dtype, True, DEV, seed=M + splits)
    g = torch.Generator().manual_seed(1)
    res = (torch.randn(M, 2 * Fd, generator=g) * 2).to(DEV, dtype)
    b = torch.randn(2 * Fd, generator=g).to(DEV, dtype)
    tol = TOL[dtype] * (4 if dtype == torch.bfloat16 else 1)  # bf16: a rare one-ulp flip from the sum's order
    got = T.decode_linear(x, w, nw, 1e-5, residual=res, bias=b)
    _assert(f"norm+bias+residual[M={M}]", got, naive_decode_linear(x, w, nw, 1e-5, residual=res, bias=b), tol)
    got = T.decode_linear(x, w, nw, 1e-5, swiglu=True)
    _assert(f"swiglu[M={M}]", got, naive_decode_linear(x, w, nw, 1e-5, swiglu=True), tol)
    assert T.launch_plan(M, 2 * Fd, Kd, torch.device(DEV))["m_blocks"] > 1


@needs_triton
@pytest.mark.parametrize("M", [1, 3, 16, 37])
def test_fixup_gives_the_reduce_kernel_bits(M, monkeypatch):
    """K split 3 ways: the partials summed by each column block's last split program (FIXUP, one launch) or by
    _reduce_kernel (two), with no epilogue, the residual and SwiGLU: the same bits, twice; counters zero after.
    K = 40: splits of 16, 16 and 8 columns, one K tile each (several tiles a split, and K = 100, are in
    test_epilogues_match_naive and test_forced_split_k; the merge does not depend on them)."""
    from archzoo.kernels import _fixup

    monkeypatch.setitem(T.CONFIG_OVERRIDE, "SPLIT_K", 3)
    Kd, Fd = 40, 35
    x, w, nw = _inputs(M, Kd, 2 * Fd, torch.bfloat16, True, DEV, seed=M)
    res = torch.randn(M, 2 * Fd, generator=torch.Generator().manual_seed(1)).to(DEV, torch.bfloat16)
    calls = {
        "plain": lambda: T.decode_linear(x, w, nw, 1e-5),
        "residual": lambda: T.decode_linear(x, w, nw, 1e-5, residual=res),
        "swiglu": lambda: T.decode_linear(x, w, nw, 1e-5, swiglu=True),
    }
    plan = T.launch_plan(M, 2 * Fd, Kd, x.device)
    assert (plan["n_splits"], plan["chunk"]) == (3, 16) and plan["n_blocks"] > 1, plan
    for name, call in calls.items():
        monkeypatch.setitem(T.CONFIG_OVERRIDE, "FIXUP", False)
        two = call()
        monkeypatch.setitem(T.CONFIG_OVERRIDE, "FIXUP", True)
        one, again = call(), call()
        assert torch.equal(one, two), f"{name}: the fixup must give the reduction kernel's bits"
        assert torch.equal(again, one), f"{name}: a second call must give the same bits"
    assert _fixup.COUNTERS[x.device].eq(0).all(), "every counter must be zero again after a call"


@needs_triton
def test_epilogue_residual_strided_and_dispatch():
    """A residual that is a column slice of a wider buffer; the dispatcher and the custom op take both epilogues
    and give the reference's shapes; bad epilogue arguments raise."""
    M, Kd, N = 3, 37, 10
    x, w, nw = _inputs(M, Kd, N, torch.float32, True, DEV)
    wide = torch.randn(M, 2 * N, device=DEV)
    res = wide[:, 3 : 3 + N]
    _assert("strided residual", K.decode_linear(x, w, nw, residual=res),
            naive_decode_linear(x, w, nw, residual=res), 1e-6)  # fmt: skip
    assert K.decode_linear(x, w, nw, swiglu=True).shape == (M, N // 2)
    with pytest.raises(ValueError, match="even N"):
        K.decode_linear(x, w[:9], nw, swiglu=True)
    with pytest.raises(ValueError, match="residual must have shape"):
        K.decode_linear(x, w, nw, residual=res[:, :4])
    with pytest.raises(ValueError, match="cannot be combined"):
        K.decode_linear(x, w, nw, residual=res, swiglu=True)
    with pytest.raises(ValueError, match="x's dtype"):
        K.decode_linear(x, w, nw, residual=res.double())
    # the fallbacks (float64: the PyTorch form) apply the epilogues too
    x64, w64, nw64, r64 = (t.double() for t in (x, w, nw, res))
    _assert("f64 residual", K.decode_linear(x64, w64, nw64, residual=r64),
            naive_decode_linear(x64, w64, nw64, residual=r64), 1e-12)  # fmt: skip
    _assert("f64 swiglu", K.decode_linear(x64, w64, nw64, swiglu=True),
            naive_decode_linear(x64, w64, nw64, swiglu=True), 1e-12)  # fmt: skip


def test_custom_op_fake_shapes():
    """The custom op's fake implementation: (M, N // 2) with swiglu, (M, N) with a residual."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from archzoo.kernels._capture import _decode_linear_op

    with FakeTensorMode():
        x, w, r = torch.empty(2, 8), torch.empty(6, 8), torch.empty(2, 6)
        assert _decode_linear_op(x, w, None, 1e-5, None, True).shape == (2, 3)
        assert _decode_linear_op(x, w, None, 1e-5, r, False).shape == (2, 6)


# ---------------------------------------------------------------- bias (the Mamba layers' in_proj and o_proj)


def test_naive_bias_is_f_linears():
    """The reference with a bias is F.linear(norm(x), w, b) in float64, rounded once; the PyTorch form is F.linear
    with the bias in x's dtype."""
    x, w, nw = _inputs(3, 40, 7, torch.float32)
    b = torch.randn(7, generator=torch.Generator().manual_seed(2))
    ref = F.linear(rms_norm(x, nw, 1e-5).double(), w.double(), b.double()).float()
    _assert("naive bias", naive_decode_linear(x, w, nw, 1e-5, bias=b), ref, 1e-6)
    _assert("torch bias", torch_decode_linear(x, w, nw, 1e-5, bias=b), ref, 1e-6)
    res = torch.randn(3, 7)
    _assert("naive bias + residual", naive_decode_linear(x, w, nw, 1e-5, residual=res, bias=b), ref + res, 1e-6)


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("splits", [1, 3])
@pytest.mark.parametrize("M", [1, 3, 16])
@pytest.mark.parametrize("residual", [False, True], ids=["bias", "bias+residual"])
def test_bias_matches_naive(M, splits, residual, dtype, monkeypatch):
    """bias (and a residual after it) in the epilogue, K = 100 split 1 or 3 ways (the reduction kernel adds it
    then), on the 2-D, element-wise and tl.dot paths; bf16 to the bit in the interpreter up to 16 rows."""
    monkeypatch.setitem(T.CONFIG_OVERRIDE, "SPLIT_K", splits)
    Kd, N = 100, 70
    x, w, nw = _inputs(M, Kd, N, dtype, True, DEV, seed=M + splits)
    g = torch.Generator().manual_seed(3)
    b = torch.randn(N, generator=g).to(DEV, dtype)
    res = (torch.randn(M, N, generator=g) * 2).to(DEV, dtype) if residual else None
    got = T.decode_linear(x, w, nw, 1e-5, residual=res, bias=b)
    ref = naive_decode_linear(x, w, nw, 1e-5, residual=res, bias=b)
    _assert(f"bias[M={M}, splits={splits}, residual={residual}]", got, ref, TOL[dtype])
    if dtype == torch.bfloat16:
        assert torch.equal(got, ref), "bf16 with a bias must round once, as the reference"


@needs_triton
def test_bias_with_the_fixup_and_through_the_dispatcher(monkeypatch):
    """The fixup adds the bias as the reduction kernel does (same bits); the dispatcher and the custom op pass it
    on; bad bias arguments raise, naming the bias."""
    monkeypatch.setitem(T.CONFIG_OVERRIDE, "SPLIT_K", 3)
    x, w, nw = _inputs(3, 40, 70, torch.bfloat16, True, DEV, seed=5)
    b = torch.randn(70, generator=torch.Generator().manual_seed(4)).to(DEV, torch.bfloat16)
    monkeypatch.setitem(T.CONFIG_OVERRIDE, "FIXUP", False)
    two = T.decode_linear(x, w, nw, 1e-5, bias=b)
    monkeypatch.setitem(T.CONFIG_OVERRIDE, "FIXUP", True)
    assert torch.equal(T.decode_linear(x, w, nw, 1e-5, bias=b), two)
    assert torch.equal(K.decode_linear(x, w, nw, 1e-5, None, False, b), two)
    with pytest.raises(ValueError, match="bias must have shape"):
        K.decode_linear(x, w, nw, bias=b[:5])
    with pytest.raises(ValueError, match="bias must be in x's dtype"):
        K.decode_linear(x, w, nw, bias=b.float())
    with pytest.raises(ValueError, match="bias and swiglu cannot be combined"):
        K.decode_linear(x, w, nw, bias=b, swiglu=True)
    x64, w64, nw64, b64 = (t.double() for t in (x, w, nw, b))  # float64: the PyTorch form, with the bias
    _assert("f64 bias", K.decode_linear(x64, w64, nw64, bias=b64), naive_decode_linear(x64, w64, nw64, bias=b64),
            1e-12)  # fmt: skip


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("M", [1, 16])
@pytest.mark.parametrize("shape", [(576, 1152), (576, 576)], ids=["mamba_in_proj", "mamba_o_proj"])
def test_cuda_bias_bf16(shape, M):
    """bf16 at the Mamba students' biased projections (in_proj with the norm, o_proj with the residual): against
    the reference, and the same bits on a second call."""
    Kd, N = shape
    x, w, nw = _inputs(M, Kd, N, torch.bfloat16, True, "cuda", seed=M)
    g = torch.Generator().manual_seed(7)
    b = torch.randn(N, generator=g).to("cuda", torch.bfloat16)
    res = torch.randn(M, N, generator=g).to("cuda", torch.bfloat16)
    got = K.decode_linear(x, w, nw, 1e-5, res, False, b)
    assert K.last_backend("decode_linear") == "triton"
    _assert(f"cuda bias[{shape}, M={M}]", got, naive_decode_linear(x, w, nw, 1e-5, res, False, b), 2e-3)
    assert torch.equal(got, K.decode_linear(x, w, nw, 1e-5, res, False, b))


@needs_triton
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("M", [1, 5, 16, 37])
@pytest.mark.parametrize("Kd", [40, 100])
def test_norm_unroll_gives_the_loops_bits(M, Kd, dtype, monkeypatch):
    """``NORM_UNROLL``: the norm's sum of squares in an unrolled loop over its K tiles gives the loop's bits (the
    same tiles summed in the same order), with no epilogue, a split K with the residual, and SwiGLU; K of two tiles
    with a masked tail (40) and of four (100, 32-column tiles); M on the element-wise path (1, 5) and the tl.dot
    path (16, 37). (One tile stays the loop: test_norm_unroll_plans_only_what_it_may.)"""
    x, w, nw = _inputs(M, Kd, 2 * 35, dtype, True, DEV, seed=M + Kd)
    res = torch.randn(M, 2 * 35, generator=torch.Generator().manual_seed(2)).to(DEV, dtype)
    for name, kw, splits in (
        ("plain", {}, 1),
        ("split+residual", {"residual": res}, 2),
        ("swiglu", {"swiglu": True}, 1),
    ):
        monkeypatch.setitem(T.CONFIG_OVERRIDE, "SPLIT_K", splits)
        monkeypatch.setitem(T.CONFIG_OVERRIDE, "NORM_UNROLL", 0)
        loop = T.decode_linear(x, w, nw, 1e-5, **kw)
        monkeypatch.setitem(T.CONFIG_OVERRIDE, "NORM_UNROLL", 8)
        plan = T.launch_plan(M, 2 * 35, Kd, x.device)
        assert plan["norm_tiles"] == -(-Kd // plan["BLOCK_K"]) > 1, plan  # unrolled: not the loop compared with itself
        got = T.decode_linear(x, w, nw, 1e-5, **kw)
        assert torch.equal(got, loop), f"{name} M={M} K={Kd}: unrolled {rel_err(got, loop):.2e} off the loop"
        _assert(name, got, naive_decode_linear(x, w, nw, 1e-5, **kw), TOL[dtype])


def test_norm_unroll_plans_only_what_it_may(monkeypatch):
    """The plan unrolls the norm where K takes at most NORM_UNROLL tiles (0 otherwise, and without a norm the
    kernel gets 0 whatever the plan says); off in both shipped configurations until a GPU has timed it."""
    from archzoo.kernels.decode_linear import triton as gt

    assert gt.CUDA_CONFIG["NORM_UNROLL"] == 8 and gt.INTERPRET_CONFIG["NORM_UNROLL"] == 0
    monkeypatch.setattr(gt, "CONFIG_OVERRIDE", {"NORM_UNROLL": 3})
    cpu = torch.device("cpu")
    assert gt.launch_plan(16, 48, 96, cpu)["norm_tiles"] == 3  # 32-column tiles
    assert gt.launch_plan(16, 48, 100, cpu)["norm_tiles"] == 0  # four tiles: a loop
    assert gt.launch_plan(16, 48, 16, cpu)["norm_tiles"] == 0  # one tile: one load either way, the loop
    monkeypatch.setattr(gt, "pdl_enabled", lambda device: False)
    x, w = torch.randn(16, 96), torch.randn(48, 96)
    for nw, want in ((None, 0), (torch.ones(96), 3)):
        p = gt._plan(x, w, nw, 1e-5)
        gt._PLANS.clear()
        consts = dict(zip(gt._gemv_kernel.arg_names[-len(p.consts) :], p.consts, strict=True))
        assert consts["NORM_TILES"] == want and consts["HAS_NORM"] == (nw is not None), consts


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("M", [1, 8, 16])
def test_cuda_norm_unroll_matches_the_loop(M, monkeypatch):
    """On the GPU in bf16: the teacher's normed projections (Q|K|V 960 x 576, gate|up 3,072 x 576 with SwiGLU) give
    the same bits with the norm's tiles unrolled as with the loop."""
    from archzoo.kernels.decode_linear import triton as gt

    g = torch.Generator(device="cuda").manual_seed(M)
    x = torch.randn(M, 576, device="cuda", generator=g).bfloat16()
    nw = (0.5 + torch.rand(576, device="cuda", generator=g)).bfloat16()
    for N, swiglu in ((960, False), (3072, True)):
        w = (torch.randn(N, 576, device="cuda", generator=g) / 24).bfloat16()
        monkeypatch.setitem(gt.CONFIG_OVERRIDE, "NORM_UNROLL", 0)
        loop = K.decode_linear(x, w, nw, swiglu=swiglu)
        monkeypatch.setitem(gt.CONFIG_OVERRIDE, "NORM_UNROLL", 8)
        got = K.decode_linear(x, w, nw, swiglu=swiglu)
        assert K.last_backend("decode_linear") == "triton" and torch.equal(got, loop), f"N={N}: bits differ"
