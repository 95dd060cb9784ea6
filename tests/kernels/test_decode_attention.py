"""Decode attention: the naive reference against SDPA, the Triton kernels against the naive reference.

Without a GPU the Triton kernels run on CPU tensors in Triton's interpreter (small shapes; 16-position
tiles, so lengths and T_max that are not multiples of a tile are exercised, and the split count is forced
to 1 and to several). Every position a row may not see holds NaN, so reading one shows in the output.
Outputs are compared by relative error (RMS of the difference over RMS of the reference).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import archzoo.kernels as K
from archzoo.kernels._testing import import_triton_kernels, rel_err
from archzoo.kernels.decode_attention import naive_decode_attention, naive_decode_attention_ring
from archzoo.layers.attention import ring_slot_positions

from conftest import requires_cuda

_mods, _skip = import_triton_kernels("archzoo.kernels.decode_attention.triton")
T = _mods[0] if _mods else None
needs_triton = pytest.mark.skipif(_skip is not None, reason=_skip or "")
DEV = "cuda" if torch.cuda.is_available() else "cpu"
TOL = {torch.float32: 1e-5, torch.float16: 5e-3, torch.bfloat16: 2e-2}


def _inputs(B, H, Hkv, Tm, D, Dv, lengths, dtype=torch.float32, device="cpu", seed=0):
    """q, k, v with NaN at every position >= lengths[b] (a ring passes its own garbage)."""
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, D, generator=gen)
    k = torch.randn(B, Hkv, Tm, D, generator=gen)
    v = torch.randn(B, Hkv, Tm, Dv, generator=gen)
    lengths = torch.tensor(lengths)
    beyond = torch.arange(Tm)[None, :] >= lengths[:, None]  # (B, T)
    k = k.masked_fill(beyond[:, None, :, None], float("nan"))
    v = v.masked_fill(beyond[:, None, :, None], float("nan"))
    return *(t.to(device, dtype) for t in (q, k, v)), lengths.to(device)


def _sdpa(q, k, v, visible, scale=None):
    """Row by row: SDPA over the visible positions only (sliced out, so garbage is never touched)."""
    B, H, _ = q.shape
    G = H // k.shape[1]
    out = torch.zeros(B, H, v.shape[3], dtype=torch.float64)
    for b in range(B):
        idx = visible[b].nonzero().flatten().cpu()
        if idx.numel() == 0:
            continue
        kb = k[b][:, idx].double().repeat_interleave(G, dim=0)  # (H, n, D)
        vb = v[b][:, idx].double().repeat_interleave(G, dim=0)
        out[b] = F.scaled_dot_product_attention(q[b].double()[:, None], kb, vb, scale=scale)[:, 0]
    return out


def _visible(lengths, Tm):
    return torch.arange(Tm)[None, :] < lengths.cpu()[:, None]


def _ring_visible(lengths, slots, window):
    """From the attention layer's own ring layout (``ring_slot_positions``)."""
    last = lengths.cpu().long() - 1
    pos = ring_slot_positions(last, slots)  # (B, slots), -1 where empty
    return (pos >= 0) & (pos > last[:, None] - window)


def _assert(name, got, ref, tol):
    assert got.shape == ref.shape, f"{name}: shape {tuple(got.shape)} != {tuple(ref.shape)}"
    assert torch.isfinite(got).all(), f"{name}: non-finite output (a masked position was read)"
    err = rel_err(got.cpu(), ref.cpu())
    assert err <= tol, f"{name}: relative error {err:.2e} > {tol:.0e}"


# (B, H, Hkv, T_max, D, Dv, lengths): rows of different lengths, a length of 1 and of 0, lengths and
# T_max that are not multiples of the 16-position tile, GQA groups of 1, 3 and 9, head dims 64 and 80.
CASES = {
    "g3_d64": (4, 6, 2, 45, 64, 64, [45, 1, 17, 0]),
    "g1_d80": (2, 3, 3, 37, 80, 80, [37, 16]),
    "g9_d64": (2, 9, 1, 40, 64, 64, [1, 39]),
    "g3_d80_dv64": (3, 9, 3, 33, 80, 64, [32, 0, 7]),
    "mla_d288_dv256": (2, 9, 1, 20, 288, 256, [20, 5]),  # MLA absorbed at rank 256: latent + RoPE key
}


@pytest.mark.parametrize("case", CASES)
def test_naive_matches_sdpa(case):
    B, H, Hkv, Tm, D, Dv, lengths = CASES[case]
    q, k, v, L = _inputs(B, H, Hkv, Tm, D, Dv, lengths)
    _assert("out", naive_decode_attention(q, k, v, L, 0.3), _sdpa(q, k, v, _visible(L, Tm), 0.3), 1e-6)
    out = naive_decode_attention(q, k, v, L)
    _assert("out (default scale)", out, _sdpa(q, k, v, _visible(L, Tm)), 1e-6)
    assert out[L == 0].eq(0).all(), "a row of length 0 must give zeros"


@needs_triton
@pytest.mark.parametrize("splits", [None, 1, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("case", CASES)
def test_triton_matches_naive(case, dtype, splits, monkeypatch):
    if splits is not None:
        monkeypatch.setitem(T.CONFIG_OVERRIDE, "N_SPLITS", splits)
    B, H, Hkv, Tm, D, Dv, lengths = CASES[case]
    q, k, v, L = _inputs(B, H, Hkv, Tm, D, Dv, lengths, dtype, DEV)
    got = T.decode_attention(q, k, v, L)
    assert got.dtype == dtype
    ref = naive_decode_attention(*(t.float() for t in (q, k, v)), L)  # bf16 inputs, fp32 arithmetic
    _assert(f"out[{dtype}, splits={splits}]", got.float(), ref, TOL[dtype])
    assert got[L == 0].eq(0).all(), "a row of length 0 must give zeros"
    n, _, block_t = T.split_plan(B, Hkv, Tm, q.device)
    assert n == min(splits or n, -(-Tm // block_t)), "a forced split count is capped at one split per tile"


@needs_triton
def test_triton_fp16_and_strided():
    """fp16, and K/V as a (B, T, H_kv, D) buffer viewed as (B, H_kv, T, D): strides, not copies."""
    B, H, Hkv, Tm, D = 2, 4, 2, 21, 32
    q, k, v, L = _inputs(B, H, Hkv, Tm, D, D, [21, 5], torch.float16, DEV)
    k, v = k.transpose(1, 2).contiguous().transpose(1, 2), v.transpose(1, 2).contiguous().transpose(1, 2)
    _assert("out", T.decode_attention(q, k, v, L, 0.2).float(), naive_decode_attention(q, k, v, L, 0.2).float(), 5e-3)


# (B, H, Hkv, slots, D, window, lengths): empty slots, a full ring, several wraps, window <, = and > slots.
RING_CASES = {
    "window_lt_slots": (3, 6, 2, 40, 64, 7, [100, 3, 20]),
    "window_eq_slots": (3, 3, 1, 24, 80, 24, [24, 1, 61]),
    "window_gt_slots": (2, 9, 3, 20, 64, 50, [45, 19]),
}


def _ring_inputs(case, dtype, seed=0):
    B, H, Hkv, slots, D, window, lengths = RING_CASES[case]
    q, k, v, L = _inputs(B, H, Hkv, slots, D, D, [slots] * B, dtype, DEV, seed)
    L = torch.tensor(lengths, device=DEV)
    hidden = ~_ring_visible(L, slots, window)[:, None, :, None].to(DEV)
    k, v = k.masked_fill(hidden, float("nan")), v.masked_fill(hidden, float("nan"))  # empty or outside the window
    return q, k, v, L, window


@pytest.mark.parametrize("case", RING_CASES)
def test_naive_ring_matches_ring_layout(case):
    q, k, v, L, window = _ring_inputs(case, torch.float32)
    ref = _sdpa(q, k, v, _ring_visible(L, k.shape[2], window))
    _assert("out", naive_decode_attention_ring(q, k, v, L, window), ref, 1e-6)


@needs_triton
@pytest.mark.parametrize("splits", [None, 2, "single"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("case", RING_CASES)
def test_triton_ring_matches_naive(case, dtype, splits, monkeypatch):
    """ "single": the ring in one tile of next_pow2(slots) (SINGLE_MAX_T), no merge."""
    if splits == "single":
        monkeypatch.setitem(T.CONFIG_OVERRIDE, "SINGLE_MAX_T", 64)
    elif splits is not None:
        monkeypatch.setitem(T.CONFIG_OVERRIDE, "N_SPLITS", splits)
    q, k, v, L, window = _ring_inputs(case, dtype)
    got = T.decode_attention_ring(q, k, v, L, window)
    ref = naive_decode_attention_ring(*(t.float() for t in (q, k, v)), L, window)
    _assert(f"out[{dtype}, splits={splits}]", got.float(), ref, TOL[dtype])


@needs_triton
@pytest.mark.parametrize("ring", [False, True], ids=["global", "ring"])
def test_fixup_gives_the_two_launch_bits(ring, monkeypatch):
    """The merge done by each group's last split program (FIXUP, one launch) equals the combine kernel's (two),
    bit for bit, over rows of several lengths (0 included); it leaves the arrival counters zero, so a second call
    (a captured step's next replay) is the same again."""
    monkeypatch.setitem(T.CONFIG_OVERRIDE, "N_SPLITS", 3)
    monkeypatch.setitem(T.CONFIG_OVERRIDE, "BLOCK_T", 16)  # tiles small enough for 3 splits on the GPU's config too
    if ring:
        q, k, v, L, window = _ring_inputs("window_lt_slots", torch.bfloat16)
        call = lambda: T.decode_attention_ring(q, k, v, L, window)  # noqa: E731
    else:
        B, H, Hkv, Tm, D, Dv, lengths = CASES["g3_d64"]
        q, k, v, L = _inputs(B, H, Hkv, Tm, D, Dv, lengths, torch.bfloat16, DEV)
        call = lambda: T.decode_attention(q, k, v, L)  # noqa: E731
    monkeypatch.setitem(T.CONFIG_OVERRIDE, "FIXUP", False)
    two = call()
    monkeypatch.setitem(T.CONFIG_OVERRIDE, "FIXUP", True)
    one, again = call(), call()
    assert T._plan(q, k, v, None, ring).fixup, "the split count forced to 3 must take the fixup"
    assert torch.equal(one, two), "the fixup's merge must give the combine kernel's bits"
    assert torch.equal(again, one), "a second call must give the same bits"
    assert T._COUNTERS[q.device].eq(0).all(), "every counter must be zero again after a call"


@needs_triton
def test_split_plan_depends_on_shape_only():
    dev = torch.device(DEV)
    for B, Hkv, Tm in [(1, 1, 1), (1, 3, 45), (4, 2, 16), (64, 3, 8192), (1, 3, 8192)]:
        n, chunk, block = T.split_plan(B, Hkv, Tm, dev)
        assert chunk % block == 0 and n * chunk >= Tm > (n - 1) * chunk, (B, Hkv, Tm, n, chunk)
    assert T.split_plan(1, 1, 8192, dev)[0] > 1, "a long cache at batch 1 must be split"
    wide = T.split_plan(1, 1, 8192, dev, 288)[2]
    assert wide == min(T._config(dev)["BLOCK_T"], T.WIDE_BLOCK_T), "head dims above 256 take narrower tiles"


@needs_triton
def test_min_split_tiles_takes_fewer_longer_splits(monkeypatch):
    """MIN_SPLIT_TILES: at least that many tiles a split, so a short cache at batch 1 takes one split (no merge) and
    a long one keeps several; the output is the reference's either way (interpreter: 16-position tiles)."""
    dev = torch.device(DEV)
    block = T._config(dev)["BLOCK_T"]
    assert T.split_plan(1, 1, 4 * block, dev)[0] == 4  # one tile a split: programs are few at batch 1
    monkeypatch.setitem(T.CONFIG_OVERRIDE, "MIN_SPLIT_TILES", 4)
    assert T.split_plan(1, 1, 4 * block, dev)[0] == 1
    n, chunk, _ = T.split_plan(1, 1, 16 * block, dev)
    assert (n, chunk) == (4, 4 * block)
    q, k, v, L = _inputs(2, 9, 3, 4 * block, 32, 32, [4 * block, 5])
    _assert("one split", T.decode_attention(q, k, v, L), naive_decode_attention(q, k, v, L), 1e-5)


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("case", ["g3_d64", "g1_d80", "g9_d64", "g3_d80_dv64"])
def test_single_tile_for_short_caches(case, dtype, monkeypatch):
    """SINGLE_MAX_T: a buffer of at most that many positions takes one split of one tile of next_pow2(T_max) (one
    program a row and KV head, no merge), on the cases' rows of different lengths, 0 and 1, T_max off the tiles and
    GQA groups of 1, 3 and 9; a longer buffer keeps its splits; MLA's wide heads keep theirs."""
    B, H, Hkv, Tm, D, Dv, lengths = CASES[case]
    dev = torch.device(DEV)
    monkeypatch.setitem(T.CONFIG_OVERRIDE, "SINGLE_MAX_T", 64)
    n, chunk, block = T.split_plan(B, Hkv, Tm, dev, max(D, Dv))
    assert (n, chunk, block) == (1, 64, 64), (n, chunk, block)
    assert T.split_plan(1, 1, 65, dev)[0] > 1, "a buffer past SINGLE_MAX_T is split as before"
    assert T.split_plan(1, 1, 20, dev, 288)[2] == min(T._config(dev)["BLOCK_T"], T.WIDE_BLOCK_T)
    q, k, v, L = _inputs(B, H, Hkv, Tm, D, Dv, lengths, dtype, DEV)
    got = T.decode_attention(q, k, v, L)
    ref = naive_decode_attention(*(t.float() for t in (q, k, v)), L)
    _assert(f"single tile [{dtype}]", got.float(), ref, TOL[dtype])
    assert got[L == 0].eq(0).all(), "a row of length 0 must give zeros"


def test_dispatch(monkeypatch):
    q, k, v, L = _inputs(2, 4, 2, 20, 32, 32, [20, 3])
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    ref = naive_decode_attention(q, k, v, L)
    assert torch.equal(K.decode_attention(q, k, v, L), ref)
    assert K.last_backend("decode_attention") == "naive"
    K.decode_attention_ring(q, k, v, L, 5)
    assert K.last_backend("decode_attention_ring") == "naive"
    if _skip is None and DEV == "cpu":
        monkeypatch.setenv("TRITON_INTERPRET", "1")
        _assert("out", K.decode_attention(q, k, v, L), ref, 1e-5)
        assert K.last_backend("decode_attention") == "triton"


def test_traceable():
    """A compiled step keeps the op whole (a custom op): fullgraph tracing must not break on it."""
    q, k, v, L = _inputs(2, 4, 2, 20, 32, 32, [20, 3])

    def step(q, k, v, L):
        return K.decode_attention(q, k, v, L) + K.decode_attention_ring(q, k, v, L, 4)

    got = torch.compile(step, fullgraph=True, backend="aot_eager")(q, k, v, L)
    ref = naive_decode_attention(q, k, v, L) + naive_decode_attention_ring(q, k, v, L, 4)
    _assert("out", got, ref, 1e-6)
    qm = torch.randn(2, 4, 3, 32, generator=torch.Generator().manual_seed(5))  # a verify's three tokens a row
    got = torch.compile(K.decode_attention, fullgraph=True, backend="aot_eager")(qm, k, v, L)
    _assert("out, three tokens a row", got, naive_decode_attention(qm, k, v, L), 1e-6)


def test_bad_input():
    q, k, v, L = _inputs(2, 4, 2, 20, 32, 16, [20, 3])
    bad = [
        (dict(q=q[0]), r"q must be a \(B, H, D\)"),
        (dict(k=k[:, :, :, :16]), r"k_cache must have shape \(B, H_kv, T_max, D\) = \(2, H_kv, T_max, 32\)"),
        (dict(k=k[:1]), "k_cache must have shape"),
        (dict(v=v[:, :, :5]), r"v_cache must have shape \(B, H_kv, T_max, Dv\) = \(2, 2, 20, Dv\)"),
        (dict(v=v[0]), "v_cache must be a"),
        (dict(q=q[:, :3]), "multiple of k_cache's H_kv=2"),
        (dict(L=L[:1]), r"lengths must be a \(B,\) = \(2,\) tensor"),
        (dict(L=L.float()), "lengths must be an integer tensor"),
        (dict(q=q.double(), k=k.double(), v=v.double()), "q must be float16, bfloat16 or float32"),
        (dict(k=k.half()), "must share a dtype"),
    ]
    for change, msg in bad:
        a = {**dict(q=q, k=k, v=v, L=L), **change}
        with pytest.raises(ValueError, match=msg):
            K.decode_attention(a["q"], a["k"], a["v"], a["L"])
    with pytest.raises(ValueError, match="k_ring must have shape"):
        K.decode_attention_ring(q, k[:, :, :, :16], v, L, 4)
    with pytest.raises(ValueError, match="window must be an int >= 1"):
        K.decode_attention_ring(q, k, v, L, 0)


@requires_cuda
@pytest.mark.parametrize("D, Dv, Hkv", [(64, 64, 3), (96, 96, 3), (128, 128, 3), (256, 256, 3), (288, 256, 1)])
def test_cuda_bf16_long(D, Dv, Hkv):
    """bf16 at a decode-sized cache: rows of different lengths in a long buffer, GQA 9/3; and MLA's absorbed
    shape at rank 256 (one latent head, key = 256 latent + 32 RoPE dims, value = the latent)."""
    lengths = [4096, 1, 1000, 0, 8191, 3000]
    q, k, v, L = _inputs(6, 9, Hkv, 8192, D, Dv, lengths, torch.bfloat16, "cuda")
    got = T.decode_attention(q, k, v, L)
    _assert("out", got.float(), naive_decode_attention(q.float(), k.float(), v.float(), L), 2e-2)


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("B", [1, 16, 64])
def test_cuda_single_tile_bf16(B, monkeypatch):
    """SINGLE_MAX_T 256 at the bench's 256-position buffer (128-token prompts), GQA 9/3, bf16: one tile a (row, KV
    head), rows of different lengths."""
    monkeypatch.setitem(T.CONFIG_OVERRIDE, "SINGLE_MAX_T", 256)
    lengths = [(129 + 37 * b) % 257 for b in range(B)]
    q, k, v, L = _inputs(B, 9, 3, 256, 64, 64, lengths, torch.bfloat16, "cuda")
    assert T.split_plan(B, 3, 256, q.device)[:2] == (1, 256)
    got = T.decode_attention(q, k, v, L)
    _assert("out", got.float(), naive_decode_attention(q.float(), k.float(), v.float(), L), 2e-2)


@requires_cuda
@pytest.mark.parametrize("Tm, lengths", [(8192, [8192, 1, 5000, 0]), (300, [300, 299, 64, 1])])
def test_cuda_fixup_matches_combine_kernel(Tm, lengths, monkeypatch):
    """On the GPU the last program of a group is whichever finishes last: many splits (up to 128), many calls,
    the fixup's output the same bits every time (whichever program merged), within one bf16 rounding of the
    two-launch form's, and the counters zero after. The merge is one function (``_combine_head``) compiled into
    two kernels, which may round differently: on an H100 (2026-12-06) the 8,192-position case differed in its bits
    from the two-launch form's (docs/results/gpu-tests/gpu_tests_2026-12-06_h100.log), where in the sixth session
    it had not; FIXUP is off by default."""
    q, k, v, L = _inputs(4, 9, 3, Tm, 64, 64, lengths, torch.bfloat16, "cuda")
    monkeypatch.setitem(T.CONFIG_OVERRIDE, "FIXUP", False)
    two = T.decode_attention(q, k, v, L)
    monkeypatch.setitem(T.CONFIG_OVERRIDE, "FIXUP", True)
    first = T.decode_attention(q, k, v, L)
    diff = (first.float() - two.float()).abs()
    torch.testing.assert_close(first, two, rtol=2**-7, atol=1e-5, msg=lambda m: (
        f"fixup against the two-launch form: {int(diff.gt(0).sum())} of {diff.numel()} values differ, "
        f"largest {float(diff.max()):.3g}\n{m}"))  # fmt: skip
    for i in range(49):
        assert torch.equal(T.decode_attention(q, k, v, L), first), f"call {i + 1}: the fixup's bits changed"
    torch.cuda.synchronize()
    assert T._COUNTERS[q.device].eq(0).all()


@requires_cuda
def test_cuda_graph_capture():
    """The call captures in a CUDA graph; new lengths written in place are picked up on replay."""
    q, k, v, L = _inputs(4, 9, 3, 2048, 64, 64, [2048] * 4, torch.bfloat16, "cuda")
    k, v = k.nan_to_num(), v.nan_to_num()
    L = torch.tensor([100, 2048, 1, 0], device="cuda")
    T.decode_attention(q, k, v, L)  # compile outside the capture
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out = T.decode_attention(q, k, v, L)
    for lengths in ([100, 2048, 1, 0], [7, 500, 2047, 64]):
        L.copy_(torch.tensor(lengths))
        g.replay()
        _assert(f"out{lengths}", out.float(), naive_decode_attention(q.float(), k.float(), v.float(), L), 2e-2)


@needs_triton
def test_row_chunk_splits_each_row_by_its_own_length(monkeypatch):
    """``row_chunk`` (BALANCE): a row's splits share its valid length, ceil(tiles / splits) whole tiles each (at least
    one); off, the plan's chunk (T_max over the splits) is kept."""
    if DEV == "cpu":
        monkeypatch.setenv("TRITON_INTERPRET", "1")  # read when the test kernel below is decorated
    import triton
    import triton.language as tl

    @triton.jit
    def chunks(nv_ptr, out_ptr, chunk, n_splits, BLOCK_T: tl.constexpr, BALANCE: tl.constexpr):
        i = tl.program_id(0)
        tl.store(out_ptr + i, T.row_chunk(tl.load(nv_ptr + i), chunk, n_splits, BLOCK_T, BALANCE))

    n_valid = torch.tensor([0, 1, 15, 16, 17, 100, 4096, 4097], dtype=torch.int32, device=DEV)
    for n_splits in (1, 3, 5, 16):
        out = torch.zeros_like(n_valid)
        chunks[(len(n_valid),)](n_valid, out, 9999, n_splits, BLOCK_T=16, BALANCE=True)
        for n, c in zip(n_valid.tolist(), out.tolist(), strict=True):
            assert c % 16 == 0 and c >= 16, (n, n_splits, c)
            assert c * n_splits >= n, f"length {n}, {n_splits} splits of {c}: positions left unread"
            assert c <= max(16, -(-n // n_splits) + 15), f"length {n}, {n_splits} splits of {c}: not balanced"
            tiles = -(-n // 16)  # the split covering the fewest tiles but the last reads ceil(tiles / n_splits)
            assert c // 16 == max(1, -(-tiles // n_splits)), f"length {n}, {n_splits} splits of {c}"
        chunks[(len(n_valid),)](n_valid, out, 9999, n_splits, BLOCK_T=16, BALANCE=False)
        assert out.eq(9999).all()


@needs_triton
@pytest.mark.parametrize("ring", [False, True], ids=["global", "ring"])
def test_balanced_splits_equal_the_planned_ones(ring, monkeypatch):
    """The same attention whether a row's splits follow its length (BALANCE, the default) or T_max: rows of
    lengths 0, 1, 37 and T_max (a ring's past its slots), forced to 4 splits."""
    monkeypatch.setitem(T.CONFIG_OVERRIDE, "N_SPLITS", 4)
    lengths = [0, 1, 37, 96] if not ring else [0, 1, 37, 150]
    q, k, v, L = _inputs(4, 6, 2, 96, 16, 8, [min(n, 96) for n in lengths], seed=5)
    L = torch.tensor(lengths)
    call = (lambda: T.decode_attention_ring(q, k, v, L, 40)) if ring else (lambda: T.decode_attention(q, k, v, L))
    balanced = call()
    monkeypatch.setitem(T.CONFIG_OVERRIDE, "BALANCE", False)
    planned = call()
    assert not balanced.isnan().any()
    assert rel_err(balanced, planned) < 1e-6


# Several query tokens a row (a speculative verify): (B, H, Hkv, T_max, D, Q, lengths). Row lengths count the
# tokens up to the last query; a row shorter than Q has queries that see nothing (zeros); GQA groups 1, 3 and 9.
MULTI_CASES = {
    "g3_q3": (3, 6, 2, 45, 64, 3, [45, 2, 17]),
    "g1_q5": (2, 3, 3, 37, 32, 5, [37, 16]),
    "g9_q2": (2, 9, 1, 40, 64, 2, [1, 39]),
    "g3_q9": (1, 9, 3, 33, 16, 9, [20]),
}


def _multi_inputs(B, H, Hkv, Tm, D, Q, lengths, dtype=torch.float32, device="cpu"):
    gen = torch.Generator().manual_seed(Q)
    _, k, v, L = _inputs(B, H, Hkv, Tm, D, D, lengths, dtype, device)
    q = torch.randn(B, H, Q, D, generator=gen).to(device, dtype)
    return q, k, v, L


@pytest.mark.parametrize("case", MULTI_CASES)
def test_naive_multi_query_matches_sdpa(case):
    """Query i of a row sees positions [0, length - (Q - 1 - i)): each against SDPA over just those positions."""
    B, H, Hkv, Tm, D, Q, lengths = MULTI_CASES[case]
    q, k, v, L = _multi_inputs(B, H, Hkv, Tm, D, Q, lengths)
    out = naive_decode_attention(q, k, v, L)
    assert out.shape == (B, H, Q, D)
    for i in range(Q):
        Li = (L - (Q - 1 - i)).clamp(min=0)
        _assert(f"query {i}", out[:, :, i], _sdpa(q[:, :, i], k, v, _visible(Li, Tm)), 1e-6)
        assert out[:, :, i][Li == 0].eq(0).all(), "a query that sees nothing gives zeros"


@needs_triton
@pytest.mark.parametrize("splits", [None, 1, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("case", MULTI_CASES)
def test_triton_multi_query_matches_naive(case, dtype, splits, monkeypatch):
    """The Q tokens folded into the head group, each masked to its own causal bound; splits that end before a
    query's bound hand it nothing, and a query whose row is too short for it gets zeros."""
    if splits is not None:
        monkeypatch.setitem(T.CONFIG_OVERRIDE, "N_SPLITS", splits)
    B, H, Hkv, Tm, D, Q, lengths = MULTI_CASES[case]
    q, k, v, L = _multi_inputs(B, H, Hkv, Tm, D, Q, lengths, dtype, DEV)
    got = T.decode_attention(q, k, v, L)
    assert got.shape == (B, H, Q, D) and got.dtype == dtype
    ref = naive_decode_attention(*(t.float() for t in (q, k, v)), L)
    _assert(f"out[{dtype}, splits={splits}]", got.float(), ref, TOL[dtype])
    one = T.decode_attention(q[:, :, -1], k, v, L)  # the last query is the one-token call's
    _assert("last query", got[:, :, -1].float(), one.float(), 1e-6 if dtype == torch.float32 else TOL[dtype])


def test_multi_query_bad_input():
    q, k, v, L = _multi_inputs(1, 3, 1, 8, 16, 2, [8])
    with pytest.raises(ValueError, match="1..16 query tokens a row, got Q=17"):
        K.decode_attention(q[:, :, :1].expand(1, 3, 17, 16), k, v, L)
    with pytest.raises(ValueError, match="decode_attention_ring takes one query token a row"):
        K.decode_attention_ring(q, k, v, L, 4)


@requires_cuda
@pytest.mark.parametrize("Q", [3, 5, 9])
def test_cuda_bf16_multi_query(Q):
    """bf16 on the GPU: a verify's Q tokens a row over a long buffer, GQA 9/3, rows shorter and longer than Q."""
    lengths = [4096, 2, 1000, 8191]
    q, k, v, L = _multi_inputs(4, 9, 3, 8192, 64, Q, lengths, torch.bfloat16, "cuda")
    got = T.decode_attention(q, k, v, L)
    _assert("out", got.float(), naive_decode_attention(q.float(), k.float(), v.float(), L), 2e-2)
