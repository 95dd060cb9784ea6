"""Benchmark archzoo's Triton SSM kernels against their public peers on one GPU, in one process.

    archzoo bench kernels --out results/ssm_kernels.json

Times (median of ``triton.testing.do_bench``; the implementations interleaved over --rounds rounds, the
median round kept, see _interleaved) forward and forward+backward of
- the selective scan at b=4, d=2048, n=16, bf16, l in {1k, 4k, 16k}, Mamba's configuration
  (D skip, SiLU(z) gate, delta_bias, softplus; B, C (b, n, l)): archzoo Triton vs mamba_ssm's CUDA
  ``selective_scan_fn`` and its PyTorch ``selective_scan_ref``;
- the causal conv1d (width 4, SiLU) at the same b, d, l: archzoo Triton vs the causal-conv1d
  package and ``F.conv1d``;
- the decode steps (``selective_state_update``, ``causal_conv1d_update``) at b=4, d=2048;
- with ``--ops decode_attention``: ``archzoo.kernels.decode_attention`` at B in {1, 64}, 9 query / 3 KV
  heads, D=64, every row 4k valid positions in an 8k buffer, bf16, against SDPA over the whole buffer with
  a length mask (the decode step's form today), SDPA over the sliced valid length, and FlexAttention
  with a length block mask; with the fraction of the copy bandwidth reached (valid K/V bytes / time);
and the peak extra memory of one call. Peers that are not importable are listed as
'not installed' in the table and the JSON. Prints a table with ratios (peer time / ours, so > 1
means archzoo is faster) and writes every number to --out.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from ..errors import UserError

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


def _peak_mib(fn: Callable[[], object]) -> float:
    """The peak memory one call allocates beyond what exists already (MiB); the first call compiles / warms up."""
    fn()
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def _time(fn: Callable[[], object], grad_to_none: list[torch.Tensor] | None = None) -> tuple[float, float]:
    """-> (median ms by do_bench, host ms per call)."""
    import triton.testing

    ms = triton.testing.do_bench(fn, warmup=25, rep=ROUND_MS, grad_to_none=grad_to_none, return_mode="median")
    # Host time: the wall time of issuing one call while the GPU runs behind (no synchronisation inside the
    # loop); where it exceeds the GPU time the call is host-bound and do_bench's figure is this one.
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(20):
        for t in grad_to_none or ():
            t.grad = None
        fn()
    host = (time.perf_counter() - t0) / 20 * 1e3
    torch.cuda.synchronize()
    return ms, host


ROUNDS = 5  # --rounds
ROUND_MS = 200  # do_bench's measuring time per call and round


def _interleaved(calls: dict, rounds: int) -> dict:
    """Time each of ``calls`` ({key: (fn, grad_to_none)}) in turn, ``rounds`` times over (a, b, a, b, ...).

    Why: where a call is bound by the host (the scan's forward+backward at l=1k, the conv's at short l), its
    time follows the machine's CPU, which drifts over seconds (clock, other tenants): two implementations
    timed one after the other can differ by that drift alone. Interleaved, drift reaches both alike; each
    key gets the median of its rounds, and the rounds themselves are kept."""
    per = {k: ([], []) for k in calls}
    for _ in range(rounds):
        for k, (fn, grads) in calls.items():
            ms, host = _time(fn, grads)
            per[k][0].append(ms)
            per[k][1].append(host)
    return {
        k: {"ms": statistics.median(m), "host_ms": statistics.median(h), "rounds_ms": m} for k, (m, h) in per.items()
    }


def _rel(x: torch.Tensor, ref: torch.Tensor) -> float:
    x, ref = x.double(), ref.double()
    return ((x - ref).pow(2).mean().sqrt() / ref.pow(2).mean().sqrt()).item()


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


def _fold(res: dict, timed: dict) -> None:
    """Put _interleaved's {(impl, "fwd" | "fwdbwd"): timing} into res[impl] as fwd_ms, fwd_host_ms, fwd_rounds_ms..."""
    for (name, mode), t in timed.items():
        res[name].update({f"{mode}_ms": t["ms"], f"{mode}_host_ms": t["host_ms"], f"{mode}_rounds_ms": t["rounds_ms"]})


def bench_conv(impls: dict[str, object], b: int, d: int, L: int, W: int, rounds: int) -> dict:
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(b, d, L, device="cuda", generator=g).to(torch.bfloat16)
    w = torch.randn(d, W, device="cuda", generator=g) / W**0.5
    bias = torch.randn(d, device="cuda", generator=g)
    gout = torch.randn(b, d, L, device="cuda").to(torch.bfloat16)
    xg, wg, bg = (t.detach().clone().requires_grad_(True) for t in (x, w, bias))
    res: dict[str, dict] = {}
    outs: dict[str, torch.Tensor] = {}
    calls: dict[tuple[str, str], tuple] = {}
    for name, fn in impls.items():
        if isinstance(fn, str):
            res[name] = {"status": fn}
            continue

        def fwd(fn=fn) -> torch.Tensor:
            with torch.no_grad():
                return fn(x, w, bias)

        fb = lambda fn=fn: fn(xg, wg, bg).backward(gout)  # noqa: E731
        outs[name] = fwd()
        res[name] = {"status": "ok", "fwd_peak_mib": _peak_mib(fwd), "fwdbwd_peak_mib": _peak_mib(fb)}
        calls[name, "fwd"] = (fwd, None)
        calls[name, "fwdbwd"] = (fb, [xg, wg, bg])
    _fold(res, _interleaved(calls, rounds))
    if "archzoo" in outs:
        for peer in ("causal_conv1d", "F.conv1d"):
            if peer in outs:
                res["archzoo"][f"rel_err_vs_{peer}"] = _rel(outs["archzoo"].float(), outs[peer].float())
    return res


def bench_decode(peers: dict[str, object], b: int, d: int, n: int, W: int, rounds: int) -> dict:
    from ..kernels import causal_conv1d_update, selective_state_update

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


def bench_decode_attention(rounds: int, batches: tuple[int, ...] = (1, 64), H: int = 9, Hkv: int = 3, D: int = 64,
                           length: int = 4096, T_max: int = 8192) -> dict:  # fmt: skip
    """decode_attention vs SDPA (masked whole buffer, sliced valid length) vs FlexAttention, per batch size.

    Times by do_bench (CUDA events), interleaved as the other ops. ``hbm_fraction`` = bytes of valid K/V
    (B * H_kv * length * (D + Dv) * 2) / time / the copy bandwidth of ``measure_bandwidth``.
    """
    from .common import measure_bandwidth

    bw = measure_bandwidth("cuda")
    out: dict = {"bandwidth": bw, "shape": dict(H=H, H_kv=Hkv, D=D, length=length, T_max=T_max, dtype="bfloat16")}
    for B in batches:
        out[B] = _decode_attention_row(B, H, Hkv, D, length, T_max, rounds, bw["bytes_per_s"])
    return out


def _decode_attention_row(B: int, H: int, Hkv: int, D: int, length: int, T_max: int, rounds: int, bw: float) -> dict:
    from ..kernels import decode_attention, last_backend
    from ..kernels.decode_attention import triton as attn_triton
    from ..layers.attention import attend_cached

    g = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(B, H, D, device="cuda", generator=g).to(torch.bfloat16)
    k = torch.randn(B, Hkv, T_max, D, device="cuda", generator=g).to(torch.bfloat16)
    v = torch.randn(B, Hkv, T_max, D, device="cuda", generator=g).to(torch.bfloat16)
    lengths = torch.full((B,), length, device="cuda", dtype=torch.int32)
    mask = torch.where(torch.arange(T_max, device="cuda") < lengths[:, None], 0.0, float("-inf"))
    mask = mask.to(torch.bfloat16)[:, None, None, :]  # (B, 1, 1, T_max) additive, as step_mask builds it
    ks, vs = k[:, :, :length], v[:, :, :length]
    impls: dict[str, object] = {
        "archzoo": lambda: decode_attention(q, k, v, lengths),
        "sdpa_masked_buffer": lambda: attend_cached(q[:, :, None], k, v, mask)[:, :, 0],
        "sdpa_sliced_length": lambda: attend_cached(q[:, :, None], ks, vs, None)[:, :, 0],  # no mask,
    }
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention

        flex = torch.compile(flex_attention, dynamic=False)
        bm = create_block_mask(lambda b, h, qi, kv: kv < lengths[b], B, None, 1, T_max, device="cuda")
        impls["flex_attention"] = lambda: flex(q[:, :, None], k, v, block_mask=bm, enable_gqa=True)[:, :, 0]
        impls["flex_attention"]()
    except Exception as e:  # flex's decode path varies across torch versions: report it, do not fail
        impls["flex_attention"] = f"error ({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''})"
    res: dict = {}
    outs: dict = {}
    calls = {}
    for name, fn in impls.items():
        if isinstance(fn, str):
            res[name] = {"status": fn}
            continue
        outs[name] = fn()  # compile / warm up
        calls[name] = (fn, None)
    nbytes = B * Hkv * length * 2 * D * 2  # the valid K and V, bf16
    for name, t in _interleaved(calls, rounds).items():
        res[name] = {"status": "ok", "ms": t["ms"], "host_ms": t["host_ms"], "rounds_ms": t["rounds_ms"],
                     "valid_kv_bytes": nbytes, "hbm_fraction": nbytes / (t["ms"] / 1e3) / bw}  # fmt: skip
    for name in outs:
        if name != "sdpa_sliced_length":
            res[name]["rel_err_vs_sdpa_sliced"] = _rel(outs[name].float(), outs["sdpa_sliced_length"].float())
    res["archzoo"]["backend"] = last_backend("decode_attention")
    res["archzoo"]["split_plan"] = list(attn_triton.split_plan(B, Hkv, T_max, q.device))
    return res


def bench_mla_decode(rounds: int, batches: tuple[int, ...] = (1, 64), H: int = 9, length: int = 4096,
                     T_max: int = 8192) -> dict:  # fmt: skip
    """MLA's absorbed decode attention at ranks 64 / 128 / 256 (+ RoPE 32): ``decode_attention_mla`` (the latent
    read once, key in two parts) against ``decode_attention`` over the latent as one MQA head (key = the row,
    value = its first R columns, read again) and masked SDPA over the whole buffer (the step's form before
    the kernels). ``hbm_fraction``: the valid latent rows read once / time / copy bandwidth."""
    from ..kernels import decode_attention, decode_attention_mla
    from ..layers.attention import attend_cached
    from .common import measure_bandwidth

    bw = measure_bandwidth("cuda")
    out: dict = {"bandwidth": bw}
    for R in (64, 128, 256):
        for B in batches:
            DR, D = 32, R + 32
            g = torch.Generator(device="cuda").manual_seed(0)
            q = torch.randn(B, H, D, device="cuda", generator=g).to(torch.bfloat16)
            lat = torch.randn(B, T_max, D, device="cuda", generator=g).to(torch.bfloat16)
            L = torch.full((B,), length, device="cuda", dtype=torch.int32)
            mask = torch.where(torch.arange(T_max, device="cuda") < L[:, None], 0.0, float("-inf"))
            mask = mask.to(torch.bfloat16)[:, None, None, :]
            k, v = lat[:, None], lat[:, None, :, :R]
            impls = {
                "archzoo_mla": lambda: decode_attention_mla(q, lat, L, R),
                "decode_attention_mqa": lambda: decode_attention(q, k, v, L),
                "sdpa_masked_buffer": lambda: attend_cached(q[:, :, None], k, v, mask)[:, :, 0],
            }
            res: dict = {"shape": dict(B=B, H=H, R=R, DR=DR, length=length, T_max=T_max)}
            outs = {name: fn() for name, fn in impls.items()}
            nbytes = B * length * D * 2
            for name, t in _interleaved({n: (fn, None) for n, fn in impls.items()}, rounds).items():
                res[name] = {"status": "ok", "ms": t["ms"], "host_ms": t["host_ms"], "rounds_ms": t["rounds_ms"],
                             "hbm_fraction": nbytes / (t["ms"] / 1e3) / bw["bytes_per_s"],
                             "rel_err_vs_mqa": _rel(outs[name].float(), outs["decode_attention_mqa"].float())}  # fmt: skip
            out[f"r{R}_b{B}"] = res
    return out


def bench_linear_attention_update(rounds: int, batches: tuple[int, ...] = (1, 64)) -> dict:
    """One linear-attention decode step: archzoo's Triton update against the PyTorch update (eager, and
    compiled as a decode step compiled it before the kernel) and fla's ``fused_recurrent_linear_attn`` (T = 1,
    when installed), without normalisation on every side (fla's recurrent form has none), bf16 q / k / v, fp32
    state. Shapes: fla's benchmark shape (8 heads, F = Dv = 64) and BASED's (273 Taylor features, Dv = 64).
    ``hbm_fraction``: the state read and written once (2 x B x H x F x Dv x 4 bytes) / time / copy bandwidth.
    """
    from .common import measure_bandwidth

    bw = measure_bandwidth("cuda")
    out: dict = {"bandwidth": bw}
    for label, H, F, Dv in (("h8_f64_dv64", 8, 64, 64), ("based_h9_f273_dv64", 9, 273, 64)):
        for B in batches:
            out[f"{label}_b{B}"] = _la_update_row(B, H, F, Dv, rounds, bw["bytes_per_s"])
    return out


def _la_update_row(B: int, H: int, F: int, Dv: int, rounds: int, bw: float) -> dict:
    from ..kernels import last_backend, linear_attention_update
    from ..kernels.linear_attention import naive_linear_attention_update

    g = torch.Generator(device="cuda").manual_seed(0)
    q, k = (torch.rand(B, H, F, device="cuda", generator=g).to(torch.bfloat16) for _ in range(2))
    v = torch.randn(B, H, Dv, device="cuda", generator=g).to(torch.bfloat16)
    S = torch.randn(B, H, F, Dv, device="cuda", generator=g)
    z = torch.rand(B, H, F, device="cuda", generator=g)
    compiled = torch.compile(naive_linear_attention_update, fullgraph=True)
    impls: dict[str, object] = {
        "archzoo": lambda: linear_attention_update(S, z, q, k, v, False),
        "pytorch": lambda: naive_linear_attention_update(S, z, q, k, v, False),
        "pytorch_compiled": lambda: compiled(S, z, q, k, v, False),
    }
    try:
        from fla.ops.linear_attn import fused_recurrent_linear_attn

        S_fla = S.clone()

        def fla_step():
            o, _ = fused_recurrent_linear_attn(q[:, None], k[:, None], v[:, None], scale=1.0, initial_state=S_fla,
                                               output_final_state=True, normalize=False)  # fmt: skip
            return o[:, 0]

        impls["fla_fused_recurrent"] = fla_step
    except ImportError as e:
        impls["fla_fused_recurrent"] = f"not installed ({e})"
    res: dict = {"shape": dict(B=B, H=H, F=F, Dv=Dv)}
    calls = {}
    for name, fn in impls.items():
        if isinstance(fn, str):
            res[name] = {"status": fn}
            continue
        try:
            fn()  # compile / warm up
        except Exception as e:  # a peer whose API differs in this version: report it, do not fail
            res[name] = {"status": f"error ({type(e).__name__}: {str(e)[:200]})"}
            continue
        calls[name] = (fn, None)
    nbytes = 2 * B * H * F * Dv * 4
    for name, t in _interleaved(calls, rounds).items():
        res[name] = {"status": "ok", "ms": t["ms"], "host_ms": t["host_ms"], "rounds_ms": t["rounds_ms"],
                     "state_bytes_rw": nbytes, "hbm_fraction": nbytes / (t["ms"] / 1e3) / bw}  # fmt: skip
    res["archzoo"]["backend"] = last_backend("linear_attention_update")
    return res


def bench_window_attention(rounds: int, B: int = 4, H: int = 9, Hkv: int = 3, D: int = 64, T: int = 16384,
                           window: int = 512) -> dict:  # fmt: skip
    """Sliding-window attention over a whole sequence (training, prefill): archzoo's (FlexAttention with a
    causal + window block mask, ``layers/window.py``) against full causal SDPA (flash; what the window saves
    over) and SDPA with the boolean window mask (the reference), forward and forward+backward, bf16."""
    from ..kernels import last_backend
    from ..layers.window import sdpa_window, window_attention

    g = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(B, H, T, D, device="cuda", generator=g).to(torch.bfloat16).requires_grad_()
    k, v = (torch.randn(B, Hkv, T, D, device="cuda", generator=g).to(torch.bfloat16).requires_grad_() for _ in "kv")
    do = torch.randn(B, H, T, D, device="cuda", generator=g).to(torch.bfloat16)
    impls = {
        "archzoo": lambda: window_attention(q, k, v, window),
        "sdpa_causal_full": lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True),
        "sdpa_window_mask": lambda: sdpa_window(q, k, v, window),
    }
    res: dict = {"shape": dict(B=B, H=H, H_kv=Hkv, D=D, T=T, window=window, dtype="bfloat16")}
    fwd, both = {}, {}
    for name, fn in impls.items():
        try:
            fn().backward(do)  # compile / warm up
        except Exception as e:  # report the variant, go on
            res[name] = {"status": f"error ({type(e).__name__}: {str(e)[:200]})"}
            continue
        fwd[name] = (lambda fn=fn: fn(), None)
        both[name] = (lambda fn=fn: fn().backward(do), [q, k, v])
    t_fwd, t_both = _interleaved(fwd, rounds), _interleaved(both, rounds)
    for name in fwd:
        res[name] = {"status": "ok", "fwd_ms": t_fwd[name]["ms"], "fwdbwd_ms": t_both[name]["ms"]}
    res["archzoo"] = {**res.get("archzoo", {}), "backend": last_backend("sliding_window_attention")}
    return res


def _fmt_ms(r: dict, key: str) -> str:
    return f"{r[key]:.3f}" if r.get("status") == "ok" else r["status"].split(" (")[0]


def _table(title: str, rows: dict[int, dict], ours: str = "archzoo") -> str:
    head = (
        "| l | impl | fwd ms | fwd+bwd ms | fwd x | fwd+bwd x | fwd+bwd x per round | peak MiB fwd / fwd+bwd "
        "| host ms fwd / fwd+bwd |"
    )
    lines = [f"\n## {title}", head, "|---|---|---|---|---|---|---|---|---|"]
    for L, res in rows.items():
        mine = res.get(ours, {})
        for name, r in res.items():
            both = r.get("status") == "ok" and mine.get("status") == "ok"

            def ratio(k: str, r: dict = r, mine: dict = mine, both: bool = both) -> str:
                return f"{r[k] / mine[k]:.2f}" if both else "-"

            per_round = "-"
            if both and r.get("fwdbwd_rounds_ms") and len(r["fwdbwd_rounds_ms"]) == len(mine["fwdbwd_rounds_ms"]):
                x = [p / m for p, m in zip(r["fwdbwd_rounds_ms"], mine["fwdbwd_rounds_ms"], strict=True)]
                per_round = f"{min(x):.2f}-{max(x):.2f}"
            ok = r.get("status") == "ok"
            peak = f"{r['fwd_peak_mib']:.0f} / {r['fwdbwd_peak_mib']:.0f}" if ok else "-"
            host = f"{r['fwd_host_ms']:.3f} / {r['fwdbwd_host_ms']:.3f}" if ok else "-"
            lines.append(
                f"| {L} | {name} | {_fmt_ms(r, 'fwd_ms')} | {_fmt_ms(r, 'fwdbwd_ms')} | {ratio('fwd_ms')} "
                f"| {ratio('fwdbwd_ms')} | {per_round} | {peak} | {host} |"
            )
    return "\n".join(lines)


def _print_ms_rows(title: str, res: dict, ours_key: str) -> None:
    """One table of ``{impl: {status, ms, hbm_fraction}}``: ms, the ratio to ``ours_key`` and the bandwidth."""
    ours = res[ours_key]
    print(f"\n## {title}; x = impl ms / {ours_key} ms")
    for k, r in res.items():
        if k == "shape":
            continue
        ok = r.get("status") == "ok"
        x = f" x{r['ms'] / ours['ms']:.2f}" if ok and ours.get("status") == "ok" else ""
        hbm = f" {r['hbm_fraction']:.0%} of copy bandwidth" if ok and "hbm_fraction" in r else ""
        print(f"| {k} | {r['ms']:.3f} ms{x}{hbm} |" if ok else f"| {k} | {r.get('status')} |")


def main(argv: list[str] | None = None) -> int:
    """``archzoo bench kernels [options]``; argv defaults to sys.argv[1:]. -> exit status."""
    ap = argparse.ArgumentParser(prog="archzoo bench kernels", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="JSON file to write")
    ap.add_argument("--lengths", default="1024,4096,16384")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--dim", type=int, default=2048)
    ap.add_argument("--dstate", type=int, default=16)
    ap.add_argument("--width", type=int, default=4)
    ap.add_argument("--ref-max-len", type=int, default=1024, help="skip mamba_ssm's PyTorch reference above this")
    ap.add_argument(
        "--ops",
        default="scan,conv",
        help="ops to time: scan, conv, decode_attention, mla, la_update, swa (comma-separated)",
    )
    ap.add_argument("--rounds", type=int, default=ROUNDS, help="interleaved timing rounds per call (median kept)")
    ap.add_argument(
        "--scan-config",
        default=None,
        help='JSON {"fwd": {...}, "bwd": {...}} overriding the scan\'s CUDA_CONFIG (e.g. a tuner\'s result)',
    )
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        raise UserError("the kernel benchmark needs a CUDA GPU")

    import triton

    from .. import kernels as K
    from ..kernels.causal_conv1d import get_backend
    from ..kernels.selective_scan import triton as scan_triton

    if args.scan_config:
        scan_triton.CONFIG_OVERRIDE.update(json.loads(args.scan_config))
    peers = _peers()
    lengths = [int(s) for s in args.lengths.split(",")]
    b, d, n, W = args.batch, args.dim, args.dstate, args.width
    scan_impls = {
        "archzoo": K.selective_scan_fn,
        "mamba_ssm": peers["mamba_ssm"],
        "mamba_ssm_ref": peers["mamba_ssm_ref"],
    }
    f_conv = lambda x, w, bias: F.silu(F.conv1d(x, w.unsqueeze(1).to(x.dtype), bias.to(x.dtype), padding=W - 1,
                                                groups=x.shape[1])[..., : x.shape[-1]])  # fmt: skip
    pkg = peers["causal_conv1d"]
    conv_impls = {
        "archzoo": lambda x, w, bias: K.causal_conv1d_fn(x, w, bias, activation="silu"),
        "causal_conv1d": pkg if isinstance(pkg, str) else (lambda x, w, bias: pkg(x, w, bias, activation="silu")),
        "F.conv1d": f_conv,
    }
    results = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "python": platform.python_version(),
        "shape": {"b": b, "d": d, "n": n, "width": W, "dtype": "bfloat16"},
        "rounds": args.rounds,
        "archzoo_scan_config": {
            k: {**v, **scan_triton.CONFIG_OVERRIDE.get(k, {})} for k, v in scan_triton.CUDA_CONFIG.items()
        },
        "peers": {k: ("ok" if not isinstance(v, str) else v) for k, v in peers.items()},
        "selective_scan": {},
        "causal_conv1d": {},
    }
    for L in lengths:
        if "scan" in args.ops:
            results["selective_scan"][L] = bench_scan(scan_impls, b, d, L, n, args.ref_max_len, args.rounds)
            print(f"selective_scan l={L}: done", flush=True)
        if "conv" in args.ops:
            results["causal_conv1d"][L] = bench_conv(conv_impls, b, d, L, W, args.rounds)
            print(f"causal_conv1d l={L}: done", flush=True)
        # Written after every length, so a run cut short by a time limit still leaves its rows.
        print(
            json.dumps(
                {
                    "l": L,
                    "selective_scan": results["selective_scan"].get(L),
                    "causal_conv1d": results["causal_conv1d"].get(L),
                }
            ),
            flush=True,
        )
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)
    results["conv_backend_archzoo"] = {"setting": get_backend(), "last_ran": K.last_backend("causal_conv1d_fn")}
    results["scan_backend_archzoo"] = K.last_backend("selective_scan_fn")
    results["decode"] = bench_decode(peers, b, d, n, W, args.rounds)
    if "decode_attention" in args.ops:
        results["decode_attention"] = bench_decode_attention(args.rounds)
    if "mla" in args.ops.split(","):
        results["mla_decode"] = bench_mla_decode(args.rounds)
    if "la_update" in args.ops:
        results["linear_attention_update"] = bench_linear_attention_update(args.rounds)
    if "swa" in args.ops:
        results["window_attention"] = bench_window_attention(args.rounds)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=2)

    print(f"\ndevice: {results['device']}; torch {results['torch']}; triton {results['triton']}")
    print(f"shape: b={b} d={d} n={n} width={W} bf16; ratio = peer ms / archzoo ms (> 1: archzoo faster)")
    for k, v in results["peers"].items():
        if v != "ok":
            print(f"peer {k}: {v}")
    print(_table("selective_scan_fn (D, z, delta_bias, softplus)", results["selective_scan"]))
    print(_table(f"causal_conv1d_fn (width {W}, silu; archzoo backend: {results['conv_backend_archzoo']})",
                 results["causal_conv1d"]))  # fmt: skip
    print(f"\n## decode step (b={b}, d={d})")
    for k, r in results["decode"].items():
        host = f" (host {r['host_ms']:.3f} ms)" if r.get("status") == "ok" else ""
        print(f"| {k} | {_fmt_ms(r, 'ms')} ms{host} |")
    for B, res in results.get("decode_attention", {}).items():
        if isinstance(B, int):
            _print_ms_rows(f"decode_attention B={B} (9/3 heads, D=64, 4k valid of 8k, bf16)", res, "archzoo")
    for label, res in results.get("mla_decode", {}).items():
        if label != "bandwidth":
            _print_ms_rows(f"MLA decode {label} (rank + RoPE 32, 9 heads, 4k valid of 8k, bf16)", res, "archzoo_mla")
    for label, res in results.get("linear_attention_update", {}).items():
        if label != "bandwidth":
            _print_ms_rows(f"linear_attention_update {label} (T=1, no normalisation)", res, "archzoo")
    if "window_attention" in results:
        res = results["window_attention"]
        ours = res.get("archzoo", {})
        print(f"\n## window attention {res['shape']} (x = impl ms / archzoo ms; archzoo ran {ours.get('backend')})")
        for k, r in res.items():
            if k == "shape":
                continue
            ok = r.get("status") == "ok" and ours.get("status") == "ok"
            xs = f" x{r['fwd_ms'] / ours['fwd_ms']:.2f} / x{r['fwdbwd_ms'] / ours['fwdbwd_ms']:.2f}" if ok else ""
            ms = f"{r['fwd_ms']:.3f} / {r['fwdbwd_ms']:.3f} ms" if r.get("status") == "ok" else r.get("status", "")
            print(f"| {k} | fwd / fwd+bwd {ms}{xs} |")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
