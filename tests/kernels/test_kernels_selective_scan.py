"""Selective scan: the Triton kernels against the naive fp32 reference.

Without a GPU the Triton kernels run on CPU tensors in Triton's interpreter (tiny shapes, small
blocks so that several chunks and channel blocks are exercised); with one they run compiled on
CUDA, in fp32 here and in bf16 in the tests marked ``gpu``. Every output, the final state and
every gradient is compared by relative error (RMS of the difference over RMS of the reference).
"""

from __future__ import annotations

import pytest
import torch

import archzoo.kernels as K
from archzoo.kernels._testing import import_triton_kernels, rel_err
from archzoo.kernels.selective_scan import naive_selective_scan_fn, naive_selective_state_update

_mods, _skip = import_triton_kernels("archzoo.kernels.selective_scan.triton")
pytestmark = pytest.mark.skipif(_skip is not None, reason=_skip or "")
T = _mods[0] if _mods else None
DEV = "cuda" if torch.cuda.is_available() else "cpu"
gpu = pytest.mark.gpu
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _inputs(b, d, L, n, bc, g, D, z, bias, h0, dtype, device, seed=0):
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen)
    bc_shape = {"var": (b, n, L), "group": (b, g, n, L), "const": (d, n)}[bc]
    ins = dict(
        u=r(b, d, L),
        delta=0.5 * r(b, d, L),
        A=-(0.2 + torch.rand(d, n, generator=gen)),
        B=r(*bc_shape),
        C=r(*bc_shape),
        D=r(d) if D else None,
        z=r(b, d, L) if z else None,
        delta_bias=0.3 * r(d) if bias else None,
        initial_state=r(b, d, n) if h0 else None,
    )
    seq = ("u", "delta", "z", "B", "C")
    return {k: None if v is None else v.to(device, dtype if k in seq else torch.float32) for k, v in ins.items()}


def _run(fn, ins, softplus, last):
    """out, last state and gradients of a fixed random projection of both."""
    leaf = {k: None if v is None else v.detach().clone().requires_grad_(True) for k, v in ins.items()}
    res = fn(
        leaf["u"], leaf["delta"], leaf["A"], leaf["B"], leaf["C"], leaf["D"], leaf["z"], leaf["delta_bias"],
        softplus, last, initial_state=leaf["initial_state"],
    )  # fmt: skip
    out, hl = res if last else (res, None)
    gen = torch.Generator().manual_seed(1)
    loss = (out.float() * torch.randn(out.shape, generator=gen).to(out.device)).sum()
    if hl is not None:
        loss = loss + (hl * torch.randn(hl.shape, generator=gen).to(hl.device)).sum()
    loss.backward()
    got = {"out": out, "last_state": hl}
    got.update({f"d{k}": v.grad for k, v in leaf.items() if v is not None})
    return {k: v for k, v in got.items() if v is not None}


def _compare(ins, softplus, last, tol):
    ref_ins = {k: None if v is None else v.float() for k, v in ins.items()}
    ref = _run(naive_selective_scan_fn, ref_ins, softplus, last)
    got = _run(T.selective_scan_fn, ins, softplus, last)
    assert got.keys() == ref.keys()
    for name in ref:
        assert got[name].shape == ref[name].shape, name
        assert got[name].dtype == (ins["u"].dtype if name == "out" else got[name].dtype)
        err = rel_err(got[name], ref[name])
        assert err < tol, f"{name}: relative error {err:.2e} >= {tol:.0e}"


# (b, d, L, n, bc, g, D, z, delta_bias, softplus, initial_state, return_last_state)
CASES = {
    "full": (2, 6, 19, 3, "var", 1, True, True, True, True, True, True),
    "l1": (2, 5, 1, 4, "var", 1, True, True, True, True, False, True),
    "grouped": (1, 8, 11, 4, "group", 2, True, False, True, True, True, True),
    "grouped_odd": (2, 6, 9, 2, "group", 2, False, True, False, False, False, True),
    "const_bc": (2, 6, 10, 3, "const", 1, True, True, False, True, True, True),
    "const_bc_even_n": (2, 6, 10, 4, "const", 1, True, True, True, True, True, True),
    "bare": (1, 3, 17, 5, "var", 1, False, False, False, False, False, False),
    "block_multiple": (1, 4, 16, 4, "var", 1, True, False, True, False, False, True),
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_scan_matches_naive(case):
    b, d, L, n, bc, g, D, z, bias, sp, h0, last = CASES[case]
    ins = _inputs(b, d, L, n, bc, g, D, z, bias, h0, torch.float32, DEV)
    _compare(ins, sp, last, tol=1e-4)


@gpu
@needs_cuda
@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_scan_matches_naive_bf16_gpu(case):
    b, d, L, n, bc, g, D, z, bias, sp, h0, last = CASES[case]
    ins = _inputs(b, d, L, n, bc, g, D, z, bias, h0, torch.bfloat16, "cuda")
    _compare(ins, sp, last, tol=2e-2)


@gpu
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_scan_long_gpu(dtype):
    """Mamba-like shapes: many chunks and channel blocks, every feature on."""
    ins = _inputs(2, 160, 1000, 16, "var", 1, True, True, True, True, dtype, "cuda")
    _compare(ins, True, True, tol=1e-4 if dtype == torch.float32 else 2e-2)


def test_scan_float64():
    """float64 inputs are computed in float64 (float64 models keep their accuracy)."""
    ins = _inputs(2, 5, 11, 3, "var", 1, True, True, True, True, torch.float64, DEV)
    ins = {k: None if v is None else v.double() for k, v in ins.items()}
    args = (ins["u"], ins["delta"], ins["A"], ins["B"], ins["C"], ins["D"], ins["z"], ins["delta_bias"], True, True)
    out, last = T.selective_scan_fn(*args, initial_state=ins["initial_state"])
    ref, ref_last = naive_selective_scan_fn(*args, initial_state=ins["initial_state"])
    assert out.dtype == last.dtype == torch.float64
    assert rel_err(out, ref) < 1e-12, "out"
    assert rel_err(last, ref_last) < 1e-12, "last_state"


def test_scan_strided_inputs(monkeypatch, caplog):
    """Non-contiguous u / delta (time not the unit stride) and (b, l, n)-strided B / C: copied to rows, said
    once."""
    from archzoo.kernels import _dispatch

    b, d, L, n = 2, 5, 13, 3
    ins = _inputs(b, d, L, n, "var", 1, True, True, True, True, torch.float32, DEV)
    ins["u"] = ins["u"].transpose(1, 2).contiguous().transpose(1, 2)
    ins["delta"] = ins["delta"].transpose(1, 2).contiguous().transpose(1, 2)
    ins["B"] = ins["B"].transpose(1, 2).contiguous().transpose(1, 2)
    ins["C"] = ins["C"].transpose(1, 2).contiguous().transpose(1, 2)
    assert ins["u"].stride(-1) != 1 and ins["B"].stride(-1) != 1
    monkeypatch.setattr(_dispatch, "_LOGGED", set())
    with caplog.at_level("WARNING", logger="archzoo.kernels"):
        _compare(ins, True, True, tol=1e-4)
    msgs = [r.getMessage() for r in caplog.records if "copied on every call" in r.getMessage()]
    assert len(msgs) == 1 and "u, delta, B, C have time" in msgs[0], msgs


def test_scan_chunked_prefill_continues():
    """Scanning [0, s) then [s, L) from the returned state equals one scan of [0, L)."""
    ins = _inputs(2, 6, 21, 3, "var", 1, True, True, True, False, torch.float32, DEV)
    args = lambda sl: (
        ins["u"][..., sl], ins["delta"][..., sl], ins["A"], ins["B"][..., sl], ins["C"][..., sl], ins["D"],
        ins["z"][..., sl], ins["delta_bias"], True, True,
    )  # fmt: skip
    full, h_full = T.selective_scan_fn(*args(slice(None)))
    first, h1 = T.selective_scan_fn(*args(slice(0, 9)))
    second, h2 = T.selective_scan_fn(*args(slice(9, None)), initial_state=h1)
    assert rel_err(torch.cat([first, second], -1), full) < 1e-5, "out"
    assert rel_err(h2, h_full) < 1e-5, "last_state"


@pytest.mark.parametrize("grouped", [False, True], ids=["plain", "grouped"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["state_fp32", "state_bf16"])
def test_state_update_matches_naive(grouped, dtype):
    b, d, n, g = 2, 6, 5, 3
    gen = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=gen).to(DEV)
    state = r(b, d, n).to(dtype)
    x, dt, z = r(b, d), r(b, d), r(b, d)
    A = -(0.2 + torch.rand(d, n, generator=gen)).to(DEV)
    B, C = (r(b, g, n), r(b, g, n)) if grouped else (r(b, n), r(b, n))
    D, bias = r(d), r(d)
    s_ref, s_got = state.clone(), state.clone()
    ref = naive_selective_state_update(s_ref, x, dt, A, B, C, D, z, bias, True)
    got = T.selective_state_update(s_got, x, dt, A, B, C, D, z, bias, True)
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    assert rel_err(got, ref) < tol, "out"
    assert rel_err(s_got.float(), s_ref.float()) < tol, "state"


def test_state_update_equals_scan_steps():
    """Decode steps after a prefill reproduce the full scan (the cache invariant)."""
    ins = _inputs(2, 6, 12, 3, "group", 2, True, True, True, False, torch.float32, DEV)
    full = naive_selective_scan_fn(
        ins["u"], ins["delta"], ins["A"], ins["B"], ins["C"], ins["D"], ins["z"], ins["delta_bias"], True
    )
    _, h = T.selective_scan_fn(
        ins["u"][..., :7], ins["delta"][..., :7], ins["A"], ins["B"][..., :7], ins["C"][..., :7], ins["D"],
        ins["z"][..., :7], ins["delta_bias"], True, True,
    )  # fmt: skip
    outs = []
    for t in range(7, 12):
        outs.append(
            T.selective_state_update(
                h,
                ins["u"][..., t],
                ins["delta"][..., t],
                ins["A"],
                ins["B"][..., t],
                ins["C"][..., t],
                ins["D"],
                ins["z"][..., t],
                ins["delta_bias"],
                True,
            )  # fmt: skip
        )
    assert rel_err(torch.stack(outs, -1), full[..., 7:]) < 1e-5, "decode out"


def test_bad_inputs_raise_value_error():
    ins = _inputs(2, 6, 5, 3, "group", 2, True, True, True, False, torch.float32, "cpu")
    with pytest.raises(ValueError, match="B"):
        naive_selective_scan_fn(ins["u"], ins["delta"], ins["A"], ins["B"][:, :, :2], ins["C"])
    with pytest.raises(ValueError, match="groups"):
        K.selective_scan_fn(ins["u"], ins["delta"], ins["A"], torch.randn(2, 4, 3, 5), ins["C"])
    with pytest.raises(ValueError, match="delta"):
        K.selective_scan_fn(ins["u"], ins["delta"][:, :, :4], ins["A"], ins["B"], ins["C"])
    with pytest.raises(ValueError, match="A must be real"):
        K.selective_scan_fn(ins["u"], ins["delta"], ins["A"].to(torch.complex64), ins["B"], ins["C"])
    with pytest.raises(ValueError, match="dt_bias"):
        K.selective_state_update(torch.zeros(2, 6, 3), ins["u"][..., 0], ins["u"][..., 0], ins["A"],
                                 torch.zeros(2, 3), torch.zeros(2, 3), dt_bias=torch.zeros(5))  # fmt: skip


def test_dispatch_reports_backend(monkeypatch):
    ins = _inputs(1, 3, 4, 2, "var", 1, False, False, False, False, torch.float32, "cpu")
    args = (ins["u"], ins["delta"], ins["A"], ins["B"], ins["C"])
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    ref = K.selective_scan_fn(*args)
    assert K.last_backend("selective_scan_fn") == "naive"
    if DEV == "cpu":  # Triton is in interpreter mode here: the variable routes CPU tensors to it
        monkeypatch.setenv("TRITON_INTERPRET", "1")
        got = K.selective_scan_fn(*args)
        assert K.last_backend("selective_scan_fn") == "triton"
        assert rel_err(got, ref) < 1e-5, "out"


@pytest.mark.parametrize(
    "prefetch,reload,pair,mirror,case",
    [(False, True, False, True, "full"), (False, False, False, False, "full"), (True, True, False, True, "full"),
     (False, True, True, False, "const_bc_even_n"), (False, False, True, True, "grouped"),
     (False, False, True, False, "grouped")],
)  # fmt: skip
def test_scan_code_path_variants(monkeypatch, prefetch, reload, pair, mirror, case):
    """The kernels' variants (scan_config flags: prefetch, reload, two states per iteration, the adjoint over
    time-reversed operands) agree."""
    flags = {"PREFETCH": prefetch, "PAIR": pair}
    monkeypatch.setattr(T, "CONFIG_OVERRIDE", {"fwd": flags, "bwd": {**flags, "RELOAD": reload, "MIRROR": mirror}})
    b, d, L, n, bc, g, D, z, bias, sp, h0, last = CASES[case]
    ins = _inputs(b, d, L, n, bc, g, D, z, bias, h0, torch.float32, DEV)
    _compare(ins, sp, last, tol=1e-4)


@pytest.mark.parametrize("fwd_l,bwd_l,case", [(32, 8, "full"), (16, 16, "grouped"), (64, 16, "bare"), (32, 8, "l1")])
def test_scan_checkpoints_inside_forward_chunks(monkeypatch, fwd_l, bwd_l, case):
    """The forward stores a checkpoint every bwd_l steps inside its own fwd_l-step chunks (and at the chunk
    starts when they are equal): gradients match for lengths that end inside a sub-chunk or a chunk."""
    monkeypatch.setattr(T, "CONFIG_OVERRIDE", {"fwd": {"BLOCK_L": fwd_l}, "bwd": {"BLOCK_L": bwd_l}})
    b, d, L, n, bc, g, D, z, bias, sp, h0, last = CASES[case]
    ins = _inputs(b, d, L, n, bc, g, D, z, bias, h0, torch.float32, DEV)
    _compare(ins, sp, last, tol=1e-4)


def test_scan_pair_with_odd_n_is_logged(monkeypatch, caplog):
    """PAIR needs an even d_state; an odd one runs one state per iteration and says so, once."""
    from archzoo.kernels import _dispatch

    monkeypatch.setattr(_dispatch, "_LOGGED", set())
    monkeypatch.setattr(T, "CONFIG_OVERRIDE", {"fwd": {"PAIR": True}, "bwd": {"PAIR": True}})
    b, d, L, n, bc, g, D, z, bias, sp, h0, last = CASES["full"]  # n = 3
    ins = _inputs(b, d, L, n, bc, g, D, z, bias, h0, torch.float32, DEV)
    with caplog.at_level("WARNING", logger="archzoo.kernels"):
        _compare(ins, sp, last, tol=1e-4)
    hits = [r for r in caplog.records if "PAIR needs an even d_state" in r.getMessage()]
    assert len(hits) == 1, [r.getMessage() for r in caplog.records]


def test_scan_plan_is_reused_per_signature_and_validates_first(monkeypatch):
    """A call's plan (validation, configs, launch arguments) is built once per signature: a second call
    with new data and the same shapes, strides and dtypes reuses it and is still right; another layout
    gets its own plan; a bad input after a good call with the same shapes is still refused."""
    monkeypatch.setattr(T, "_PLANS", {})
    b, d, L, n, bc, g, D, z, bias, sp, h0, last = CASES["full"]
    for seed in (0, 1):
        ins = _inputs(b, d, L, n, bc, g, D, z, bias, h0, torch.float32, DEV, seed=seed)
        _compare(ins, sp, last, tol=1e-4)
    assert len(T._PLANS) == 1, "one signature, one plan"
    ins["u"] = ins["u"].transpose(1, 2).contiguous().transpose(1, 2)
    _compare(ins, sp, last, tol=1e-4)
    assert len(T._PLANS) == 2, "another stride, another plan"
    with pytest.raises(ValueError, match="delta_bias"):
        T.selective_scan_fn(ins["u"], ins["delta"], ins["A"], ins["B"], ins["C"], ins["D"], ins["z"],
                            ins["delta_bias"][:-1], sp, last, initial_state=ins["initial_state"])  # fmt: skip


@pytest.mark.parametrize(
    "dtypes",
    [dict(B=torch.bfloat16, C=torch.bfloat16), dict(B=torch.float32, C=torch.bfloat16),
     dict(delta=torch.bfloat16, z=torch.float16)],
    ids=["bc_bf16", "b_fp32_c_bf16", "delta_z_16bit"],
)  # fmt: skip
def test_scan_mixed_dtypes(dtypes):
    """Inputs of different dtypes: each gradient in its input's dtype. A variable dB and dC of one 16-bit
    dtype are converted from the fp32 atomic buffer at once; du / ddelta / dz of mixed dtypes are allocated
    apart."""
    ins = _inputs(2, 6, 19, 4, "var", 1, True, True, True, True, torch.float32, DEV)
    ins.update({k: ins[k].to(dt) for k, dt in dtypes.items()})
    got = _run(T.selective_scan_fn, ins, True, True)
    ref = _run(naive_selective_scan_fn, {k: None if v is None else v.float() for k, v in ins.items()}, True, True)
    for k, dt in dtypes.items():
        assert got[f"d{k}"].dtype == dt, k
    for name in ref:
        err = rel_err(got[name], ref[name])
        assert err < 2e-2, f"{name}: relative error {err:.2e}"


# Gradients summed by atomics in any order: dB / dC in fp32 then rounded to bf16; the per-channel ones in
# fp32 over the batch (exact for b = 2: two addends into zero commute, but not in general).
_ATOMIC_TOL = {"B": 1e-3, "C": 1e-3, "A": 1e-6, "D": 1e-6, "delta_bias": 1e-6}


@gpu
@needs_cuda
def test_scan_launch_cache_gpu(monkeypatch):
    """Scan forward+backward and the decode step through the launch cache (archzoo.kernels._launch) give the
    same results as through Triton's launcher, on a second call too (the cache hit); to round-off, as the
    fp32 atomics add in any order. The scan's launches go through its plan's sites (_launch.launch_site)."""
    from archzoo.kernels import _launch

    ins = _inputs(2, 64, 300, 16, "var", 1, True, True, True, True, torch.bfloat16, "cuda")
    got = {}
    for fast in (False, True, True):
        monkeypatch.setattr(_launch, "FAST_LAUNCH", fast)
        leaves = {k: v.detach().clone().requires_grad_(v.is_floating_point()) for k, v in ins.items() if v is not None}
        args = [leaves.get(k) for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")]
        out, last = T.selective_scan_fn(*args, True, True, initial_state=leaves.get("initial_state"))
        (out.float().square().sum() + last.sum()).backward()
        state = torch.zeros(2, 64, 16, device="cuda")
        step = T.selective_state_update(state, args[0][..., 0], args[1][..., 0], args[2], args[3][..., 0],
                                        args[4][..., 0], args[5], args[6][..., 0], args[7], True)  # fmt: skip
        res = [out, last, step, state] + [leaves[k].grad for k in sorted(leaves)]
        if fast not in got:
            got[fast] = res
        for name, a, b in zip(["out", "last", "step", "state", *sorted(leaves)], got[fast], res, strict=True):
            tol = _ATOMIC_TOL.get(name, 0.0)
            assert rel_err(b, a) <= tol, f"{name}: a second call differs (FAST_LAUNCH={fast})"
    for name, a, b in zip(["out", "last", "step", "state", *sorted(leaves)], got[False], got[True], strict=True):
        tol = _ATOMIC_TOL.get(name, 0.0)
        assert rel_err(b, a) <= tol, f"{name}: FAST_LAUNCH changes the result"


@gpu
@needs_cuda
def test_scan_plan_unaligned_inputs_gpu(monkeypatch):
    """One signature whose u / delta / z arrive 16-byte aligned and 2 bytes off in turn (views into longer
    rows): the site keeps the kernel compiled for aligned pointers and sends the others through launch,
    which compiles them apart; every call's output and gradients agree with the naive scan."""
    monkeypatch.setattr(T, "_PLANS", {})
    b, d, L, n = 2, 64, 300, 16
    ins = _inputs(b, d, L + 1, n, "var", 1, True, True, True, False, torch.bfloat16, "cuda")
    for off in (0, 1, 0, 1):
        res = {}
        for fn, dt in ((T.selective_scan_fn, torch.bfloat16), (naive_selective_scan_fn, torch.float32)):
            rows = {k: ins[k].to(dt, copy=True).requires_grad_(True) for k in ("u", "delta", "z")}
            v = {k: t[..., off : off + L] for k, t in rows.items()}
            assert (v["u"].data_ptr() % 16 == 0) == (off == 0)
            B, C = (ins[k][..., off : off + L].to(dt) for k in ("B", "C"))
            out = fn(v["u"], v["delta"], ins["A"], B, C, ins["D"], v["z"], ins["delta_bias"], True)
            gen = torch.Generator().manual_seed(1)
            (out.float() * torch.randn(out.shape, generator=gen).cuda()).sum().backward()
            res[fn] = [out] + [rows[k].grad for k in ("u", "delta", "z")]
        for name, a, r in zip(("out", "du", "ddelta", "dz"), *res.values(), strict=True):
            assert rel_err(a, r) < 2e-2, f"{name} at offset {off}: relative error {rel_err(a, r):.2e}"
    assert len(T._PLANS) == 1, "one signature, one plan"


def test_scan_config_adjustments_are_logged(monkeypatch, caplog):
    """A forward chunk shorter than the backward's, and PREFETCH asked for with PAIR, are changed and said so."""
    from archzoo.kernels import _dispatch

    monkeypatch.setattr(_dispatch, "_LOGGED", set())
    over = {"fwd": {"BLOCK_L": 8, "PAIR": True, "PREFETCH": True}, "bwd": {"BLOCK_L": 16}}
    monkeypatch.setattr(T, "CONFIG_OVERRIDE", over)
    b, d, L, n, bc, g, D, z, bias, sp, h0, last = CASES["const_bc_even_n"]
    ins = _inputs(b, d, L, n, bc, g, D, z, bias, h0, torch.float32, DEV)
    with caplog.at_level("WARNING", logger="archzoo.kernels"):
        _compare(ins, sp, last, tol=1e-4)
    msgs = [r.getMessage() for r in caplog.records]
    assert any("forward BLOCK_L=8 is below the backward's 16" in m for m in msgs), msgs
    assert any("PREFETCH does not combine with PAIR" in m for m in msgs), msgs


@pytest.mark.skipif(DEV != "cpu", reason="the interpreter run; on a GPU test_mamba.py::test_cuda_matches_cpu covers it")
def test_mamba_layer_feeds_the_kernels_time_contiguous_operands(monkeypatch):
    """The Mamba layer hands the conv and the scan (b, d, l) operands whose time axis is the unit stride
    (so the scan copies none of u / delta / z, and reads B / C rows coalesced), and on the Triton kernels
    (interpreter) it matches the naive path: output and every gradient."""
    from archzoo.config import MambaConfig
    from archzoo.layers import ForwardContext
    from archzoo.layers import mamba as M

    seen = {}
    scan_fn, conv_fn = M.selective_scan_fn, M.causal_conv1d_fn

    def scan(u, delta, A, B, C, D=None, z=None, **kw):
        seen["scan"] = (u.stride(-1), delta.stride(-1), z.stride(-1), B.stride(-1), C.stride(-1))
        return scan_fn(u, delta, A, B, C, D, z, **kw)

    def conv(x, *args, **kw):
        seen["conv"] = x.stride(-1)
        return conv_fn(x, *args, **kw)

    monkeypatch.setattr(M, "selective_scan_fn", scan)
    monkeypatch.setattr(M, "causal_conv1d_fn", conv)
    torch.manual_seed(0)
    m = M.Mamba(MambaConfig(d_state=4, d_conv=3, expand=2, bias=True), 8)
    x = torch.randn(2, 19, 8)
    res = {}
    for interp in ("0", "1"):
        monkeypatch.setenv("TRITON_INTERPRET", interp)
        m.zero_grad()
        xx = x.clone().requires_grad_(True)
        out = m(xx, None, ForwardContext())
        out.square().sum().backward()
        assert K.last_backend("selective_scan_fn") == ("triton" if interp == "1" else "naive")
        res[interp] = [("out", out), ("x", xx.grad)] + [(k, p.grad) for k, p in m.named_parameters()]
    assert seen["scan"] == (1, 1, 1, 1, 1) and seen["conv"] == 1, seen
    for (name, got), (_, ref) in zip(res["1"], res["0"], strict=True):
        assert rel_err(got, ref) < 1e-4, f"{name}: relative error {rel_err(got, ref):.2e}"
