"""Causal conv1d: the Triton kernels against the naive fp32 reference.

Without a GPU the Triton kernels run on CPU tensors in Triton's interpreter (tiny shapes, small
blocks); with one they run compiled on CUDA, in fp32 here and in bf16 in the tests marked ``gpu``.
Output, final states and every gradient are compared by relative error.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import archzoo.kernels as K
from archzoo.kernels import _launch
from archzoo.kernels._testing import import_triton_kernels, rel_err
from archzoo.kernels.causal_conv1d import naive_causal_conv1d_fn, naive_causal_conv1d_update

_mods, _skip = import_triton_kernels("archzoo.kernels.causal_conv1d.triton")
pytestmark = pytest.mark.skipif(_skip is not None, reason=_skip or "")
T = _mods[0] if _mods else None
DEV = "cuda" if torch.cuda.is_available() else "cpu"
gpu = pytest.mark.gpu
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _inputs(b, d, L, W, bias, init, dtype, device, seed=0):
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen)
    ins = dict(
        x=r(b, d, L).to(dtype),
        weight=r(d, W) / W**0.5,
        bias=r(d) if bias else None,
        initial_states=r(b, d, W - 1).to(dtype) if init else None,
    )
    return {k: None if v is None else v.to(device) for k, v in ins.items()}


def _run(fn, ins, activation, final):
    leaf = {k: None if v is None else v.detach().clone().requires_grad_(True) for k, v in ins.items()}
    res = fn(
        leaf["x"], leaf["weight"], leaf["bias"], initial_states=leaf["initial_states"],
        return_final_states=final, activation=activation,
    )  # fmt: skip
    out, fs = res if final else (res, None)
    gen = torch.Generator().manual_seed(1)
    loss = (out.float() * torch.randn(out.shape, generator=gen).to(out.device)).sum()
    if fs is not None:
        loss = loss + (fs.float() * torch.randn(fs.shape, generator=gen).to(fs.device)).sum()
    loss.backward()
    got = {"out": out, "final_states": fs}
    got.update({f"d{k}": v.grad for k, v in leaf.items() if v is not None})
    return {k: v for k, v in got.items() if v is not None}


def _compare(ins, activation, final, tol):
    ref = _run(naive_causal_conv1d_fn, {k: None if v is None else v.float() for k, v in ins.items()}, activation, final)
    got = _run(T.causal_conv1d_fn, ins, activation, final)
    assert got.keys() == ref.keys()
    assert got["out"].dtype == ins["x"].dtype, "out dtype"
    for name in ref:
        assert got[name].shape == ref[name].shape, name
        err = rel_err(got[name], ref[name])
        assert err < tol, f"{name}: relative error {err:.2e} >= {tol:.0e}"


# (b, d, L, W, bias, initial_states, activation, return_final_states)
CASES = {
    "w4_full": (2, 6, 19, 4, True, True, "silu", True),
    "w2_l1": (1, 5, 1, 2, False, True, None, True),
    "w8_short": (2, 3, 5, 8, True, False, "swish", True),
    "w3_noinit": (1, 7, 17, 3, True, False, None, False),
    "w5_block_multiple": (2, 4, 16, 5, False, True, "silu", False),
    "w6_init_l2": (1, 4, 2, 6, True, True, "silu", True),
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_conv_matches_naive(case):
    b, d, L, W, bias, init, act, final = CASES[case]
    _compare(_inputs(b, d, L, W, bias, init, torch.float32, DEV), act, final, tol=1e-5)


@pytest.mark.parametrize("W", range(2, 9))
def test_conv_every_width_with_initial_states(W):
    """Every width, initial_states and its gradient; l not a multiple of the block, d not a multiple of BLOCK_D."""
    b, L = 1 + W % 2, 9 + W
    _compare(_inputs(b, 5, L, W, W % 3 != 0, True, torch.float32, DEV), "silu" if W % 2 else None, True, tol=1e-5)


@pytest.mark.parametrize(
    "L,W", [(1, 4), (7, 8), (8, 2), (17, 3)], ids=lambda v: str(v)
)  # fmt: skip
def test_conv_lengths_around_the_group(L, W):
    """Lengths below, at and just past the 8-step group and the (interpreter's) 16-step tile, l < W included."""
    _compare(_inputs(1, 5, L, W, True, True, torch.float32, DEV), "silu", False, tol=1e-5)


@pytest.mark.parametrize("dtype,tol", [(torch.float16, 2e-3), (torch.bfloat16, 1e-2)], ids=["fp16", "bf16"])
def test_conv_half_precision(dtype, tol):
    """16-bit inputs (one 16-byte vector per group), compared with the fp32 reference on the same values."""
    _compare(_inputs(1, 5, 21, 4, True, True, dtype, DEV), "silu", True, tol=tol)


def test_conv_strided_grad_and_initial_states():
    """A strided dout (the conv output read through a transpose) and a non-contiguous initial_states slice."""
    ins = _inputs(2, 5, 19, 4, True, False, torch.float32, DEV)
    gen = torch.Generator().manual_seed(2)
    ins["initial_states"] = torch.randn(2, 5, 4, generator=gen).to(DEV)[..., 1:]  # Mamba's state[..., 1:]
    r = torch.randn(2, 19, 5, generator=gen).to(DEV)
    grads = {}
    for name, fn in (("ref", naive_causal_conv1d_fn), ("got", T.causal_conv1d_fn)):
        leaf = {k: v.detach().clone().requires_grad_(True) for k, v in ins.items()}
        out = fn(leaf["x"], leaf["weight"], leaf["bias"], initial_states=leaf["initial_states"], activation="silu")
        (out.transpose(1, 2) * r).sum().backward()  # dout arrives with strides (l d, 1, d)
        grads[name] = {"out": out, **{f"d{k}": v.grad for k, v in leaf.items()}}
    for k, ref in grads["ref"].items():
        err = rel_err(grads["got"][k], ref)
        assert err < 1e-5, f"{k}: relative error {err:.2e}"


def test_conv_only_x_needs_grad_and_no_grad():
    """Frozen weights (only dx needed) and the no-grad path give the reference values."""
    ins = _inputs(2, 5, 13, 3, True, True, torch.float32, DEV)
    kw = dict(initial_states=ins["initial_states"], activation="silu")
    x = ins["x"].clone().requires_grad_(True)
    out = T.causal_conv1d_fn(x, ins["weight"], ins["bias"], **kw)
    out.sum().backward()
    xr = ins["x"].clone().requires_grad_(True)
    ref = naive_causal_conv1d_fn(xr, ins["weight"], ins["bias"], **kw)
    ref.sum().backward()
    assert rel_err(out, ref) < 1e-5, "out"
    assert rel_err(x.grad, xr.grad) < 1e-5, "dx"
    with torch.no_grad():
        got = T.causal_conv1d_fn(x, ins["weight"], ins["bias"], **kw)
    assert not got.requires_grad and rel_err(got, ref) < 1e-5, "out under no_grad"


def _override(monkeypatch, cfg: dict) -> None:
    """Both kernels at ``cfg``, with no plan kept from an earlier test (a signature is planned once, so an override
    would not reach a signature seen before it)."""
    monkeypatch.setattr(T, "CONFIG_OVERRIDE", {"fwd": cfg, "bwd": cfg})
    monkeypatch.setattr(T, "_PLANS", {})


@pytest.mark.parametrize("tiles", [1, 3], ids=["tiles1", "tiles3"])
@pytest.mark.parametrize("block", [(2, 8, 1), (8, 32, 2)], ids=["BD2_BL8", "BD8_BL32"])
def test_conv_config_override(monkeypatch, block, tiles):
    """CONFIG_OVERRIDE reaches both kernels: other tile shapes and the backward's tiles a program (TILES 3 as a cap:
    the 4 tiles of 8 steps over l = 19 + V with dinit as two programs of 2; one tile at 32 steps) give the same
    results."""
    bd, bl, nw = block
    _override(monkeypatch, dict(BLOCK_D=bd, BLOCK_L=bl, num_warps=nw))
    T.CONFIG_OVERRIDE["bwd"] = {**T.CONFIG_OVERRIDE["bwd"], "TILES": tiles}
    _compare(_inputs(1, 3, 19, 5, True, True, torch.float32, DEV), "silu", True, tol=1e-5)


@pytest.mark.parametrize("L, tiles", [(1, 2), (16, 5), (47, 2), (47, 5), (64, 1)])
def test_conv_backward_tiles_a_program(monkeypatch, L, tiles):
    """TILES (the backward walking consecutive tiles a program, its weight and bias sums kept in registers across
    them): every gradient as with one tile, dinitial_states included, l from one step to several programs."""
    _override(monkeypatch, dict(BLOCK_D=4, BLOCK_L=8, num_warps=1))
    T.CONFIG_OVERRIDE["bwd"] = {**T.CONFIG_OVERRIDE["bwd"], "TILES": tiles}
    _compare(_inputs(2, 5, L, 4, True, True, torch.float32, DEV), "silu", True, tol=1e-5)


@pytest.mark.parametrize("stages", [2, 3])
def test_conv_backward_stages(monkeypatch, stages):
    """STAGES (the backward's tile loop annotated num_stages: the next tile's loads in flight while one computes;
    the interpreter runs the loop as written, so this checks the annotated kernel's arguments and every gradient;
    the GPU test runs it pipelined): one step, a tile and a half, several tiles a program and two programs a row."""
    _override(monkeypatch, dict(BLOCK_D=4, BLOCK_L=8, num_warps=1))
    T.CONFIG_OVERRIDE["bwd"] = {**T.CONFIG_OVERRIDE["bwd"], "TILES": 4, "STAGES": stages}
    for L in (1, 13, 29, 70):
        _compare(_inputs(2, 5, L, 4, True, True, torch.float32, DEV), "silu", True, tol=1e-5)
    ins = _inputs(2, 5, 70, 4, True, False, torch.float32, DEV)
    bs = T._backward_site(ins["x"], ins["weight"], ins["bias"], None, ins["x"], True, T._acc(ins["x"]), False)
    assert bs.site.consts[-2] == stages


@pytest.mark.parametrize("own", [0, 1], ids=["atomics", "own"])
def test_conv_backward_prefetch(monkeypatch, own):
    """PREFETCH (each tile loads the next tile's x and dout into registers before it computes): every gradient
    against the reference at one step, a tile and a half, several tiles a program, two programs a row, with and
    without initial states (dinit: the tiling shifted by V) and bias; under OWN the prefetch crosses into the next
    batch row and past the last one (masked)."""
    _override(monkeypatch, dict(BLOCK_D=4, BLOCK_L=8, num_warps=1))
    T.CONFIG_OVERRIDE["bwd"] = {**T.CONFIG_OVERRIDE["bwd"], "TILES": 4, "PREFETCH": 1, "OWN": own}
    for L in (1, 13, 29, 70):
        _compare(_inputs(3, 5, L, 4, True, True, torch.float32, DEV), "silu", True, tol=1e-5)
    _compare(_inputs(2, 6, 21, 3, False, False, torch.float32, DEV), None, True, tol=1e-5)
    ins = _inputs(2, 5, 70, 4, True, False, torch.float32, DEV)
    bs = T._backward_site(ins["x"], ins["weight"], ins["bias"], None, ins["x"], True, T._acc(ins["x"]), False)
    assert bs.site.consts[-1] is True


@pytest.mark.parametrize("L, want_tiles, want_programs", [(5, 1, 1), (20, 3, 1), (64, 8, 1), (200, 13, 2)])
def test_conv_backward_tiles_is_a_cap(monkeypatch, L, want_tiles, want_programs):
    """TILES caps the tiles a backward program walks; a row's tiles are shared evenly by the fewest programs the cap
    allows (25 tiles under 16: two programs of 13): a program walking tiles its row does not have paid for each
    masked one (16 at 4k, where rows have 4, took 2.6x the time of 4 on an H100)."""
    _override(monkeypatch, dict(BLOCK_D=4, BLOCK_L=8, num_warps=1))
    T.CONFIG_OVERRIDE["bwd"] = {**T.CONFIG_OVERRIDE["bwd"], "TILES": 16}
    ins = _inputs(2, 4, L, 4, True, False, torch.float32, DEV)
    x, w = ins["x"], ins["weight"]
    bs = T._backward_site(x, w, ins["bias"], None, torch.ones_like(x), True, T._acc(x), False)
    assert (bs.site.consts[-4], bs.n_l) == (want_tiles, want_programs)
    assert bs.own == (want_programs == 1) and bs.site.grid[0] == (1 if bs.own else 2)  # OWN: a program has the rows


@pytest.mark.parametrize("own", [1, 0], ids=["own", "atomics"])
@pytest.mark.parametrize(
    "b, d, L, W, bias, init",
    [(3, 5, 1, 4, True, True), (2, 6, 19, 4, True, True), (1, 3, 40, 3, False, True), (4, 5, 33, 2, True, False)],
)
def test_conv_backward_own_channel(monkeypatch, own, b, d, L, W, bias, init):
    """OWN (one program a channel block over every batch row and tile, its dweight / dbias stored, not added by
    atomics): every gradient as the reference's, dinitial_states included, with and without bias, at lengths from
    one step to several tiles a row; the atomic path beside it on the same cases."""
    _override(monkeypatch, dict(BLOCK_D=4, BLOCK_L=8, num_warps=1))
    T.CONFIG_OVERRIDE["bwd"] = {**T.CONFIG_OVERRIDE["bwd"], "TILES": 8, "OWN": own}
    _compare(_inputs(b, d, L, W, bias, init, torch.float32, DEV), "silu", True, tol=1e-5)


def test_conv_backward_own_channel_dtypes(monkeypatch):
    """OWN stores the sums in the weight's and the bias' own dtypes (fp64 here, bf16 on the GPU), rounded once,
    where the atomic path casts its fp32 (fp64) buffer after the kernel (the reference runs in fp32: the tolerance)."""
    _override(monkeypatch, dict(BLOCK_D=4, BLOCK_L=8, num_warps=1))
    T.CONFIG_OVERRIDE["bwd"] = {**T.CONFIG_OVERRIDE["bwd"], "TILES": 4, "OWN": 1}
    ins = _inputs(2, 3, 21, 4, True, True, torch.float64, DEV)
    ins = {k: v.double() for k, v in ins.items()}
    bs = T._backward_site(ins["x"], ins["weight"], ins["bias"], None, ins["x"], True, T._acc(ins["x"]), False)
    assert bs.own
    _, dw, db, _ = T._run_backward(bs, ins["x"], ins["weight"], ins["bias"], None, torch.ones_like(ins["x"]))
    assert dw.dtype == db.dtype == torch.float64
    _compare(ins, "silu", False, tol=1e-6)


def test_conv_tiles_override_is_checked(monkeypatch):
    for cfg, key in (({"bwd": dict(TILES=0)}, "bwd"), ({"fwd": dict(TILES=2)}, "fwd")):
        _override(monkeypatch, {})
        monkeypatch.setattr(T, "CONFIG_OVERRIDE", cfg)
        with pytest.raises(ValueError, match="TILES"):
            T.conv_config(key, 64, False)


@pytest.mark.parametrize("L, W", [(1, 4), (8, 8), (16, 2), (17, 8), (40, 4)])
def test_conv_one_tile_a_program_with_initial_states(monkeypatch, L, W):
    """The backward with one tile a program (TILES 1, what CUDA runs at l <= 1,024; the interpreter's default walks
    two) on the awkward lengths, with initial_states and its gradient: a tile of one group, an edge at a tile
    boundary."""
    _override(monkeypatch, dict(BLOCK_D=4, BLOCK_L=16, num_warps=1))
    T.CONFIG_OVERRIDE["bwd"] = {**T.CONFIG_OVERRIDE["bwd"], "TILES": 1}
    _compare(_inputs(2, 5, L, W, True, True, torch.float32, DEV), "silu", True, tol=1e-5)


def test_conv_config_override_rejects_bad_block(monkeypatch):
    monkeypatch.setattr(T, "CONFIG_OVERRIDE", {"fwd": dict(BLOCK_L=12)})
    with pytest.raises(ValueError, match="BLOCK_L"):
        T.causal_conv1d_fn(torch.randn(1, 2, 20, device=DEV), torch.randn(2, 4, device=DEV))


@gpu
@needs_cuda
@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_conv_matches_naive_bf16_gpu(case):
    b, d, L, W, bias, init, act, final = CASES[case]
    _compare(_inputs(b, d, L, W, bias, init, torch.bfloat16, "cuda"), act, final, tol=2e-2)


@gpu
@needs_cuda
@pytest.mark.parametrize("W", [2, 4, 7])
def test_conv_long_gpu(W):
    _compare(_inputs(2, 300, 2000, W, True, True, torch.bfloat16, "cuda"), "silu", True, tol=2e-2)


@gpu
@needs_cuda
@pytest.mark.parametrize("tiles", [(1, 1024, 2), (2, 4096, 4)], ids=["BL1024_w2", "BD2_BL4096_w4"])
def test_conv_tiles_gpu(monkeypatch, tiles):
    """The tiles the tuner sweeps, bf16, with dinitial_states: l past a tile and not a multiple of the group, d not a
    multiple of BLOCK_D; the backward with one tile a program, with four, with OWN (every tile of a row), with
    its tile loop pipelined (STAGES 2) and with the next tile's loads first (PREFETCH, with and without OWN)."""
    bd, bl, nw = tiles
    _override(monkeypatch, dict(BLOCK_D=bd, BLOCK_L=bl, num_warps=nw))
    _compare(_inputs(2, 37, 5003, 4, True, True, torch.bfloat16, "cuda"), "silu", True, tol=2e-2)
    monkeypatch.setattr(T, "_PLANS", {})
    T.CONFIG_OVERRIDE["bwd"] = {**T.CONFIG_OVERRIDE["bwd"], "TILES": 4}
    _compare(_inputs(2, 37, 5003, 4, True, True, torch.bfloat16, "cuda"), "silu", True, tol=2e-2)
    monkeypatch.setattr(T, "_PLANS", {})  # OWN: a program a channel block over both rows, its sums stored in bf16
    T.CONFIG_OVERRIDE["bwd"] = {**T.CONFIG_OVERRIDE["bwd"], "TILES": 8, "OWN": 1}
    _compare(_inputs(2, 37, 5003, 4, True, True, torch.bfloat16, "cuda"), "silu", True, tol=2e-2)
    monkeypatch.setattr(T, "_PLANS", {})  # the tile loop pipelined (STAGES): cp.async into shared memory
    T.CONFIG_OVERRIDE["bwd"] = {**T.CONFIG_OVERRIDE["bwd"], "TILES": 8, "OWN": 0, "STAGES": 2}
    _compare(_inputs(2, 37, 5003, 4, True, True, torch.bfloat16, "cuda"), "silu", True, tol=2e-2)
    for own in (0, 1):  # the next tile's loads first (PREFETCH), with OWN across the batch rows
        monkeypatch.setattr(T, "_PLANS", {})
        T.CONFIG_OVERRIDE["bwd"] = {**T.CONFIG_OVERRIDE["bwd"], "TILES": 8, "OWN": own, "STAGES": 0, "PREFETCH": 1}
        _compare(_inputs(2, 37, 5003, 4, True, True, torch.bfloat16, "cuda"), "silu", True, tol=2e-2)


@gpu
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64], ids=["fp16", "fp32", "fp64"])
def test_conv_dtypes_gpu(dtype):
    """Each dtype twice at the tuned tiles (the second call reuses the compiled kernel), with dinitial_states."""
    tol = {torch.float16: 5e-3, torch.float32: 1e-5, torch.float64: 1e-5}[dtype]
    for L in (4096, 1000):  # a multiple of the tile, and not even of the 8-step group
        _compare(_inputs(2, 72, L, 4, True, True, dtype, "cuda"), "silu", True, tol=tol)


def test_conv_plan_is_reused_per_signature_and_validates_first(monkeypatch):
    """Validation and launch arguments are planned once per signature: a second call with new data reuses
    the plan and is still right; another layout gets its own; a bad input with known shapes is refused."""
    monkeypatch.setattr(T, "_PLANS", {})
    for seed in (0, 1):
        ins = _inputs(2, 6, 21, 4, True, True, torch.float32, DEV, seed=seed)
        _compare(ins, "silu", True, tol=1e-5)
    assert len(T._PLANS) == 1
    ins["x"] = ins["x"].transpose(1, 2).contiguous().transpose(1, 2)
    _compare(ins, "silu", True, tol=1e-5)
    assert len(T._PLANS) == 2
    with pytest.raises(ValueError, match="bias"):
        T.causal_conv1d_fn(ins["x"], ins["weight"], ins["bias"][:-1], activation="silu")
    with pytest.raises(ValueError, match="activation"):
        T.causal_conv1d_fn(ins["x"], ins["weight"], ins["bias"], activation="gelu")


@gpu
@needs_cuda
def test_conv_launch_cache_gpu(monkeypatch):
    """A launch from the cache or the plan's site (second call of a shape) gives what one through Triton's
    launcher gives: bit for bit, but for the weight / bias sums, which the programs add by atomics in any order."""
    ins = _inputs(2, 72, 1024, 4, True, True, torch.bfloat16, "cuda")
    monkeypatch.setattr(T, "_PLANS", {})
    monkeypatch.setattr(_launch, "FAST_LAUNCH", False)
    ref = _run(T.causal_conv1d_fn, ins, "silu", True)
    monkeypatch.setattr(_launch, "FAST_LAUNCH", True)
    monkeypatch.setattr(_launch, "_LAUNCH_CACHE", {})
    for attempt in ("miss", "hit"):
        got = _run(T.causal_conv1d_fn, ins, "silu", True)
        for name in ref:
            if name in ("dweight", "dbias"):
                assert rel_err(got[name], ref[name]) <= 1e-6, f"{name} ({attempt})"
            else:
                assert torch.equal(got[name], ref[name]), f"{name} ({attempt})"
    assert len(_launch._LAUNCH_CACHE) == 2, "one entry each for the forward and the backward"


def test_conv_float64():
    """float64 inputs are computed in float64."""
    ins = _inputs(2, 5, 11, 4, True, True, torch.float64, DEV)
    ins = {k: None if v is None else v.double() for k, v in ins.items()}
    got = _run(T.causal_conv1d_fn, ins, "silu", True)
    ref = _run(naive_causal_conv1d_fn, ins, "silu", True)
    assert got["out"].dtype == torch.float64, "out dtype"
    for name in ref:
        assert rel_err(got[name], ref[name]) < 1e-12, name


def test_naive_matches_torch_conv1d():
    ins = _inputs(2, 5, 11, 4, True, False, torch.float32, "cpu")
    ref = F.silu(F.conv1d(ins["x"], ins["weight"][:, None], ins["bias"], padding=3, groups=5)[..., :11])
    assert rel_err(naive_causal_conv1d_fn(ins["x"], ins["weight"], ins["bias"], activation="silu"), ref) < 1e-6


def test_conv_strided_x():
    ins = _inputs(2, 5, 12, 4, True, True, torch.float32, DEV)
    ins["x"] = ins["x"].transpose(1, 2).contiguous().transpose(1, 2)  # channel-last layout
    _compare(ins, "silu", True, tol=1e-5)


@pytest.mark.parametrize("state_len,s", [(4, 1), (3, 1), (6, 3)], ids=["w_state", "w-1_state", "multi_token"])
def test_update_matches_naive(state_len, s):
    b, d, W = 2, 5, 4
    gen = torch.Generator().manual_seed(0)
    state = torch.randn(b, d, state_len, generator=gen).to(DEV)
    x = torch.randn(b, d, s, generator=gen).to(DEV)
    w, bias = torch.randn(d, W, generator=gen).to(DEV), torch.randn(d, generator=gen).to(DEV)
    s_ref, s_got = state.clone(), state.clone()
    ref = naive_causal_conv1d_update(x, s_ref, w, bias, "silu")
    got = T.causal_conv1d_update(x, s_got, w, bias, "silu")
    assert rel_err(got, ref) < 1e-5, "out"
    assert rel_err(s_got, s_ref) < 1e-6, "conv_state"
    ref2 = naive_causal_conv1d_update(x[..., 0], s_ref, w, None, None)  # (b, d) input
    got2 = T.causal_conv1d_update(x[..., 0], s_got, w, None, None)
    assert got2.shape == (b, d) and rel_err(got2, ref2) < 1e-5, "out (b, d)"
    assert rel_err(s_got, s_ref) < 1e-6, "conv_state after (b, d) step"


def test_prefill_then_update_equals_full():
    """conv over [0, s) returning final states, then decode steps, reproduces the full conv."""
    b, d, L, W, s = 2, 6, 11, 4, 5
    ins = _inputs(b, d, L, W, True, False, torch.float32, DEV)
    full = naive_causal_conv1d_fn(ins["x"], ins["weight"], ins["bias"], activation="silu")
    out, fs = T.causal_conv1d_fn(ins["x"][..., :s], ins["weight"], ins["bias"], return_final_states=True,
                                 activation="silu")  # fmt: skip
    state = torch.zeros(b, d, W, device=DEV)  # Mamba's layout: state_len = W
    state[..., 1:] = fs
    steps = [T.causal_conv1d_update(ins["x"][..., t], state, ins["weight"], ins["bias"], "silu") for t in range(s, L)]
    assert rel_err(torch.cat([out, torch.stack(steps, -1)], -1), full) < 1e-5, "out"
    # and a chunked prefill from initial_states
    second = T.causal_conv1d_fn(ins["x"][..., s:], ins["weight"], ins["bias"], initial_states=fs, activation="silu")
    assert rel_err(second, full[..., s:]) < 1e-5, "out from initial_states"


def test_bad_inputs_raise_value_error():
    x, w = torch.randn(2, 4, 5), torch.randn(4, 4)
    with pytest.raises(ValueError, match="width"):
        K.causal_conv1d_fn(x, torch.randn(4, 9))
    with pytest.raises(ValueError, match="weight"):
        K.causal_conv1d_fn(x, torch.randn(3, 4))
    with pytest.raises(ValueError, match="activation"):
        K.causal_conv1d_fn(x, w, activation="relu")
    with pytest.raises(ValueError, match="initial_states"):
        K.causal_conv1d_fn(x, w, initial_states=torch.randn(2, 4, 4))
    with pytest.raises(ValueError, match="conv_state"):
        K.causal_conv1d_update(x[..., 0], torch.randn(2, 4, 2), w)
    with pytest.raises(ValueError, match="seq_idx"):
        K.causal_conv1d_fn(x, w, seq_idx=torch.zeros(2, 5, dtype=torch.int32))


def test_dispatch_reports_backend(monkeypatch):
    ins = _inputs(1, 3, 6, 3, True, False, torch.float32, "cpu")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    ref = K.causal_conv1d_fn(ins["x"], ins["weight"], ins["bias"])
    assert K.last_backend("causal_conv1d_fn") == "naive"
    if DEV == "cpu":  # Triton is in interpreter mode here: the variable routes CPU tensors to it
        monkeypatch.setenv("TRITON_INTERPRET", "1")
        got = K.causal_conv1d_fn(ins["x"], ins["weight"], ins["bias"])
        assert K.last_backend("causal_conv1d_fn") == "triton"
        assert rel_err(got, ref) < 1e-6, "out"
    with pytest.raises(ValueError, match="backend"):
        K.causal_conv1d.set_backend("cudnn")


def _update_inputs(b, d, W, state_len, dtype, device, steps=3, s=None, seed=0):
    """Decode inputs as Mamba passes them: x a (b, d) slice of in_proj's (b, 2d) output (or (b, d, s) channel-last
    when s is given), weight conv1d.weight.squeeze(1), bias, and a conv_state."""
    gen = torch.Generator().manual_seed(seed)
    if s is None:
        xs = [torch.randn(b, 2 * d, generator=gen).to(device, dtype)[:, :d] for _ in range(steps)]
    else:
        xs = [torch.randn(b, s, d, generator=gen).to(device, dtype).transpose(1, 2) for _ in range(steps)]
    w = (torch.randn(d, 1, W, generator=gen) / W**0.5).to(device, dtype).squeeze(1)
    bias = torch.randn(d, generator=gen).to(device, dtype)
    state = torch.randn(b, d, state_len, generator=gen).to(device, dtype)
    return xs, w, bias, state


@pytest.mark.parametrize("s", [None, 3], ids=["2d_slice", "3d_channel_last"])
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-12)], ids=["fp32", "fp64"])
def test_update_strided_x_steps(s, dtype, tol):
    """Several steps from strided x (Mamba's in_proj slice, a channel-last chunk) match the naive update."""
    xs, w, bias, state = _update_inputs(2, 5, 4, 4, dtype, DEV, s=s)
    s_ref, s_got = state.clone(), state.clone()
    for t, x in enumerate(xs):
        ref = naive_causal_conv1d_update(x, s_ref, w, bias, "silu")
        got = T.causal_conv1d_update(x, s_got, w, bias, "silu")
        assert got.shape == x.shape and got.dtype == dtype, f"out shape / dtype (step {t})"
        assert got.is_contiguous(), f"out layout (step {t})"
        assert rel_err(got, ref) < tol, f"out (step {t})"
        assert rel_err(s_got, s_ref) < tol, f"conv_state (step {t})"


@pytest.mark.parametrize("fn", ["triton", "naive"])
def test_update_bad_inputs_name_the_argument(fn):
    f = T.causal_conv1d_update if fn == "triton" else naive_causal_conv1d_update
    b, d, W = 2, 4, 4
    x, st, w, bias = torch.randn(b, d), torch.randn(b, d, W), torch.randn(d, W), torch.randn(d)
    cases = [
        ("x must have shape", (torch.randn(b, d, 1, 1), st, w, bias, None)),
        ("x must be a float", (x.long(), st, w, bias, None)),
        ("weight must have shape", (x, st, torch.randn(d + 1, W), bias, None)),
        ("weight must have shape", (x, st, torch.randn(d * W), bias, None)),
        ("weight width", (x, st, torch.randn(d, 9), bias, None)),
        ("weight must be a float", (x, st, w.int(), bias, None)),
        ("bias must have shape", (x, st, w, torch.randn(d + 1), None)),
        ("bias must have shape", (x, st, w, torch.randn(1, d), None)),
        ("bias must be a float", (x, st, w, bias.int(), None)),
        ("activation", (x, st, w, bias, "relu")),
        ("conv_state must have shape", (x, torch.randn(b, d), w, bias, None)),
        ("conv_state must have shape", (x, torch.randn(b + 1, d, W), w, bias, None)),
        ("conv_state must have shape", (x, torch.randn(b, d + 1, W), w, bias, None)),
        ("conv_state must have shape", (x, torch.randn(b, d, W - 2), w, bias, None)),
        ("conv_state must be a float", (x, st.int(), w, bias, None)),
        ("one device", (x, st, w, bias.to("meta"), None)),
    ]
    for match, args in cases:
        with pytest.raises(ValueError, match=match):
            f(*args)


@gpu
@needs_cuda
@pytest.mark.parametrize("hook", [False, True], ids=["no_hook", "launch_hook"])
@pytest.mark.parametrize("s", [None, 2], ids=["2d", "3d"])
def test_update_launch_cache_gpu(monkeypatch, s, hook):
    """Decode steps with different x from the launch cache (a miss, then hits) are bit-identical to launches
    through Triton's launcher, and match the naive update; with a launch hook set, every launch calls it."""
    from triton import knobs

    seen = []
    if hook:
        monkeypatch.setattr(knobs.runtime, "launch_enter_hook", lambda metadata: seen.append(metadata))
    xs, w, bias, state = _update_inputs(4, 200, 4, 4, torch.bfloat16, "cuda", steps=3, s=s)
    got = {}
    for fast in (False, True):
        monkeypatch.setattr(_launch, "FAST_LAUNCH", fast)
        monkeypatch.setattr(_launch, "_LAUNCH_CACHE", {})
        st = state.clone()
        got[fast] = [T.causal_conv1d_update(x, st, w, bias, "silu") for x in xs] + [st]
        assert len(_launch._LAUNCH_CACHE) == (1 if fast else 0), f"cache entries (FAST_LAUNCH={fast})"
    assert len(seen) == (2 * len(xs) if hook else 0), "launch hook calls"
    names = [f"out (step {t})" for t in range(len(xs))] + ["conv_state"]
    for name, a, r in zip(names, got[True], got[False], strict=True):
        assert torch.equal(a, r), name
    st = state.float()
    ref = [naive_causal_conv1d_update(x.float(), st, w.float(), bias.float(), "silu") for x in xs] + [st]
    for name, a, r in zip(names, got[True], ref, strict=True):
        assert rel_err(a, r) < 1e-2, name


def test_config_from_env_parses_and_names_what_is_wrong():
    """CONFIG_ENV (a tuned configuration for a process) is parsed once; bad values name the key at fault."""
    assert T.config_from_env(None) == {} and T.config_from_env("  ") == {}
    assert T.config_from_env('{"bwd": {"TILES": 4, "BLOCK_L": 2048}}') == {"bwd": {"TILES": 4, "BLOCK_L": 2048}}
    assert T.config_from_env('{"bwd": {"OWN": 0}}') == {"bwd": {"OWN": 0}}
    assert T.config_from_env('{"bwd": {"STAGES": 0}}') == {"bwd": {"STAGES": 0}}
    for text, match in (
        ("{", "JSON object"),
        ('{"update": {}}', "'fwd' and / or 'bwd'"),
        ('{"bwd": {"TILE": 1}}', r"\['bwd'\]"),
        ('{"bwd": {"TILES": true}}', "positive integers"),
        ('{"fwd": {"BLOCK_L": -8}}', "positive integers"),
        ('{"bwd": {"num_warps": 0}}', "positive integers"),
        ('{"bwd": {"OWN": 2}}', "0 or 1"),
        ('{"fwd": {"OWN": 1}}', "only 'bwd'"),
        ('{"fwd": {"STAGES": 2}}', "only 'bwd'"),
        ('{"bwd": {"STAGES": -1}}', "STAGES: 0 or more"),
    ):
        with pytest.raises(ValueError, match=match):
            T.config_from_env(text)


@pytest.mark.parametrize("update_kernels", [True, False])
def test_update_kernels_join_the_pdl_chain(monkeypatch, update_kernels):
    """causal_conv1d_update and selective_state_update launch with PDL where ``pdl_enabled`` holds (their kernels
    take PDL as a constexpr), unless ``_pdl.UPDATE_KERNELS`` is off; launches recorded, not run."""
    from archzoo.kernels import _pdl
    from archzoo.kernels.selective_scan import triton as ST

    monkeypatch.setattr(_pdl, "UPDATE_KERNELS", update_kernels)
    seen = []
    for mod in (T, ST):
        monkeypatch.setattr(mod, "pdl_enabled", lambda device: True)
        monkeypatch.setattr(
            mod, "launch", lambda k, grid, p, i, consts, nw, dev, pdl=False: seen.append((consts[-1], pdl))
        )
    T.causal_conv1d_update(torch.randn(2, 6), torch.randn(2, 6, 3), torch.randn(6, 4), torch.randn(6), "silu")
    ST.selective_state_update(torch.randn(2, 6, 4), torch.randn(2, 6), torch.randn(2, 6), -torch.rand(6, 4),
                              torch.randn(2, 4), torch.randn(2, 4), D=torch.randn(6), dt_softplus=True)  # fmt: skip
    assert seen == [(update_kernels, update_kernels)] * 2
