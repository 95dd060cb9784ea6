"""The SSM ops: the selective scan and the causal conv1d (forward, forward+backward) and their decode steps
(``selective_state_update``, ``causal_conv1d_update``), against mamba_ssm and causal-conv1d (_peers)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ._common import _fold, _fwd_fwdbwd, _interleaved, _peak_mib, _rel

NOT_INSTALLED = "not installed"


def _peers() -> dict[str, object]:
    """Import the optional peers; a missing one maps to the string NOT_INSTALLED (with the reason)."""
    peers: dict[str, object] = {}
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn, selective_scan_ref

        peers["mamba_ssm"] = selective_scan_fn
        peers["mamba_ssm_ref"] = selective_scan_ref
    except Exception as e:  # ImportError, or a broken CUDA extension (an ABI mismatch raises OSError)
        peers["mamba_ssm"] = peers["mamba_ssm_ref"] = f"{NOT_INSTALLED} ({type(e).__name__}: {e})"
    try:
        from mamba_ssm.ops.triton.selective_state_update import selective_state_update

        peers["mamba_ssm_update"] = selective_state_update
    except Exception as e:
        peers["mamba_ssm_update"] = f"{NOT_INSTALLED} ({type(e).__name__}: {e})"
    try:
        from causal_conv1d import causal_conv1d_fn, causal_conv1d_update

        peers["causal_conv1d"] = causal_conv1d_fn
        peers["causal_conv1d_update"] = causal_conv1d_update
    except Exception as e:
        peers["causal_conv1d"] = peers["causal_conv1d_update"] = f"{NOT_INSTALLED} ({type(e).__name__}: {e})"
    return peers


def _scan_inputs(b: int, d: int, L: int, n: int, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    g = torch.Generator(device="cuda").manual_seed(0)
    r = lambda *s, dt=dtype: torch.randn(*s, device="cuda", generator=g, dtype=torch.float32).to(dt)
    return dict(
        u=r(b, d, L),
        delta=(0.5 * r(b, d, L, dt=torch.float32) - 4.0).to(dtype),  # softplus(delta + bias) ~ 0.01 .. 0.1
        A=-torch.exp(r(d, n, dt=torch.float32) * 0.5),
        B=r(b, n, L),
        C=r(b, n, L),
        D=r(d, dt=torch.float32),
        z=r(b, d, L),
        delta_bias=0.1 * r(d, dt=torch.float32),
    )


SCAN_ARGS = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")  # selective_scan_fn's order


def scan_leaves(L: int, b: int = 4, d: int = 2048, n: int = 16) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
    """-> (the benchmark's scan inputs as leaves needing gradients, in selective_scan_fn's order; dout)."""
    ins = _scan_inputs(b, d, L, n, torch.bfloat16)
    return tuple(ins[k].requires_grad_(True) for k in SCAN_ARGS), torch.randn(b, d, L, device="cuda").to(torch.bfloat16)


def scan_fwdbwd(fn: Callable, args: tuple[torch.Tensor, ...], gout: torch.Tensor) -> Callable[[], None]:
    """-> step(): reset the leaves' gradients, then fn's forward (softplus on) and backward, as timed here."""

    def step() -> None:
        for t in args:
            t.grad = None
        fn(*args, True).backward(gout)

    return step


def bench_scan(impls: dict[str, object], b: int, d: int, L: int, n: int, ref_max_len: int, rounds: int) -> dict:
    ins = _scan_inputs(b, d, L, n, torch.bfloat16)
    grads = {k: v.detach().clone().requires_grad_(True) for k, v in ins.items()}
    gout = torch.randn(b, d, L, device="cuda", dtype=torch.bfloat16)
    res: dict[str, dict] = {}
    outs: dict[str, torch.Tensor] = {}
    calls: dict[tuple[str, str], tuple] = {}
    for name, fn in impls.items():
        if isinstance(fn, str):
            res[name] = {"status": fn}
            continue
        if name == "mamba_ssm_ref" and L > ref_max_len:
            res[name] = {"status": f"skipped (l > --ref-max-len {ref_max_len})"}
            continue

        def call(t: dict[str, torch.Tensor], fn=fn) -> torch.Tensor:
            return fn(t["u"], t["delta"], t["A"], t["B"], t["C"], t["D"], t["z"], t["delta_bias"], True)

        def fwd(call=call) -> torch.Tensor:
            with torch.no_grad():
                return call(ins)

        fb = lambda call=call: call(grads).backward(gout)  # noqa: E731
        try:
            outs[name] = fwd()
            res[name] = {"status": "ok", "fwd_peak_mib": _peak_mib(fwd), "fwdbwd_peak_mib": _peak_mib(fb)}
        except torch.cuda.OutOfMemoryError as e:
            res[name] = {"status": f"out of memory ({str(e).splitlines()[0]})"}
            continue
        calls[name, "fwd"] = (fwd, None)
        calls[name, "fwdbwd"] = (fb, list(grads.values()))
        torch.cuda.empty_cache()
    # the PyTorch reference takes seconds per call: one round, apart
    slow = {k: v for k, v in calls.items() if k[0] == "mamba_ssm_ref"}
    timed = _interleaved({k: v for k, v in calls.items() if k not in slow}, rounds)
    timed.update(_interleaved(slow, 1))
    _fold(res, timed)
    ref = next((outs[k] for k in ("mamba_ssm", "mamba_ssm_ref") if k in outs), None)
    if ref is not None and "archzoo" in outs:
        res["archzoo"]["rel_err_vs_peer"] = _rel(outs["archzoo"].float(), ref.float())
    return res


def bench_conv(impls: dict[str, object], b: int, d: int, L: int, W: int, rounds: int) -> dict:
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(b, d, L, device="cuda", generator=g).to(torch.bfloat16)
    w = torch.randn(d, W, device="cuda", generator=g) / W**0.5
    bias = torch.randn(d, device="cuda", generator=g)
    gout = torch.randn(b, d, L, device="cuda").to(torch.bfloat16)
    xg, wg, bg = (t.detach().clone().requires_grad_(True) for t in (x, w, bias))
    calls = {name: fn if isinstance(fn, str) else (lambda fn=fn: fn(xg, wg, bg)) for name, fn in impls.items()}
    res, outs = _fwd_fwdbwd(calls, [xg, wg, bg], gout, rounds, "cuda")
    if "archzoo" in outs:
        for peer in ("causal_conv1d", "F.conv1d"):
            if peer in outs:
                res["archzoo"][f"rel_err_vs_{peer}"] = _rel(outs["archzoo"].float(), outs[peer].float())
    return res


def bench_decode(peers: dict[str, object], b: int, d: int, n: int, W: int, rounds: int) -> dict:
    from ...kernels import causal_conv1d_update, selective_state_update

    g = torch.Generator(device="cuda").manual_seed(0)
    r = lambda *s, dt=torch.bfloat16: torch.randn(*s, device="cuda", generator=g).to(dt)
    state = r(b, d, n, dt=torch.float32)
    x, dt, z = r(b, d), r(b, d), r(b, d)
    A, D, bias = -torch.rand(d, n, device="cuda") - 0.5, r(d, dt=torch.float32), r(d, dt=torch.float32)
    B, C = r(b, n), r(b, n)
    conv_state, w, cb = r(b, d, W), r(d, W, dt=torch.float32), r(d, dt=torch.float32)
    res: dict[str, dict] = {}
    calls = {}
    upd = {"archzoo": selective_state_update, "mamba_ssm (triton)": peers["mamba_ssm_update"]}
    for name, fn in upd.items():
        if isinstance(fn, str):
            res[f"selective_state_update/{name}"] = {"status": fn}
        else:
            calls[f"selective_state_update/{name}"] = (lambda fn=fn: fn(state, x, dt, A, B, C, D, z, bias, True), None)
    cupd = {"archzoo": causal_conv1d_update, "causal_conv1d": peers["causal_conv1d_update"]}
    for name, fn in cupd.items():
        if isinstance(fn, str):
            res[f"causal_conv1d_update/{name}"] = {"status": fn}
        else:
            calls[f"causal_conv1d_update/{name}"] = (lambda fn=fn: fn(x, conv_state, w, cb, "silu"), None)
    for fn, _ in calls.values():
        fn()  # compile
    for k, t in _interleaved(calls, rounds).items():
        res[k] = {"status": "ok", "ms": t["ms"], "host_ms": t["host_ms"], "rounds_ms": t["rounds_ms"]}
    return res
