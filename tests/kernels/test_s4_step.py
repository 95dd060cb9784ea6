"""The S4D decode step in one kernel (``s4d_decode_step``: RMSNorm, the diagonal update, D and GELU) against its
reference (the layer's own ops, ``naive.py``) over consecutive steps with the state carried, on awkward shapes
(batch 1, channels off the block, one mode, odd modes, real and complex spectra, with and without the norm, a norm
weight wider than x); bad input; the custom op under ``torch.compile``; and the S4D student with ``FUSED_STEP`` on and
off: the same greedy tokens, its compiled step traced once. Without a GPU the kernel runs in Triton's interpreter on
CPU tensors.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

import archzoo
import archzoo.kernels as K
from archzoo.kernels._testing import import_triton_kernels, rel_err
from archzoo.kernels.s4_step import naive_s4d_decode_step
from archzoo.layers import s4 as s4_mod

from conftest import compiled_steps, generates_alike, interpreter_only, recording_backend, requires_cuda

_mods, _skip = import_triton_kernels("archzoo.kernels.s4_step.triton")
pytestmark = pytest.mark.skipif(_skip is not None, reason=_skip or "")
DEV = "cuda" if torch.cuda.is_available() else "cpu"
CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "models"
TOL = {torch.float32: 1e-6, torch.bfloat16: 1e-2, torch.float16: 2e-3}


@pytest.fixture(autouse=True)
def _interpret(monkeypatch):
    """CPU tensors take the kernel only under the interpreter (the dispatcher reads the variable each call)."""
    if DEV == "cpu":
        monkeypatch.setenv("TRITON_INTERPRET", "1")


def _inputs(B, H, M, cplx, norm, dtype, norm_dtype=None, seed=0, device=DEV):
    """One layer's operands as ``S4D`` passes them: x in the model's dtype, the spectrum, D and the state in fp32."""
    g = torch.Generator().manual_seed(seed)
    shape = (H, M, 2) if cplx else (H, M)
    mag = 0.5 + 0.45 * torch.rand(H, M, generator=g)  # |dA| < 1, as a stable discretisation gives
    if cplx:
        ang = torch.rand(H, M, generator=g) * 6.28
        dA = torch.stack([mag * torch.cos(ang), mag * torch.sin(ang)], -1)
    else:
        dA = mag
    t = dict(
        x=torch.randn(B, H, generator=g) * 3,
        norm_weight=0.5 + torch.rand(H, generator=g) if norm else None,
        state=torch.randn(B, H, M * (2 if cplx else 1), generator=g),
        dA=dA,
        dB=torch.randn(*shape, generator=g) * 0.3,
        C=torch.randn(*shape, generator=g) * 0.3,
        D=torch.randn(H, generator=g),
    )
    dts = {"x": dtype, "norm_weight": norm_dtype or dtype}
    return {k: None if v is None else v.to(device, dts.get(k, torch.float32)) for k, v in t.items()}


def _call(fn, t, x=None):
    return fn(t["x"] if x is None else x, t["norm_weight"], 1e-5, t["state"], t["dA"], t["dB"], t["C"], t["D"])


def _check(name, got, ref, tol):
    assert got.shape == ref.shape and got.dtype == ref.dtype, (
        f"{name}: {got.shape} {got.dtype} != {ref.shape} {ref.dtype}"
    )
    err = rel_err(got.float().cpu(), ref.float().cpu())
    assert err <= tol, f"{name}: relative error {err:.2e} > {tol:.0e}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize(
    ("B", "H", "M", "cplx", "norm"),
    [(1, 37, 5, True, True), (3, 16, 1, True, False), (2, 9, 7, False, True), (4, 40, 4, False, False)],
)
def test_kernel_matches_reference_over_steps(B, H, M, cplx, norm, dtype):
    """Three consecutive steps, the state carried: y and the state against the reference's."""
    t = _inputs(B, H, M, cplx, norm, dtype)
    ref = {k: v.clone() if v is not None else None for k, v in t.items()}
    for step in range(3):
        x = torch.randn(B, H, generator=torch.Generator().manual_seed(10 + step)).to(DEV, dtype) * 3
        got = _call(K.s4d_decode_step, t, x)
        assert K.last_backend("s4d_decode_step") == "triton"
        want = _call(naive_s4d_decode_step, ref, x)
        _check(f"step {step} y", got, want, TOL[dtype])
        _check(f"step {step} state", t["state"], ref["state"], 1e-6)


def test_norm_weight_wider_than_x_and_strided_x():
    """A bf16 x with an fp32 norm weight gives fp32 y (RMSNorm's promotion); x a column slice of a wider buffer."""
    t = _inputs(2, 24, 3, True, True, torch.bfloat16, norm_dtype=torch.float32)
    wide = torch.randn(2, 40, generator=torch.Generator().manual_seed(3)).to(DEV, torch.bfloat16)
    x = wide[:, 8:32]
    ref = {k: v.clone() if v is not None else None for k, v in t.items()}
    got = _call(K.s4d_decode_step, t, x)
    assert got.dtype == torch.float32
    _check("y", got, _call(naive_s4d_decode_step, ref, x), 1e-5)
    _check("state", t["state"], ref["state"], 1e-6)


@pytest.mark.parametrize("why", ["cpu", "float64"])
def test_the_reference_where_the_kernel_does_not_run(why, monkeypatch, caplog):
    """CPU tensors without TRITON_INTERPRET (nothing to warn about) and fp64 inputs (the kernel computes in fp32):
    the reference, its values and state."""
    if why == "cpu":
        monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    t = _inputs(2, 8, 2, True, True, torch.float32, device="cpu" if why == "cpu" else DEV)
    if why == "float64":
        t = {k: v.double() if v is not None else None for k, v in t.items()}
    ref = {k: v.clone() if v is not None else None for k, v in t.items()}
    with caplog.at_level(logging.WARNING, logger="archzoo.kernels"):
        got = _call(K.s4d_decode_step, t)
    assert K.last_backend("s4d_decode_step") == "naive"
    assert torch.equal(got, _call(naive_s4d_decode_step, ref)) and torch.equal(t["state"], ref["state"])
    if why == "cpu":
        assert not caplog.records, [r.getMessage() for r in caplog.records]


def test_bad_input():
    t = _inputs(2, 8, 3, True, True, torch.float32)
    bad = [
        ("x must be", dict(x=t["x"][None])),
        ("dB must have dA's shape", dict(dB=t["dB"][:, :2])),
        ("state must be", dict(state=t["state"][:, :, :4])),
        ("D must be", dict(D=t["D"][:4])),
        ("norm_weight must be", dict(norm_weight=t["norm_weight"][:4])),
        ("dA must be", dict(dA=t["dA"][..., :1], dB=t["dB"][..., :1], C=t["C"][..., :1])),
    ]
    for match, change in bad:
        with pytest.raises(ValueError, match=match):
            _call(K.s4d_decode_step, {**t, **change})


def test_traced_by_torch_compile():
    """The custom op inside ``torch.compile(fullgraph=True)``: one op in the graph, the eager call's result and
    state."""
    t = _inputs(2, 12, 3, True, True, torch.float32)
    ref = {k: v.clone() if v is not None else None for k, v in t.items()}
    graphs: list[list[str]] = []
    fn = torch.compile(lambda x: _call(K.s4d_decode_step, t, x), backend=recording_backend(graphs), fullgraph=True)
    got = fn(t["x"])
    want = _call(K.s4d_decode_step, ref)
    assert torch.equal(got, want) and torch.equal(t["state"], ref["state"])
    assert len(graphs) == 1 and sum("s4d_decode_step" in op for op in graphs[0]) == 1, graphs


def _s4_model():
    cfg = archzoo.load_config(CONFIGS / "s4.yaml").to_dict()
    cfg.update(n_layers=3, d_model=24, vocab_size=64, init_std=0.2)
    cfg["mixer"].update(d_state=8, dt_min=0.05, dt_max=0.5)
    torch.manual_seed(0)
    return archzoo.build_model(cfg).float().eval()


@interpreter_only
def test_model_generates_the_same_tokens_fused_or_not(monkeypatch):
    """Greedy generation (its decode steps on the fused path) gives the same tokens with ``FUSED_STEP`` on (the
    kernel ran) and off (the compiled ops)."""
    prompts = torch.randint(0, 64, (2, 5), generator=torch.Generator().manual_seed(0))
    generates_alike(_s4_model(), prompts, monkeypatch, s4_mod, "FUSED_STEP", "s4d_decode_step")


@interpreter_only
def test_compiled_step_traces_once_with_the_fused_op(monkeypatch):
    """``torch.compile(step, fullgraph=True)`` traces the fused step once over consecutive steps (the custom op in
    the graph), with the eager step's logits and states; flipping ``FUSED_STEP`` retraces to the layer's ops."""
    torch._dynamo.reset()
    model = _s4_model()
    model.refresh_fused()
    ids = torch.randint(0, 64, (2, 9), generator=torch.Generator().manual_seed(1))
    cache = model.new_cache(2, 9, dtype=torch.float32)
    cache.fused_weights = True
    graphs: list[list[str]] = []

    def switch(i):  # the last step with the switch off
        monkeypatch.setattr(s4_mod, "FUSED_STEP", i < 8)

    for i, got, ref, ref_cache in compiled_steps(model, ids, cache, 5, recording_backend(graphs), switch):
        _check(f"step {i} logits", got, ref, 1e-5)
        _check(f"step {i} state", cache.layers[1]["ssm"], ref_cache.layers[1]["ssm"], 1e-5)
    torch._dynamo.reset()
    assert len(graphs) == 2, f"{len(graphs)} graphs: one over the 3 fused steps, one after the flip"
    fused, plain = graphs
    n_s4 = sum(isinstance(m, s4_mod.S4D) for m in model.modules())
    assert n_s4 > 1 and sum("s4d_decode_step" in op for op in fused) == n_s4, [op for op in fused if "s4d" in op]
    assert not [op for op in plain if "s4d_decode_step" in op], plain


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("B", [1, 16, 64])
def test_cuda_teacher_shape_bf16(B):
    """On the GPU in bf16 at the S4D student's shape (576 channels, 32 complex modes): y and the state against the
    reference over three steps."""
    t = _inputs(B, 576, 32, True, True, torch.bfloat16, device="cuda")
    ref = {k: v.clone() if v is not None else None for k, v in t.items()}
    for step in range(3):
        x = (torch.randn(B, 576, device="cuda") * 3).bfloat16()
        got = _call(K.s4d_decode_step, t, x)
        assert K.last_backend("s4d_decode_step") == "triton"
        _check(f"step {step} y", got, _call(naive_s4d_decode_step, ref, x), 1e-2)
        # 1e-3: a normed input that rounds to the other bf16 neighbour (rsqrt's last bits differ) moves its modes by
        # 2^-9; at batch 16 one such element gave 9.7e-5 on an H100 (the fp32 interpreter cases hold 1e-6)
        _check(f"step {step} state", t["state"], ref["state"], 1e-3)
