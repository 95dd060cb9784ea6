"""MLA's absorbed decode attention (``kernels/decode_attention/mla.py``) against the naive reference.

The reference is ``naive_decode_attention`` over the latent as one KV head (key = the whole row, value = its
first R columns). Without a GPU the kernel runs in Triton's interpreter with 16-position tiles, so lengths
and T_max off the tile, several splits and two head blocks (H > 16) are exercised. Positions at or past a
row's length hold NaN, so a read shows.
"""

from __future__ import annotations

import pytest
import torch

import archzoo.kernels as K
from archzoo.kernels._testing import import_triton_kernels, rel_err
from archzoo.kernels.decode_attention import naive_decode_attention

from conftest import interpreter_only, requires_cuda

_mods, _skip = import_triton_kernels("archzoo.kernels.decode_attention.triton", "archzoo.kernels.decode_attention.mla")
T, M = _mods if _mods else (None, None)
needs_triton = pytest.mark.skipif(_skip is not None, reason=_skip or "")
DEV = "cuda" if torch.cuda.is_available() else "cpu"
TOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2}


def _inputs(B, H, Tm, R, DR, lengths, dtype=torch.float32, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, R + DR, generator=g)
    latent = torch.randn(B, Tm, R + DR, generator=g)
    L = torch.tensor(lengths)
    latent = latent.masked_fill((torch.arange(Tm)[None, :] >= L[:, None])[..., None], float("nan"))
    return q.to(device, dtype), latent.to(device, dtype), L.to(device)


def _ref(q, latent, L, R, scale=None):
    q, latent = q.float(), latent.float()
    return naive_decode_attention(q, latent[:, None], latent[:, None, :, :R], L, scale)


# B, H, T_max, R, DR, lengths: ranks off a power of two (48) and tiny (16), a RoPE part under 16 (8) and none
# (0), 9 heads (one block) and 20 (two), rows of length 0, 1 and off the tile.
CASES = {
    "h9_r48_dr8": (3, 9, 37, 48, 8, [37, 1, 20]),
    "h20_r16_dr16": (2, 20, 33, 16, 16, [0, 33]),
    "h4_r32_dr0": (2, 4, 40, 32, 0, [17, 40]),
}


@needs_triton
@pytest.mark.parametrize("splits", [None, 1, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("case", CASES)
def test_matches_reference(case, dtype, splits, monkeypatch):
    if splits is not None:
        monkeypatch.setitem(T.CONFIG_OVERRIDE, "N_SPLITS", splits)
    B, H, Tm, R, DR, lengths = CASES[case]
    q, latent, L = _inputs(B, H, Tm, R, DR, lengths, dtype, DEV)
    got = M.decode_attention_mla(q, latent, L, R, 0.2)
    assert got.dtype == dtype and got.shape == (B, H, R)
    assert torch.isfinite(got).all(), "a position past a row's length was read"
    assert rel_err(got.float().cpu(), _ref(q, latent, L, R, 0.2).cpu()) < TOL[dtype]
    assert got[L == 0].eq(0).all(), "a row of length 0 gives zeros"


@needs_triton
def test_fixup_gives_the_two_launch_bits(monkeypatch):
    """The splits merged by each (row, head block)'s last program (one launch) or by the combine kernel (two):
    the same bits, over two head blocks and a row of length 0; the counters zero after."""
    monkeypatch.setitem(T.CONFIG_OVERRIDE, "N_SPLITS", 3)
    monkeypatch.setitem(T.CONFIG_OVERRIDE, "BLOCK_T", 16)  # tiles small enough for 3 splits on the GPU's config too
    B, H, Tm, R, DR, lengths = CASES["h20_r16_dr16"]
    q, latent, L = _inputs(B, H, Tm, R, DR, lengths, torch.bfloat16, DEV)
    monkeypatch.setitem(T.CONFIG_OVERRIDE, "FIXUP", False)
    two = M.decode_attention_mla(q, latent, L, R)
    monkeypatch.setitem(T.CONFIG_OVERRIDE, "FIXUP", True)
    one, again = M.decode_attention_mla(q, latent, L, R), M.decode_attention_mla(q, latent, L, R)
    assert M._plan(q, latent, R, None)[2], "three splits must take the fixup"
    assert torch.equal(one, two) and torch.equal(again, one)
    assert T._COUNTERS[q.device].eq(0).all()


@needs_triton
@interpreter_only
def test_dispatch_and_trace(monkeypatch):
    q, latent, L = _inputs(2, 9, 20, 16, 8, [20, 5])
    assert rel_err(K.decode_attention_mla(q, latent, L, 16), _ref(q, latent, L, 16)) < 1e-6
    assert K.last_backend("decode_attention_mla") == "naive"
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert rel_err(K.decode_attention_mla(q, latent, L, 16), _ref(q, latent, L, 16)) < 1e-5
    assert K.last_backend("decode_attention_mla") == "triton"
    monkeypatch.delenv("TRITON_INTERPRET")
    got = torch.compile(K.decode_attention_mla, fullgraph=True, backend="aot_eager")(q, latent, L, 16)
    assert rel_err(got, _ref(q, latent, L, 16)) < 1e-6


def test_bad_input():
    q, latent, L = _inputs(2, 9, 20, 16, 8, [20, 5])
    with pytest.raises(ValueError, match=r"latent must be a \(B, T_max, R \+ DR\)"):
        K.decode_attention_mla(q, latent[:, None], L, 16)
    with pytest.raises(ValueError, match="rank must be an int"):
        K.decode_attention_mla(q, latent, L, 0)
    with pytest.raises(ValueError, match="latent must have shape"):
        K.decode_attention_mla(q[..., :20], latent, L, 16)


@requires_cuda
def test_cuda_rank_256():
    """MLA-r256's decode shape on the GPU: rank 256 + RoPE 32, 9 heads, rows of different lengths in 8k."""
    lengths = [4096, 1, 8191, 0, 3000, 77]
    q, latent, L = _inputs(6, 9, 8192, 256, 32, lengths, torch.bfloat16, "cuda")
    got = M.decode_attention_mla(q, latent, L, 256)
    assert rel_err(got.float(), _ref(q, latent, L, 256)) < 2e-2


@needs_triton
@interpreter_only
def test_a_kernel_that_does_not_compile_falls_back(monkeypatch):
    """Should the MLA kernel fail to compile on a device, decode_attention over the latent as MQA runs."""
    import triton

    from archzoo.kernels import _dispatch

    def broken(*a, **kw):
        raise triton.OutOfResources(300_000, 232_448, "shared memory")

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(M, "decode_attention_mla", broken)
    monkeypatch.setattr(_dispatch, "_FAILED", {})
    q, latent, L = _inputs(2, 9, 20, 16, 8, [20, 5])
    got = K.decode_attention_mla(q, latent, L, 16)
    assert K.last_backend("decode_attention_mla") == "triton-mqa"
    assert rel_err(got, _ref(q, latent, L, 16)) < 1e-5
