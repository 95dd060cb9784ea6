"""The linear-attention decode step in Triton (``recurrent.py``) against the reference update.

Without a GPU the kernel runs in Triton's interpreter, with 16-wide feature and value tiles so that several
feature tiles (whose partial q . S sums add up) and several value blocks (only block 0 writes z) are
exercised. Compared: the output and the updated state S and z, by relative error, over several steps, with
and without normalisation, fp32 and bf16 inputs (the state stays fp32); strided inputs; dispatch; a traced
step through the custom op; bad shapes.
"""

from __future__ import annotations

import logging

import pytest
import torch

import archzoo.kernels as K
from archzoo.kernels._testing import import_triton_kernels, rel_err
from archzoo.kernels.linear_attention import naive_linear_attention_update

from conftest import interpreter_only, requires_cuda

_mods, _skip = import_triton_kernels("archzoo.kernels.linear_attention.recurrent")
R = _mods[0] if _mods else None
needs_triton = pytest.mark.skipif(_skip is not None, reason=_skip or "")
DEV = "cuda" if torch.cuda.is_available() else "cpu"
TOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 5e-3}


@pytest.fixture(autouse=True)
def _small_tiles(monkeypatch):
    if R is not None and DEV == "cpu":
        monkeypatch.setattr(R, "BLOCK_F", 16)
        monkeypatch.setattr(R, "MAX_BLOCK_V", 16)


def _state(B, H, F, Dv, seed, device=DEV):
    g = torch.Generator().manual_seed(seed)
    S = (torch.rand(B, H, F, Dv, generator=g) - 0.3).to(device)
    z = (torch.rand(B, H, F, generator=g) + 0.5).to(device)
    return S, z


def _step_inputs(B, H, F, Dv, dtype, seed, device=DEV):
    g = torch.Generator().manual_seed(seed)
    q = torch.rand(B, H, F, generator=g) + 0.05
    k = torch.rand(B, H, F, generator=g) + 0.05
    v = torch.randn(B, H, Dv, generator=g)
    return tuple(t.to(device, dtype) for t in (q, k, v))


# B, H, F, Dv: feature dims below, at and across the tile (5, 16, 37; BASED's 1 + 6 + 36 = 43), value dims
# below one block and across two (7, 33), a single row and head.
CASES = {"tiny": (1, 1, 5, 7), "one_tile": (2, 3, 16, 16), "f37_dv33": (2, 2, 37, 33), "based_like": (3, 2, 43, 20)}


@needs_triton
@pytest.mark.parametrize("normalize", [True, False], ids=["normalize", "plain"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("case", CASES)
def test_matches_reference_over_steps(case, dtype, normalize):
    B, H, F, Dv = CASES[case]
    S, z = _state(B, H, F, Dv, 0)
    S_ref, z_ref = S.clone(), z.clone()
    for step in range(3):
        q, k, v = _step_inputs(B, H, F, Dv, dtype, step + 1)
        got = R.linear_attention_update(S, z, q, k, v, normalize, 1e-6)
        ref = naive_linear_attention_update(S_ref, z_ref, q, k, v, normalize, 1e-6)
        assert got.dtype == dtype and got.shape == (B, H, Dv)
        assert rel_err(got.float(), ref.float()) < TOL[dtype], f"o at step {step}"
        assert rel_err(S, S_ref) < 1e-6, f"S at step {step}"
        assert rel_err(z, z_ref) < 1e-6, f"z at step {step}"


@needs_triton
def test_strided_inputs():
    """q, k, v as views of one fused projection (B, H, 2F + Dv), as a layer may hand them over."""
    B, H, F, Dv = 2, 3, 20, 18
    qkv = torch.rand(B, H, 2 * F + Dv, device=DEV) + 0.05
    q, k, v = qkv[..., :F], qkv[..., F : 2 * F], qkv[..., 2 * F :]
    S, z = _state(B, H, F, Dv, 3)
    S_ref, z_ref = S.clone(), z.clone()
    got = R.linear_attention_update(S, z, q, k, v)
    ref = naive_linear_attention_update(S_ref, z_ref, q, k, v)
    assert rel_err(got, ref) < 1e-5 and rel_err(S, S_ref) < 1e-6 and rel_err(z, z_ref) < 1e-6


@needs_triton
@interpreter_only
def test_dispatch(monkeypatch, caplog):
    from archzoo.kernels import _dispatch

    B, H, F, Dv = 1, 2, 6, 5
    q, k, v = _step_inputs(B, H, F, Dv, torch.float32, 0, "cpu")
    S, z = _state(B, H, F, Dv, 0, "cpu")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    K.linear_attention_update(S, z, q, k, v)
    assert K.last_backend("linear_attention_update") == "triton"
    monkeypatch.setattr(_dispatch, "_LOGGED", set())
    with caplog.at_level(logging.WARNING, logger="archzoo.kernels"):
        K.linear_attention_update(S.double(), z.double(), q.double(), k.double(), v.double())
    assert K.last_backend("linear_attention_update") == "naive"
    assert any("fp32 state" in r.getMessage() for r in caplog.records), "the reason for the reference form is logged"


def test_traced_through_the_custom_op():
    """A compiled step keeps the update whole (a custom op mutating S and z): one graph, the state updated."""
    B, H, F, Dv = 2, 2, 6, 5
    q, k, v = _step_inputs(B, H, F, Dv, torch.float32, 0, "cpu")
    S, z = _state(B, H, F, Dv, 0, "cpu")
    S_ref, z_ref = S.clone(), z.clone()
    got = torch.compile(K.linear_attention_update, fullgraph=True, backend="aot_eager")(S, z, q, k, v)
    ref = naive_linear_attention_update(S_ref, z_ref, q, k, v)
    assert rel_err(got, ref) < 1e-6 and rel_err(S, S_ref) < 1e-6 and rel_err(z, z_ref) < 1e-6


def test_bad_input():
    q, k, v = _step_inputs(2, 3, 4, 5, torch.float32, 0, "cpu")
    S, z = _state(2, 3, 4, 5, 0, "cpu")
    bad = [
        (dict(q=q[0]), r"q must be \(B, H, F\)"),
        (dict(k=k[..., :3]), "k must have q's shape"),
        (dict(v=v[:1]), r"v must be \(B, H, Dv\)"),
        (dict(S=S[..., :4]), r"S must be \(B, H, F, Dv\) = \(2, 3, 4, 5\)"),
        (dict(z=z[..., :2]), r"z must be \(B, H, F\) = \(2, 3, 4\)"),
    ]
    for change, msg in bad:
        a = {**dict(S=S, z=z, q=q, k=k, v=v), **change}
        with pytest.raises(ValueError, match=msg):
            K.linear_attention_update(a["S"], a["z"], a["q"], a["k"], a["v"])


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
def test_cuda_based_shape(dtype):
    """BASED's decode shape on the GPU: 273 Taylor features, 64 value dims, batch 64."""
    B, H, F, Dv = 64, 9, 273, 64
    S, z = _state(B, H, F, Dv, 0, "cuda")
    S_ref, z_ref = S.clone(), z.clone()
    q, k, v = _step_inputs(B, H, F, Dv, dtype, 1, "cuda")
    got = R.linear_attention_update(S, z, q, k, v)
    ref = naive_linear_attention_update(S_ref, z_ref, q, k, v)
    assert rel_err(got.float(), ref.float()) < TOL[dtype] and rel_err(S, S_ref) < 1e-6 and rel_err(z, z_ref) < 1e-6


@needs_triton
@interpreter_only
def test_a_kernel_that_does_not_compile_falls_back(monkeypatch, caplog):
    """Should the kernel fail to compile on a device, the reference form runs from then on, the reason logged."""
    import triton

    from archzoo.kernels import _dispatch

    def broken(*a, **k):
        raise triton.OutOfResources(300_000, 232_448, "shared memory")

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(R, "linear_attention_update", broken)
    monkeypatch.setattr(_dispatch, "_FAILED", {})
    q, k, v = _step_inputs(1, 2, 6, 5, torch.float32, 0, "cpu")
    S, z = _state(1, 2, 6, 5, 0, "cpu")
    S_ref, z_ref = S.clone(), z.clone()
    with caplog.at_level(logging.WARNING, logger="archzoo.kernels"):
        got = K.linear_attention_update(S, z, q, k, v)
    assert K.last_backend("linear_attention_update") == "naive"
    assert any("did not compile" in r.getMessage() for r in caplog.records)
    ref = naive_linear_attention_update(S_ref, z_ref, q, k, v)
    assert rel_err(got, ref) < 1e-6 and rel_err(S, S_ref) < 1e-6
