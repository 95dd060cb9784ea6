"""The decode GEMV with Mamba's conv step in its epilogue (``decode_linear_conv``): in_proj, then its x columns
through one causal conv update with SiLU, the conv state shifted in place. The Triton kernel (Triton's interpreter
on CPU tensors, tiny tiles) against the reference, which is ``naive_decode_linear`` then
``naive_causal_conv1d_update``: output and state, awkward shapes (the x / z boundary inside a tile, D off the
tiles, widths 2 to 8, with and without the norm, bias and conv bias), the dispatch, the custom op, bad input; bf16
on the GPU, marked."""

from __future__ import annotations

import pytest
import torch

import archzoo.kernels as K
from archzoo.kernels._testing import import_triton_kernels, rel_err
from archzoo.kernels.causal_conv1d import naive_causal_conv1d_update
from archzoo.kernels.decode_linear import naive_decode_linear, naive_decode_linear_conv

from conftest import requires_cuda

_mods, _skip = import_triton_kernels("archzoo.kernels.decode_linear.triton")
T = _mods[0] if _mods else None
needs_triton = pytest.mark.skipif(_skip is not None, reason=_skip or "")


def _inputs(M, Kd, D, W, dtype=torch.float32, norm=True, bias=True, conv_bias=True, extra=0, device="cpu", seed=0):
    """x (M, Kd), in_proj (2 D + extra, Kd), its norm weight and bias, the conv state (M, D, W - 1), weight, bias."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    N = 2 * D + extra
    t = dict(x=r(M, Kd) * 2.0, w=r(N, Kd) / Kd**0.5, nw=0.5 + torch.rand(Kd, generator=g) if norm else None,
             b=r(N) * 0.1 if bias else None, state=r(M, D, W - 1), cw=r(D, W) / W**0.5,
             cb=r(D) * 0.1 if conv_bias else None)  # fmt: skip
    return {k: None if v is None else v.to(device, dtype) for k, v in t.items()}


def _run(fn, t, eps=1e-5):
    state = t["state"].clone()
    out = fn(t["x"], t["w"], t["nw"], eps, t["b"], state, t["cw"], t["cb"])
    return out, state


def test_reference_is_the_projection_then_the_conv_update():
    t = _inputs(3, 24, 10, 4, extra=5)
    out, state = _run(naive_decode_linear_conv, t)
    y = naive_decode_linear(t["x"], t["w"], t["nw"], 1e-5, bias=t["b"])
    ref_state = t["state"].clone()
    xs = naive_causal_conv1d_update(y[:, :10], ref_state, t["cw"], t["cb"], "silu")
    assert torch.equal(out, torch.cat([xs, y[:, 10:]], dim=-1)) and torch.equal(state, ref_state)
    # the state shifted by one step, this step's in_proj output last
    assert torch.equal(state[..., :-1], t["state"][..., 1:]) and torch.equal(state[..., -1], y[:, :10])


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize(
    "M, Kd, D, W, norm, bias, conv_bias, extra",
    [
        (1, 24, 20, 4, True, True, True, 0),  # the x / z boundary inside a 32-column tile
        (3, 40, 33, 2, False, False, False, 0),  # D off the tiles, width 2 (one tap of state)
        (2, 17, 7, 8, True, False, True, 3),  # width 8, more columns after z
        (16, 33, 16, 3, True, True, False, 0),  # 16 rows
    ],
    ids=["M1_W4", "M3_W2_plain", "M2_W8_extra", "M16_W3"],
)
def test_triton_matches_the_reference(M, Kd, D, W, norm, bias, conv_bias, extra, dtype):
    """Output and the state written in place, to the bit in the interpreter (the kernel repeats the unfused step's
    roundings: the projection rounded to x's dtype, the conv in fp32 from it, rounded once)."""
    t = _inputs(M, Kd, D, W, dtype, norm, bias, conv_bias, extra)
    got, got_state = _run(T.decode_linear_conv, t)
    ref, ref_state = _run(naive_decode_linear_conv, t)
    tol = 1e-6 if dtype == torch.float32 else 0.0
    assert rel_err(got, ref) <= tol, f"out: relative error {rel_err(got, ref):.2e}"
    assert rel_err(got_state, ref_state) <= tol, f"state: relative error {rel_err(got_state, ref_state):.2e}"


@needs_triton
def test_the_conv_epilogue_never_splits_k(monkeypatch):
    """Its epilogue rewrites the state, so a column belongs to one program: no split-K even where forced."""
    monkeypatch.setattr(T, "CONFIG_OVERRIDE", {"SPLIT_K": 3})
    assert T.launch_plan(1, 64, 96, torch.device("cpu"), conv=True)["n_splits"] == 1
    assert T.launch_plan(1, 64, 96, torch.device("cpu"))["n_splits"] == 3
    monkeypatch.setattr(T, "_PLANS", {})
    t = _inputs(1, 96, 32, 4)
    got, got_state = _run(T.decode_linear_conv, t)
    ref, ref_state = _run(naive_decode_linear_conv, t)
    assert rel_err(got, ref) < 1e-6 and rel_err(got_state, ref_state) < 1e-6


def test_dispatch_runs_the_reference_without_triton_and_traces_whole(monkeypatch):
    """On the CPU (no interpreter) the reference runs and says so; a compiled step keeps the call whole (the
    custom op, its state declared mutated) and updates the state as eager does."""
    from archzoo.kernels import _capture

    t = _inputs(2, 24, 10, 4)
    got, got_state = _run(K.decode_linear_conv, t)
    assert K.last_backend("decode_linear_conv") == "naive"
    ref, ref_state = _run(naive_decode_linear_conv, t)
    assert torch.equal(got, ref) and torch.equal(got_state, ref_state)
    calls = []
    inner = _capture._decode_linear_conv
    monkeypatch.setattr(_capture, "_decode_linear_conv", lambda *a: calls.append(a) or inner(*a))
    state = t["state"].clone()
    step = torch.compile(lambda x: K.decode_linear_conv(x, t["w"], t["nw"], 1e-5, t["b"], state, t["cw"], t["cb"]),
                         fullgraph=True, backend="aot_eager")  # fmt: skip
    assert torch.equal(step(t["x"]), ref) and torch.equal(state, ref_state) and len(calls) == 1


def test_bad_input_names_the_argument():
    t = _inputs(2, 24, 10, 4)
    bad = [
        (dict(state=t["state"][:, :, :2]), r"conv_state must be \(M, D, W - 1\) = \(2, 10, 3\)"),
        (dict(state=t["state"][:1]), r"conv_state must be \(M, D, W - 1\)"),
        (dict(cw=torch.randn(10, 9)), r"conv_weight must be \(D, W\) with 2 <= W <= 8"),
        (dict(cw=torch.randn(30, 4), state=torch.randn(2, 30, 3)), "conv_weight has 30 channels, more than"),
        (dict(cb=torch.randn(9)), r"conv_bias must have shape \(D,\) = \(10,\)"),
        (dict(state=t["state"].double()), "conv_state and conv_weight must be float16, bfloat16 or float32"),
    ]
    for change, msg in bad:
        a = {**t, **change}
        with pytest.raises(ValueError, match=msg):
            _run(K.decode_linear_conv, a)


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("M", [1, 16])
def test_cuda_mamba_shape_bf16(M):
    """bf16 at the students' Mamba shape (d_model 576 -> 2 x 576, width 4, the block's norm, bias, conv bias)
    against the reference; repeats to the bit and replays the same in a CUDA graph."""
    t = _inputs(M, 576, 576, 4, torch.bfloat16, device="cuda")
    got, got_state = _run(K.decode_linear_conv, t)
    assert K.last_backend("decode_linear_conv") == "triton"
    ref, ref_state = _run(naive_decode_linear_conv, t)
    assert rel_err(got, ref) < 5e-3 and rel_err(got_state, ref_state) < 5e-3
    state = t["state"].clone()
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out = K.decode_linear_conv(t["x"], t["w"], t["nw"], 1e-5, t["b"], state, t["cw"], t["cb"])
    state.copy_(t["state"])
    g.replay()
    torch.cuda.synchronize()
    assert torch.equal(out, got) and torch.equal(state, got_state), "a CUDA-graph replay must give the eager result"
