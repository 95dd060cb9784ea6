"""Linear attention's chunk-parallel backward (normalize=False) against the naive reference and the segmented one.

Without a GPU the kernels run on CPU tensors in Triton's interpreter, with 16-wide tiles everywhere, so that the
state chains split into several feature and value tiles and the gradient kernel loops over several value blocks
(the GPU test compiles the default tiles).
The output (the forward is shared: bit for bit the segmented run's) and dq, dk, dv, dS_0, dz_0 are compared by
relative error (RMS of the difference over RMS of the reference), named per tensor, in fp32 and in bf16.
"""

from __future__ import annotations

import logging

import pytest
import torch

from archzoo.kernels._testing import import_triton_kernels, rel_err
from archzoo.kernels.linear_attention import naive_linear_attention

_mods, _skip = import_triton_kernels(
    "archzoo.kernels.linear_attention.triton", "archzoo.kernels.linear_attention.chunk_parallel"
)
pytestmark = pytest.mark.skipif(_skip is not None, reason=_skip or "")
TL, CP = _mods if _mods else (None, None)
DEV = "cuda" if torch.cuda.is_available() else "cpu"
TOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2}


@pytest.fixture(autouse=True)
def _small_tiles(monkeypatch):
    if TL is not None and DEV == "cpu":  # the interpreter; a GPU compiles the real tiles
        monkeypatch.setattr(TL, "MAX_BLOCK_V", 16)
        monkeypatch.setattr(CP, "STATE_BLOCK_F", 16)
        monkeypatch.setattr(CP, "STATE_BLOCK_V", 16)
        monkeypatch.setattr(CP, "GRAD_TILES", {lowp: (16, 4, 1) for lowp in (True, False)})


def _inputs(B, T, H, F, Dv, h0, dtype, seed=0):
    """q, k, v in ``dtype`` (q, k positive as feature maps give; it does not matter without normalisation) and an
    fp32 initial state (S (B, H, F, Dv), z (B, H, F)) or None."""
    g = torch.Generator().manual_seed(seed)
    q = torch.rand(B, T, H, F, generator=g) + 0.05
    k = torch.rand(B, T, H, F, generator=g) + 0.05
    v = torch.randn(B, T, H, Dv, generator=g)
    state = (torch.randn(B, H, F, Dv, generator=g), torch.rand(B, H, F, generator=g)) if h0 else None
    q, k, v = (x.to(DEV, dtype) for x in (q, k, v))
    return q, k, v, None if state is None else tuple(s.to(DEV) for s in state)


def _run(fn, q, k, v, state, final):
    """o and the gradients (q, k, v, S_0, z_0) of a fixed random projection of o and, with ``final``, of the final
    state (so dS_T and dz_T are nonzero). A state part that reaches nothing (z without normalisation and without a
    final state) has a zero gradient, whether autograd leaves it None or the kernel writes zeros."""
    leaves = [x.detach().clone().requires_grad_(True) for x in (q, k, v)]
    st = None if state is None else tuple(s.detach().clone().requires_grad_(True) for s in state)
    o, fin = fn(*leaves, st, final, False, 1e-6)
    g = torch.Generator().manual_seed(1)
    proj = lambda x: (x.float() * torch.randn(x.shape, generator=g).to(x.device)).sum()  # noqa: E731
    loss = proj(o)
    if final:
        loss = loss + proj(fin[0]) + proj(fin[1])
    loss.backward()
    got = {"o": o, "dq": leaves[0].grad, "dk": leaves[1].grad, "dv": leaves[2].grad}
    if st is not None:
        got.update(dS0=st[0].grad, dz0=st[1].grad if st[1].grad is not None else torch.zeros_like(st[1]))
    return got


def _triton(backward, chunk_size):
    def fn(*a):
        old, TL.BACKWARD = TL.BACKWARD, backward
        try:
            out = TL.linear_attention(*a, chunk_size=chunk_size)
        finally:
            TL.BACKWARD = old
        assert TL.last_backward() == backward, f"the forward chose {TL.last_backward()}, not {backward}"
        return out

    return fn


# B, T, H, F, Dv, chunk_size, initial state, output_final_state (and its gradient)
CASES = {
    "T1": (2, 1, 2, 5, 7, 16, True, True),
    "T1_bare": (1, 1, 1, 3, 5, 16, False, False),
    "T65_F16_Dv24": (1, 65, 2, 16, 24, 16, True, True),  # last chunk one position; 2 value tiles
    "T65_no_final": (1, 65, 1, 16, 24, 16, True, False),  # S_0 but no final-state gradient: dz_0 = 0
    "T130_F20_Dv40": (1, 130, 1, 20, 40, 32, True, True),  # 2 feature x 3 value tiles, 5 chunks of 32
    "T130_no_h0": (1, 130, 1, 16, 24, 64, False, True),  # final-state gradient without S_0; chunks of 64
    "T48_multiple": (2, 48, 1, 8, 16, 16, False, False),  # whole chunks, nothing but o's gradient
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_matches_naive_and_segmented(case, dtype):
    """The chunk-parallel backward's gradients against the naive reference (on the same rounded inputs, in fp32)
    and against the segmented backward; its output is the segmented run's exactly (the same forward)."""
    B, T, H, F, Dv, C, h0, final = CASES[case]
    q, k, v, state = _inputs(B, T, H, F, Dv, h0, dtype)
    ref = _run(naive_linear_attention, q.float(), k.float(), v.float(), state, final)
    seg = _run(_triton("segmented", C), q, k, v, state, final)
    got = _run(_triton("chunk_parallel", C), q, k, v, state, final)
    assert got.keys() == ref.keys() == seg.keys()
    assert torch.equal(got["o"], seg["o"]), "o: the forward is the same whichever backward follows"
    tol = TOL[dtype]
    for name in ref:
        assert got[name].shape == ref[name].shape, name
        if name in ("dq", "dk", "dv"):
            assert got[name].dtype == q.dtype, f"{name} keeps the input's dtype"
        if name in ("dS0", "dz0"):
            assert got[name].dtype == state[0].dtype, f"{name} keeps the state's dtype"
        err = rel_err(got[name], ref[name])
        assert err < tol, f"{name}: relative error {err:.2e} against the naive reference >= {tol:.0e}"
        err = rel_err(got[name], seg[name])
        assert err < tol, f"{name}: relative error {err:.2e} against the segmented backward >= {tol:.0e}"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_long_gpu(dtype):
    """Compiled on the GPU (bf16 MMAs reading the states stored in bf16; fp32 as tf32x3) at a layer's shape: many
    chunks, F = Dv = 64, the default tiles, with S_0 and the final state's gradient."""
    q, k, v, state = _inputs(2, 1000, 4, 64, 64, True, dtype)
    ref = _run(naive_linear_attention, q.float(), k.float(), v.float(), state, True)
    got = _run(_triton("chunk_parallel", 64), q, k, v, state, True)
    for name in ref:
        err = rel_err(got[name], ref[name])
        assert err < TOL[dtype], f"{name}: relative error {err:.2e} >= {TOL[dtype]:.0e}"


def test_backward_switch(monkeypatch, caplog):
    """BACKWARD: "segmented" always; "chunk_parallel" for normalize=False (normalize=True keeps the segmented one,
    logged once); "auto" from AUTO_MIN_CHUNKS chunks on, normalize=False only; anything else a ValueError naming
    the choices. The forward's choice is what last_backward() reports."""
    monkeypatch.setattr(TL, "_NOTED", set())
    monkeypatch.setattr(TL, "BACKWARD", "segmented")
    assert TL._choose_backward(False, 10**6) == "segmented"
    monkeypatch.setattr(TL, "BACKWARD", "auto")
    n = TL.AUTO_MIN_CHUNKS
    assert TL._choose_backward(False, n) == "chunk_parallel"
    assert TL._choose_backward(False, n - 1) == "segmented"
    assert TL._choose_backward(True, n) == "segmented"
    monkeypatch.setattr(TL, "BACKWARD", "chunk_parallel")
    assert TL._choose_backward(False, 1) == "chunk_parallel"
    with caplog.at_level(logging.WARNING, logger="archzoo.kernels"):
        assert TL._choose_backward(True, 1) == "segmented"
        assert TL._choose_backward(True, 1) == "segmented"
    notes = [r.getMessage() for r in caplog.records if "chunk_parallel" in r.getMessage()]
    assert len(notes) == 1 and "normalize=False only" in notes[0], notes
    q, k, v, _ = _inputs(1, 5, 1, 3, 4, False, torch.float32)
    TL.linear_attention(q, k, v, normalize=True)
    assert TL.last_backward() == "segmented"
    TL.linear_attention(q, k, v, normalize=False)
    assert TL.last_backward() == "chunk_parallel"
    monkeypatch.setattr(TL, "BACKWARD", "chunkpar")
    with pytest.raises(ValueError, match="expected one of segmented, chunk_parallel, auto"):
        TL.linear_attention(q, k, v, normalize=False)


def test_bench_row_sets_the_switch_for_its_call_only(monkeypatch):
    """``archzoo bench kernels --ops la``'s archzoo_segmented row: BACKWARD is "segmented" during its call
    and as it was after; the choice its forward made is noted for the row (and the plain row's, left as it is)."""
    import archzoo.kernels as K
    from archzoo.bench.kernels import linear

    monkeypatch.setenv("TRITON_INTERPRET", "1")  # the dispatch takes the kernel for CPU tensors
    monkeypatch.setattr(TL, "BACKWARD", "auto")
    monkeypatch.setattr(linear, "_BACKWARD_RAN", {})
    q, k, v, _ = _inputs(1, 5, 1, 3, 4, False, torch.float32)
    seen = []

    def op(*a, normalize):
        seen.append(TL.BACKWARD)
        return K.linear_attention(*a, normalize=normalize)

    linear._with_backward("segmented", op, q, k, v)
    linear._with_backward(None, op, q, k, v)
    assert seen == ["segmented", "auto"] and TL.BACKWARD == "auto"
    assert linear._BACKWARD_RAN == {"archzoo_segmented": "segmented", "archzoo": "chunk_parallel"}
