"""Linear attention: the Triton kernel (forward and backward) against the naive step-by-step reference.

Without a GPU the kernel runs on CPU tensors in Triton's interpreter, with value blocks of 16 columns so
that several value blocks (whose partial dq / dk are summed) and several chunks per sequence are exercised.
Output, final state (S, z) and every gradient (q, k, v, initial S and z) are compared by relative error
(RMS of the difference over RMS of the reference), named per tensor, in fp32 and in bf16.
"""

from __future__ import annotations

import importlib
import logging

import pytest
import torch

import archzoo.kernels as K
from archzoo.kernels._testing import import_triton_kernels, rel_err
from archzoo.kernels.linear_attention import naive_linear_attention

from conftest import interpreter_only

_mods, _skip = import_triton_kernels("archzoo.kernels.linear_attention.triton")
pytestmark = pytest.mark.skipif(_skip is not None, reason=_skip or "")
TL = _mods[0] if _mods else None
DEV = "cuda" if torch.cuda.is_available() else "cpu"
TOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 5e-3}


@pytest.fixture(autouse=True)
def _small_value_blocks(monkeypatch):
    if TL is not None:
        monkeypatch.setattr(TL, "MAX_BLOCK_V", 16)


def _inputs(B, T, H, F, Dv, h0, dtype, seed=0):
    """Positive feature-mapped q, k (as elu + 1 or taylor maps give), v, and an initial state that a prefix of
    positive keys would leave (so q z stays away from 0). q, k, v in ``dtype``; the state in fp32."""
    g = torch.Generator().manual_seed(seed)
    q = torch.rand(B, T, H, F, generator=g) + 0.05
    k = torch.rand(B, T, H, F, generator=g) + 0.05
    v = torch.randn(B, T, H, Dv, generator=g)
    state = None
    if h0:
        kp, vp = torch.rand(B, 5, H, F, generator=g), torch.randn(B, 5, H, Dv, generator=g)
        state = (torch.einsum("bthf,bthd->bhfd", kp, vp), kp.sum(1))
    q, k, v = (x.to(DEV, dtype) for x in (q, k, v))
    return q, k, v, None if state is None else tuple(s.to(DEV) for s in state)


def _run(fn, q, k, v, state, final, normalize):
    """Output, final state and the gradients of a fixed random projection of both."""
    leaves = [x.detach().clone().requires_grad_(True) for x in (q, k, v)]
    st = None if state is None else tuple(s.detach().clone().requires_grad_(True) for s in state)
    o, fin = fn(*leaves, st, final, normalize, 1e-6)
    g = torch.Generator().manual_seed(1)
    proj = lambda x: (x.float() * torch.randn(x.shape, generator=g).to(x.device)).sum()  # noqa: E731
    loss = proj(o)
    got = {"o": o}
    if final:
        got.update(S=fin[0], z=fin[1])
        loss = loss + proj(fin[0]) + proj(fin[1])
    loss.backward()
    got.update(dq=leaves[0].grad, dk=leaves[1].grad, dv=leaves[2].grad)
    if st is not None:
        got.update(dS0=st[0].grad, dz0=st[1].grad)
    return got


def _compare(q, k, v, state, final, normalize, chunk_size, tol):
    # The reference runs on the same (rounded) inputs in fp32, so the error measured is the kernel's.
    ref = _run(naive_linear_attention, q.float(), k.float(), v.float(), state, final, normalize)
    got = _run(
        lambda *a: TL.linear_attention(*a, chunk_size=chunk_size), q, k, v, state, final, normalize
    )  # fmt: skip
    assert got.keys() == ref.keys()
    assert got["o"].dtype == q.dtype, "o keeps q's dtype"
    if final:
        assert got["S"].dtype == got["z"].dtype == torch.float32, "the final state is fp32"
    for name in ref:
        assert got[name].shape == ref[name].shape, name
        if name in ("dq", "dk", "dv"):
            assert got[name].dtype == q.dtype, f"{name} keeps the input's dtype"
        err = rel_err(got[name], ref[name])
        assert err < tol, f"{name}: relative error {err:.2e} >= {tol:.0e}"


# B, T, H, F, Dv, chunk_size, normalize, initial state, output_final_state
CASES = {
    "T1": (2, 1, 2, 5, 7, 64, True, True, True),
    "T1_bare": (1, 1, 1, 3, 5, 16, False, False, False),
    "T63": (1, 63, 2, 6, 20, 16, True, True, True),
    "T63_plain": (2, 63, 1, 5, 20, 16, False, False, True),
    "T40_one_chunk": (2, 40, 3, 7, 9, 64, True, False, True),
    "T37_plain_h0": (1, 37, 2, 12, 33, 16, False, True, True),
    "T37_no_final": (1, 37, 2, 12, 33, 16, True, True, False),
    "T32_multiple": (1, 32, 2, 16, 16, 16, True, True, True),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_matches_naive(case, dtype):
    B, T, H, F, Dv, C, normalize, h0, final = CASES[case]
    q, k, v, state = _inputs(B, T, H, F, Dv, h0, dtype)
    _compare(q, k, v, state, final, normalize, C, TOL[dtype])


# 8 of the 16 (segments, normalize, dtype): every cut with both forms and both dtypes, every form in both dtypes
# with two cuts (the cut's start states and end gradients are one code for either form and dtype).
SEGMENT_CASES = [
    (1, True, torch.float32),
    (1, False, torch.bfloat16),
    (2, True, torch.bfloat16),
    (2, False, torch.float32),
    (3, True, torch.float32),
    (3, False, torch.bfloat16),
    (5, True, torch.bfloat16),
    (5, False, torch.float32),
]


@pytest.mark.parametrize(
    "segments, normalize, dtype",
    SEGMENT_CASES,
    ids=[f"{s}-{'norm' if n else 'plain'}-{'fp32' if d == torch.float32 else 'bf16'}" for s, n, d in SEGMENT_CASES],
)
def test_segments(segments, normalize, dtype, monkeypatch):
    """The forward and the backward cut into 1, 2, 3 and 5 segments of whole chunks (T = 75, chunks of 16: the
    last segment short, or holding the short last chunk), with an initial state, the final state and its
    gradient: every output and gradient as the reference, whatever the cut. The segments' start states and end
    gradients come from the other segments' sums (the module docstring). The segmented backward is forced: the
    default takes the chunk-parallel one for normalize=False (test_linear_attention_chunk_parallel.py)."""
    monkeypatch.setattr(TL, "BACKWARD", "segmented")
    monkeypatch.setattr(TL, "SEGMENTS", segments)
    used = []
    real = TL._segments
    monkeypatch.setattr(TL, "_segments", lambda *a: used.append(real(*a)) or used[-1])
    q, k, v, state = _inputs(2, 75, 2, 6, 20, True, dtype, seed=segments)
    _compare(q, k, v, state, True, normalize, 16, TOL[dtype])
    assert used == [segments, segments], "the forward's cut, then the backward's"


def test_segments_plan():
    """The segment count whose grid ends first in waves of PROGRAMS_PER_SM programs a SM, each at least
    MIN_SEGMENT_CHUNKS chunks (one under the interpreter); never more than the chunks; SEGMENTS overrides."""
    cuda = torch.device("cuda", 0)
    import archzoo.kernels._sizes as sizes

    orig = sizes.sm_count
    try:
        sizes.sm_count = lambda index: 132
        # B 4 x H 8 x 2 value blocks at T 16k, 264 slots: 4 segments are one wave of 64 chunks; 5 were 320
        # programs, two waves of 52 chunks (rounding up to fill the SMs, before)
        assert TL._segments(64, 256, cuda) == 4
        assert TL._segments(96, 256, cuda) == 8  # 768 programs, three waves of 32 chunks: 96 (2 segments: 128)
        assert TL._segments(32, 256, cuda) == 8  # 256 programs, one wave of 32 chunks
        assert TL._segments(64, 16, cuda) == 2  # 16 chunks: segments of at least 8
        assert TL._segments(512, 256, cuda) == 1  # the grid already fills the GPU (two waves; 32 segments: 63
        # waves of 8 chunks, 504 chunk-times against 512, within the slack)
    finally:
        sizes.sm_count = orig
    assert TL._segments(2, 3, torch.device("cpu")) == 3  # 4 pretend SMs: 8 / 2 -> 4, capped at 3 chunks


def test_fp16():
    q, k, v, state = _inputs(2, 29, 2, 6, 10, True, torch.float16)
    _compare(q, k, v, state, True, True, 16, TOL[torch.float16])


def test_chunk_size_is_rounding_only():
    """chunk_size 20 runs as 32, 1 as 16: the same result up to rounding."""
    q, k, v, state = _inputs(1, 45, 2, 5, 6, True, torch.float32)
    ref, ref_fin = naive_linear_attention(q, k, v, state, True)
    for c in (1, 20, 200):
        o, fin = TL.linear_attention(q, k, v, state, True, chunk_size=c)
        assert rel_err(o, ref) < 1e-5, f"o (chunk_size={c})"
        assert rel_err(fin[0], ref_fin[0]) < 1e-5, f"S (chunk_size={c})"


def test_chunked_prefill_continues():
    """[0, s) then [s, T) from the returned state equals one call over [0, T)."""
    q, k, v, _ = _inputs(2, 50, 2, 5, 9, False, torch.float32)
    full, (S, z) = TL.linear_attention(q, k, v, None, True, chunk_size=16)
    first, st = TL.linear_attention(q[:, :21], k[:, :21], v[:, :21], None, True, chunk_size=16)
    second, (S2, z2) = TL.linear_attention(q[:, 21:], k[:, 21:], v[:, 21:], st, True, chunk_size=16)
    assert rel_err(torch.cat([first, second], 1), full) < 1e-5, "o"
    assert rel_err(S2, S) < 1e-5, "S"
    assert rel_err(z2, z) < 1e-5, "z"


def test_dispatch(monkeypatch, caplog):
    from archzoo.kernels import _dispatch

    q, k, v, state = _inputs(1, 9, 2, 4, 5, True, torch.float32)
    ref, _ = naive_linear_attention(q, k, v, state)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    if DEV == "cpu":
        assert rel_err(K.linear_attention(q, k, v, state)[0], ref) < 1e-5, "o (chunk)"
        assert K.last_backend("linear_attention") == "chunk"
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert rel_err(K.linear_attention(q, k, v, state)[0], ref) < 1e-5, "o (triton)"
    assert K.last_backend("linear_attention") == "triton"
    monkeypatch.setattr(_dispatch, "_LOGGED", set())
    with caplog.at_level(logging.WARNING, logger="archzoo.kernels"):
        K.linear_attention(q.double(), k.double(), v.double(), state)
        assert K.last_backend("linear_attention") == "chunk"
        K.linear_attention(q, k.double(), v, state)
        assert K.last_backend("linear_attention") == "chunk"
    assert any("float64" in r.getMessage() for r in caplog.records), "the reason for the chunked form is logged"


def test_bad_input():
    q, k, v, state = _inputs(1, 9, 2, 4, 5, True, torch.float32)
    with pytest.raises(ValueError, match="share one dtype"):
        TL.linear_attention(q, k.bfloat16(), v)
    with pytest.raises(ValueError, match="float32, bfloat16 or float16"):
        TL.linear_attention(q.double(), k.double(), v.double())
    with pytest.raises(ValueError, match="initial_state S must be"):
        TL.linear_attention(q, k, v, (state[0][:, :1], state[1]))
    with pytest.raises(ValueError, match="v must be"):
        TL.linear_attention(q, k, v[:, :3])
    with pytest.raises(ValueError, match="chunk_size must be >= 1"):
        TL.linear_attention(q, k, v, chunk_size=0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("normalize", [True, False], ids=["normalize", "plain"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_long_gpu(dtype, normalize):
    """Compiled on the GPU (bf16 / fp16 MMAs, fp32 as tf32x3) at a layer's shape: many chunks, F = Dv = 64."""
    q, k, v, state = _inputs(2, 1000, 4, 64, 64, True, dtype)
    _compare(q, k, v, state, True, normalize, 64, TOL[dtype])


@interpreter_only
def test_wide_feature_maps_take_the_chunked_form(monkeypatch):
    """A feature dim above MAX_FEATURE (BASED's Taylor map: 273) does not fit one tile: chunked form, reason given."""
    LA = importlib.import_module("archzoo.kernels.linear_attention")

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    F = LA.MAX_FEATURE + 1
    q, k, v, state = _inputs(1, 5, 1, F, 4, True, torch.float32)
    ref, _ = naive_linear_attention(q, k, v, state)
    assert rel_err(K.linear_attention(q, k, v, state)[0], ref) < 1e-5
    assert K.last_backend("linear_attention") == "chunk"
    assert "feature dim" in LA._triton_unsupported(q, k, v)
