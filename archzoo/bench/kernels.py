"""Benchmark archzoo's kernels against their public peers on one GPU, in one process.

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
- with ``--ops la``: chunked linear attention (``archzoo.kernels.linear_attention``) against fla's
  ``chunk_linear_attn``, both without and both with normalisation, B=4, H=8, F=Dv=64, bf16;
- with ``--ops based``: BASED (Taylor map of 16 dims to 273 features, then ``linear_attention``, as the
  layer runs it) against fla's ``parallel_based``, B=4, H=8, value dim 64, bf16;
- with ``--ops gemv``: the decode GEMV ``archzoo.kernels.decode_linear`` (RMSNorm fused for Q|K|V and gate|up)
  at the teacher's four projections, M in {1, 16}, bf16, against ``F.linear`` (cuBLAS) and RMSNorm + ``F.linear``
  compiled by inductor, timed in CUDA graphs over weights cycled through HBM (see bench_gemv), with the
  fraction of the copy bandwidth reached (weight bytes / time);
- with ``--ops gqa``: causal SDPA over 8 x 4,096 tokens with 9 query heads and 3 or 1 K/V heads, as
  ``archzoo.layers.attention.GQA_SDPA`` calls it: ``enable_gqa`` against K/V heads repeated (bench_gqa_sdpa);
- with ``--ops moe``: the MoE layer (d_model 576, d_ff 1536, 8 experts, top-2, 4,096 tokens, train mode)
  with grouped-GEMM dispatch and with the per-expert loop, against a dense SwiGLU of the same active FLOPs;
and the peak extra memory of one call. Without a GPU only la, based and moe run, at tiny shapes (a smoke
run whose times mean nothing; ``--tiny`` does the same on a GPU). Peers that are not importable are listed as
'not installed' in the table and the JSON. Prints a table with ratios (peer time / ours, so > 1
means archzoo is faster) and writes every number to --out.
"""

from __future__ import annotations

import argparse
import importlib
import json
import platform
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from ..errors import UserError
from .common import OpCounter

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


def _time_cpu(fn: Callable[[], object], grad_to_none: list[torch.Tensor] | None = None) -> tuple[float, float]:
    """-> (ms of one call by the wall clock, the same as host ms): the CPU smoke run's timer (tiny shapes, where a
    time says only that the call ran)."""
    for t in grad_to_none or ():
        t.grad = None
    t0 = time.perf_counter()
    fn()
    ms = (time.perf_counter() - t0) * 1e3
    return ms, ms


def _interleaved(calls: dict, rounds: int, device: str = "cuda") -> dict:
    """Time each of ``calls`` ({key: (fn, grad_to_none)}) in turn, ``rounds`` times over (a, b, a, b, ...).

    Why: where a call is bound by the host (the scan's forward+backward at l=1k, the conv's at short l), its
    time follows the machine's CPU, which drifts over seconds (clock, other tenants): two implementations
    timed one after the other can differ by that drift alone. Interleaved, drift reaches both alike; each
    key gets the median of its rounds, and the rounds themselves are kept."""
    per = {k: ([], []) for k in calls}
    for _ in range(rounds):
        for k, (fn, grads) in calls.items():
            ms, host = (_time if device == "cuda" else _time_cpu)(fn, grads)
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
    calls = {name: fn if isinstance(fn, str) else (lambda fn=fn: fn(xg, wg, bg)) for name, fn in impls.items()}
    res, outs = _fwd_fwdbwd(calls, [xg, wg, bg], gout, rounds, "cuda")
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
                "archzoo_mla": lambda q=q, lat=lat, L=L, R=R: decode_attention_mla(q, lat, L, R),
                "decode_attention_mqa": lambda q=q, k=k, v=v, L=L: decode_attention(q, k, v, L),
                "sdpa_masked_buffer": lambda q=q, k=k, v=v, m=mask: attend_cached(q[:, :, None], k, v, m)[:, :, 0],
            }
            res: dict = {"shape": dict(B=B, H=H, R=R, DR=DR, length=length, T_max=T_max)}
            outs = {name: fn() for name, fn in impls.items()}
            nbytes = B * length * D * 2
            for name, t in _interleaved({n: (fn, None) for n, fn in impls.items()}, rounds).items():
                res[name] = {"status": "ok", "ms": t["ms"], "host_ms": t["host_ms"], "rounds_ms": t["rounds_ms"],
                             "hbm_fraction": nbytes / (t["ms"] / 1e3) / bw["bytes_per_s"],
                             "rel_err_vs_mqa": _rel(outs[name].float(),
                                                    outs["decode_attention_mqa"].float())}  # fmt: skip
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
    for label, H, n_feat, Dv in (("h8_f64_dv64", 8, 64, 64), ("based_h9_f273_dv64", 9, 273, 64)):
        for B in batches:
            out[f"{label}_b{B}"] = _la_update_row(B, H, n_feat, Dv, rounds, bw["bytes_per_s"])
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


def bench_gqa_sdpa(rounds: int, B: int = 8, T: int = 4096, H: int = 9, kv_heads: tuple[int, ...] = (3, 1),
                   D: int = 64) -> dict:  # fmt: skip
    """Causal attention over a whole sequence with fewer K/V heads than query heads (the teacher's 9 / 3, MQA's
    9 / 1; training and prefill at the recipe's 8 x 4,096), both ways ``archzoo.layers.attention.GQA_SDPA`` calls
    SDPA: ``native`` (``enable_gqa=True``) and ``expand`` (K/V heads repeated, equal heads), with ``mha`` (9 K/V
    heads of its own: the equal-heads kernel without the repeat) beside them; forward and forward+backward, bf16.
    ``x`` = impl ms / native ms (below 1: faster than native)."""
    from ..layers import attention as attn

    res: dict = {"shape": dict(B=B, T=T, H=H, D=D, dtype="bfloat16")}
    for Hkv in kv_heads:
        g = torch.Generator(device="cuda").manual_seed(0)
        q = torch.randn(B, H, T, D, device="cuda", generator=g).to(torch.bfloat16).requires_grad_()
        k, v = (torch.randn(B, Hkv, T, D, device="cuda", generator=g).to(torch.bfloat16).requires_grad_() for _ in "kv")
        k9, v9 = (torch.randn(B, H, T, D, device="cuda", generator=g).to(torch.bfloat16).requires_grad_() for _ in "kv")
        do = torch.randn(B, H, T, D, device="cuda", generator=g).to(torch.bfloat16)

        def mode(m: str, q=q, k=k, v=v):
            def call() -> torch.Tensor:
                old, attn.GQA_SDPA = attn.GQA_SDPA, m
                try:
                    return attn.attend(q, k, v, q_pos=None, k_pos=None)
                finally:
                    attn.GQA_SDPA = old

            return call

        def mha(q=q, k9=k9, v9=v9) -> torch.Tensor:
            return F.scaled_dot_product_attention(q, k9, v9, is_causal=True)

        impls = {"native": mode("native"), "expand": mode("expand"), "mha": mha}
        rows, outs = _fwd_fwdbwd(impls, [q, k, v, k9, v9], do, rounds, "cuda")
        if "native" in outs and "expand" in outs:
            rows["expand"]["rel_err_vs_native"] = _rel(outs["expand"], outs["native"])
        for row in rows.values():
            for key in ("fwd_ms", "fwdbwd_ms"):
                r = _ratio(row, rows.get("native", {}), key)
                if r is not None:
                    row[f"x_{key.removesuffix('_ms')}"] = r
        res[f"H_kv={Hkv}"] = rows
    return res


# The teacher's (SmolLM2-135M) four projections of a decode step: name -> (N, K, RMSNorm before it).
GEMV_SHAPES = {
    "qkv": (960, 576, True),
    "o": (576, 576, False),
    "gate_up": (3072, 576, True),
    "down": (576, 1536, False),
}
GEMV_ROTATE_BYTES = 256 * 2**20  # weights a timed graph cycles through: several times the L2 (50 MB on an H200)
GEMV_REPLAYS = 20  # graph replays per timing


def bench_gemv(rounds: int, batches: tuple[int, ...] = (1, 16), eps: float = 1e-5) -> dict:
    """The decode GEMV at the teacher's four projections (the norm fused for Q|K|V and gate|up), M in ``batches``,
    bf16: ``decode_linear`` against ``F.linear`` alone (cuBLAS; the norm not counted) and against RMSNorm +
    ``F.linear`` compiled by inductor (``torch.compile``, default mode, fullgraph).

    Timed in CUDA graphs, as a captured decode step runs them: each implementation is captured as a chain of
    calls over distinct copies of the weight (``GEMV_ROTATE_BYTES`` in all, so each call reads its weight from HBM
    as it would behind 29 other layers, not from L2), the graph replayed ``GEMV_REPLAYS`` times between CUDA
    events; ms per call = that time / (replays x copies), the gaps between kernels in a graph included. The
    implementations are interleaved over ``rounds`` rounds, the median kept. ``host_ms``: the host's time to
    issue one eager call (perf_counter, the GPU running behind). ``hbm_fraction``: weight bytes / time / the copy
    bandwidth of ``measure_bandwidth``.
    """
    from .common import measure_bandwidth

    bw = measure_bandwidth("cuda")
    timing = (f"CUDA graph of one call per weight copy ({GEMV_ROTATE_BYTES // 2**20} MiB of weights cycled), "
              f"{GEMV_REPLAYS} replays, CUDA events, median of interleaved rounds")  # fmt: skip
    out: dict = {"bandwidth": bw, "timing": timing}
    for name, (N, Kd, norm) in GEMV_SHAPES.items():
        for M in batches:
            out[f"{name}_m{M}"] = _gemv_row(M, N, Kd, norm, eps, rounds, bw["bytes_per_s"])
    return out


def _capture_chain(fn: Callable, ws: list[torch.Tensor]) -> torch.cuda.CUDAGraph:
    """Warm ``fn`` up on a side stream (compile, first launches), then capture ``fn(w)`` for every w of ``ws``."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            fn(ws[0])
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for w in ws:
            fn(w)
    torch.cuda.synchronize()
    return graph


def _gemv_row(M: int, N: int, Kd: int, norm: bool, eps: float, rounds: int, bw: float) -> dict:
    from ..kernels import _dispatch, decode_linear, last_backend
    from ..kernels.decode_linear import rms_norm, torch_decode_linear
    from ..kernels.decode_linear import triton as gemv_triton

    g = torch.Generator(device="cuda").manual_seed(0)
    wbytes = N * Kd * 2
    copies = max(2, -(-GEMV_ROTATE_BYTES // wbytes))
    ws = [(torch.randn(N, Kd, device="cuda", generator=g) / Kd**0.5).to(torch.bfloat16) for _ in range(copies)]
    x = torch.randn(M, Kd, device="cuda", generator=g).to(torch.bfloat16)
    nw = (0.5 + torch.rand(Kd, device="cuda", generator=g)).to(torch.bfloat16) if norm else None

    def norm_linear(w: torch.Tensor) -> torch.Tensor:
        return F.linear(rms_norm(x, nw, eps) if norm else x, w)

    compiled = torch.compile(norm_linear, fullgraph=True, dynamic=False)
    impls: dict[str, Callable] = {
        "archzoo": lambda w: decode_linear(x, w, nw, eps),
        "cublas_f_linear": lambda w: F.linear(x, w),  # the GEMM alone: with a norm, it skips the norm's work
        "inductor_norm_linear" if norm else "inductor_linear": compiled,
    }
    res: dict = {"shape": dict(M=M, N=N, K=Kd, norm=norm, dtype="bfloat16", weight_bytes=wbytes, copies=copies)}
    ref = torch_decode_linear(x, ws[0], nw, eps)  # RMSNorm then F.linear, eager
    graphs = {}
    _dispatch.forget("decode_linear")
    for name, fn in impls.items():
        try:
            y = fn(ws[0])  # compile / warm up
            graphs[name] = _capture_chain(fn, ws)
        except Exception as e:  # report the row, go on
            res[name] = {"status": _error(e)}
            continue
        res[name] = {"status": "ok"}
        if name != "cublas_f_linear" or not norm:  # the same function as the reference
            res[name]["rel_err_vs_unfused"] = _rel(y.float(), ref.float())
        if name == "archzoo":
            res[name]["backend"] = last_backend("decode_linear")
    per: dict[str, list[float]] = {name: [] for name in graphs}
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    for _ in range(rounds):
        for name, graph in graphs.items():
            graph.replay()  # warm
            start.record()
            for _ in range(GEMV_REPLAYS):
                graph.replay()
            end.record()
            end.synchronize()
            per[name].append(start.elapsed_time(end) / (GEMV_REPLAYS * copies))
    for name, ms in per.items():
        fn = impls[name]
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for w in ws[:50]:
            fn(w)
        host = (time.perf_counter() - t0) / min(50, copies) * 1e3
        torch.cuda.synchronize()
        med = statistics.median(ms)
        res[name].update(ms=med, rounds_ms=ms, host_ms=host, hbm_fraction=wbytes / (med / 1e3) / bw)
    if res["archzoo"].get("status") == "ok":
        res["archzoo"]["plan"] = gemv_triton.launch_plan(M, N, Kd, x.device)
    del graphs
    torch.cuda.empty_cache()
    return res


# ---------------------------------------------------------------- issue 19: la, based, moe (forward, forward+backward)

TINY_LENGTHS = (64, 100)  # la / based on the CPU or with --tiny: 100 is not a multiple of the chunk
LA_TARGET = 1.1  # issue 19: fla ms / archzoo ms at least this on every cell
MOE_TARGET = 1.3  # issue 19: grouped ms / dense ms at most this, forward and forward+backward
# Dense bf16 tensor-core peak (SXM, no sparsity) by a part of the device's name; bf16_peak_fraction is left out
# for devices not listed here.
BF16_PEAK_FLOPS = {"H100": 989e12, "H200": 989e12}


def _bf16_peak(device: str) -> float | None:
    if device != "cuda":
        return None
    name = torch.cuda.get_device_name()
    return next((v for k, v in BF16_PEAK_FLOPS.items() if k in name), None)


def _error(e: BaseException) -> str:
    first = str(e).splitlines()[0][:200] if str(e) else ""
    return f"error ({type(e).__name__}: {first})"


def _fwd_fwdbwd(impls: dict[str, object], leaves: list[torch.Tensor], gout: torch.Tensor, rounds: int,
                device: str) -> tuple[dict, dict]:  # fmt: skip
    """Forward (no grad) and forward+backward (``fn().backward(gout)``, the leaves' gradients reset before each
    call) of each of ``impls`` ({name: fn() -> output, or a status string}), timed interleaved.

    -> ({name: row}, {name: forward output}). A row: status, fwd_ms / fwdbwd_ms (+ host ms and the rounds, as
    _fold puts them) and, on a GPU, the peak extra MiB of one call. An implementation that fails is reported
    ("error (...)"), as is a backward that fails (``fwdbwd_status``, its forward still timed), never raised."""
    res: dict[str, dict] = {}
    outs: dict[str, torch.Tensor] = {}
    calls: dict[tuple[str, str], tuple] = {}
    for name, fn in impls.items():
        if isinstance(fn, str):
            res[name] = {"status": fn}
            continue

        def fwd(fn=fn) -> torch.Tensor:
            with torch.no_grad():
                return fn()

        def fb(fn=fn) -> None:
            fn().backward(gout)

        try:
            outs[name] = fwd()  # compile / warm up
        except Exception as e:  # a peer whose API differs in this version, out of memory: report it, go on
            res[name] = {"status": _error(e)}
            continue
        row = res[name] = {"status": "ok"}
        calls[name, "fwd"] = (fwd, None)
        try:
            fb()
            calls[name, "fwdbwd"] = (fb, leaves)
        except Exception as e:
            row["fwdbwd_status"] = _error(e)
        for t in leaves:
            t.grad = None
        if device == "cuda":
            row["fwd_peak_mib"] = _peak_mib(fwd)
            row["fwdbwd_peak_mib"] = _peak_mib(fb) if (name, "fwdbwd") in calls else None
            torch.cuda.empty_cache()
    _fold(res, _interleaved(calls, rounds, device))
    return res, outs


def _fla(name: str) -> object:
    """``fla.ops.<module>.<fn>`` for name "module.fn", or "fla not installed (...)"."""
    module, fn = name.rsplit(".", 1)
    try:
        return getattr(importlib.import_module(f"fla.ops.{module}"), fn)
    except Exception as e:  # ImportError; or fla present but broken against this torch / triton
        return f"fla not installed ({type(e).__name__}: {e})"


def _ratio(num: dict, den: dict, key: str) -> float | None:
    ok = num.get("status") == "ok" and den.get("status") == "ok" and key in num and key in den
    return num[key] / den[key] if ok else None


def _la_inputs(B: int, T: int, H: int, F: int, Dv: int, device: str, positive: bool):
    """q, k (B, T, H, F) (elu + 1 of a normal when ``positive``: feature-mapped already, so q . z > 0 and the
    normalised form is well conditioned; a normal otherwise), v (B, T, H, Dv), bf16 leaves needing gradients,
    and the fixed output gradient (B, T, H, Dv)."""
    g = torch.Generator(device=device).manual_seed(0)
    r = lambda *s: torch.randn(*s, device=device, generator=g)  # noqa: E731
    qk = [torch.nn.functional.elu(r(B, T, H, F)) + 1.0 if positive else r(B, T, H, F) for _ in "qk"]
    q, k = (t.to(torch.bfloat16).requires_grad_() for t in qk)
    v = r(B, T, H, Dv).to(torch.bfloat16).requires_grad_()
    return q, k, v, r(B, T, H, Dv).to(torch.bfloat16)


def _io_fraction(row: dict, fwd_bytes: int, fwdbwd_bytes: int, bw: float) -> None:
    """Put hbm_fraction_fwd / _fwdbwd (the least traffic / time / copy bandwidth) into an ok row."""
    for mode, nbytes in (("fwd", fwd_bytes), ("fwdbwd", fwdbwd_bytes)):
        if row.get("status") == "ok" and f"{mode}_ms" in row:
            row[f"hbm_fraction_{mode}"] = nbytes / (row[f"{mode}_ms"] / 1e3) / bw


def bench_linear_attention(rounds: int, lengths: tuple[int, ...], device: str = "cuda", B: int = 4, H: int = 8,
                           F: int = 64, Dv: int = 64) -> dict:  # fmt: skip
    """Chunked linear attention over a sequence: ``archzoo.kernels.linear_attention`` (the Triton kernel on CUDA;
    ``backend`` in its row says what ran) against fla's ``chunk_linear_attn`` (scale=1.0: archzoo has no scale),
    both without normalisation and both with it, on the same bf16 inputs already feature-mapped (q, k = elu + 1
    of a normal). Forward (no grad) and forward+backward (``o.backward(do)``, do fixed). In the archzoo row:
    ``fla_over_ours_fwd`` / ``_fwdbwd`` = fla ms / archzoo ms (issue 19's target: >= 1.1 on every cell), the
    forward's relative error against fla's, and ``hbm_fraction_*``: the least traffic (forward: q, k, v read
    and o written once; forward+backward adds q, k, v, do read and dq, dk, dv written, all bf16) / time / copy
    bandwidth."""
    from ..kernels import last_backend, linear_attention
    from ..kernels._dispatch import forget
    from .common import measure_bandwidth

    bw = measure_bandwidth(device, nbytes=None if device == "cuda" else 2**24)
    fla = _fla("linear_attn.chunk_linear_attn")
    out: dict = {
        "shape": dict(B=B, H=H, F=F, Dv=Dv, T=list(lengths), dtype="bfloat16", q_k="elu(randn) + 1", scale=1.0),
        "target": f"fla_ms / archzoo_ms >= {LA_TARGET} on every cell",
        "bandwidth": bw,
        "fla": "ok" if not isinstance(fla, str) else fla,
        "normalize_false": {},
        "normalize_true": {},
    }
    tok = B * H * 2  # bytes per position and feature of one bf16 (B, T, H, .) tensor
    for normalize in (False, True):
        for T in lengths:
            q, k, v, do = _la_inputs(B, T, H, F, Dv, device, positive=True)
            args = (q, k, v)
            impls: dict[str, object] = {"archzoo": lambda a=args, n=normalize: linear_attention(*a, normalize=n)[0]}
            impls["fla_chunk_linear_attn"] = fla if isinstance(fla, str) else (
                lambda a=args, n=normalize, fla=fla: fla(*a, scale=1.0, normalize=n)[0])  # fmt: skip
            if device == "cuda" and T >= 16384:
                # The kernel runs one program per (value block, batch x head), walking the sequence: at B x H = 32
                # and 32-column value blocks, 64 programs for the H200's 132 SMs. Half-width blocks double them.
                impls["archzoo_bv16"] = lambda a=args, n=normalize: _with_block_v(16, linear_attention, *a, normalize=n)
            forget("linear_attention")
            res, outs = _fwd_fwdbwd(impls, [q, k, v], do, rounds, device)
            ours, peer = res["archzoo"], res["fla_chunk_linear_attn"]
            ours["backend"] = last_backend("linear_attention")
            for mode in ("fwd", "fwdbwd"):
                ours[f"fla_over_ours_{mode}"] = _ratio(peer, ours, f"{mode}_ms")
            if "fla_chunk_linear_attn" in outs and "archzoo" in outs:
                ours["rel_err_vs_fla"] = _rel(outs["archzoo"].float(), outs["fla_chunk_linear_attn"].float())
            fwd_bytes = T * tok * (2 * F + 2 * Dv)
            for row in res.values():
                _io_fraction(row, fwd_bytes, fwd_bytes + T * tok * (4 * F + 3 * Dv), bw["bytes_per_s"])
            out[f"normalize_{str(normalize).lower()}"][T] = res
    return out


def _with_block_v(bv: int, fn, *args, **kwargs) -> torch.Tensor:
    """``fn(*args, **kwargs)[0]`` with the linear-attention kernel's value blocks at most ``bv`` columns wide."""
    from ..kernels.linear_attention import triton as la_triton

    old = la_triton.MAX_BLOCK_V
    la_triton.MAX_BLOCK_V = bv
    try:
        return fn(*args, **kwargs)[0]
    finally:
        la_triton.MAX_BLOCK_V = old


def bench_based(rounds: int, lengths: tuple[int, ...], device: str = "cuda", B: int = 4, H: int = 8,
                feature_dim: int = 16, Dv: int = 64) -> dict:  # fmt: skip
    """BASED's attention as archzoo's layer runs it from a zero state: ``archzoo.kernels.based_attention`` on the raw
    q, k (16 dims; the Triton kernel on CUDA, quadratic in T, from the dot products, never expanding the 1 + 16 +
    256 = 273 Taylor features), and as it ran before that kernel (``archzoo_chunk``: the Taylor map, then
    ``linear_attention``'s chunked PyTorch form over 273 features), against fla's ``parallel_based`` (its default
    scale 16^-0.5 and use_norm: the same function, phi(q).phi(k) = 1 + s + s^2 / 2 with s = q.k / 4), forward and
    forward+backward. Ratio as for ``la``; inputs: q, k normal (B, T, H, 16), v normal (B, T, H, 64), bf16. Where
    the kernel ran, ``config`` in the archzoo row: each of its three kernels' tiles, warps and stages at that T and
    how they were chosen (autotuned on the first call of a length bucket, which the warm-up takes)."""
    from ..kernels import based_attention, last_backend, linear_attention
    from ..kernels._dispatch import forget
    from ..layers.feature_maps import build_feature_map, feature_map_dim
    from ..layers.linear_attention import LinearAttentionConfig
    from .common import measure_bandwidth

    cfg = LinearAttentionConfig(n_heads=H, head_dim=Dv, feature_map="taylor", feature_dim=feature_dim)
    q_map = build_feature_map("taylor", H, feature_dim)
    k_map = build_feature_map("taylor", H, feature_dim)
    n_feat = feature_map_dim("taylor", feature_dim)
    bw = measure_bandwidth(device, nbytes=None if device == "cuda" else 2**24)
    fla = _fla("based.parallel_based")
    out: dict = {
        "shape": dict(
            B=B,
            H=H,
            feature_dim=feature_dim,
            features=n_feat,
            Dv=Dv,
            T=list(lengths),
            dtype="bfloat16",
            eps=cfg.eps,
            chunk_size=cfg.chunk_size,
        ),  # fmt: skip
        "target": f"fla_ms / archzoo_ms >= {LA_TARGET} on every cell",
        "bandwidth": bw,
        "fla": "ok" if not isinstance(fla, str) else fla,
        "rows": {},
    }
    tok = B * H * 2
    for T in lengths:
        q, k, v, do = _la_inputs(B, T, H, feature_dim, Dv, device, positive=False)

        def ours(q=q, k=k, v=v) -> torch.Tensor:  # (B, T, H, Dv), as LinearAttention.forward from a zero state
            return based_attention(q, k, v, eps=cfg.eps, chunk_size=cfg.chunk_size)[0]

        def expanded(q=q, k=k, v=v) -> torch.Tensor:  # the layer's path before the BASED kernel
            return linear_attention(q_map(q), k_map(k), v, eps=cfg.eps, chunk_size=cfg.chunk_size)[0]

        impls: dict[str, object] = {"archzoo": ours, "archzoo_chunk": expanded}
        impls["fla_parallel_based"] = fla if isinstance(fla, str) else (
            lambda a=(q, k, v), fla=fla: fla(*a, use_norm=True))  # fmt: skip
        forget("based_attention", "linear_attention")
        res, outs = _fwd_fwdbwd(impls, [q, k, v], do, rounds, device)
        mine, peer = res["archzoo"], res["fla_parallel_based"]
        mine["backend"] = last_backend("based_attention")
        if mine["backend"] == "triton":  # each kernel's config at this T (autotuned above SHORT_T on a GPU)
            from ..kernels.based_attention.triton import last_configs

            mine["config"] = last_configs(T)
        res["archzoo_chunk"]["backend"] = f"linear_attention over {n_feat} features: {last_backend('linear_attention')}"
        for mode in ("fwd", "fwdbwd"):
            mine[f"fla_over_ours_{mode}"] = _ratio(peer, mine, f"{mode}_ms")
            res["archzoo_chunk"][f"fla_over_ours_{mode}"] = _ratio(peer, res["archzoo_chunk"], f"{mode}_ms")
        if "fla_parallel_based" in outs and "archzoo" in outs:
            mine["rel_err_vs_fla"] = _rel(outs["archzoo"].float(), outs["fla_parallel_based"].float())
        fwd_bytes = T * tok * (2 * feature_dim + 2 * Dv)
        for row in res.values():
            _io_fraction(row, fwd_bytes, fwd_bytes + T * tok * (4 * feature_dim + 3 * Dv), bw["bytes_per_s"])
        out["rows"][T] = res
    return out


def bench_moe(rounds: int, device: str = "cuda", n_tokens: int = 4096, d_model: int = 576, d_ff: int = 1536,
              n_experts: int = 8, top_k: int = 2) -> dict:  # fmt: skip
    """The MoE layer (``layers/moe.py``; MoEConfig's defaults otherwise: capacity factor 1.25, in train mode, so
    capacity limits act as in training) on ``n_tokens`` tokens, bf16, forward (no grad) and forward+backward
    (``out.backward(dout)``; the balance and z losses are not backpropagated), with its grouped-GEMM dispatch
    and with its per-expert loop (``archzoo.layers.moe.DISPATCH`` set to "grouped" / "loop" around each call and
    restored; ``MoE.last_dispatch`` recorded), against a dense SwiGLU of hidden ``top_k * d_ff`` (one SwiGLU
    with the active FLOPs of the top_k experts, not top_k SwiGLUs). Each row: ``over_dense_fwd`` /
    ``_fwdbwd`` = its ms / the dense ms (issue 19: grouped <= 1.3), and ``bf16_peak_fraction_*``: the dense
    layer's FLOPs (2 x 3 GEMMs x tokens x d_model x top_k * d_ff forward, 3x that forward+backward; the MoE's
    router and dropped assignments not counted) / time / the device's dense bf16 peak. Without the DISPATCH
    switch in ``layers/moe.py`` the loop (the layer's only path) runs and grouped is 'unavailable'.

    Also in the eager rows: ``aten_ops_fwd`` / ``_fwdbwd``, the ATen ops one call dispatches (eagerly ~10-20 us
    of host time each, most of them a kernel launch: the grouped layer is launch-bound at this size). On CUDA: the
    grouped layer and the dense one compiled (``*_compiled``, fullgraph=True, so a graph break fails the row instead
    of running eager Python between graphs; ``over_dense_compiled_*``) and compiled with mode="reduce-overhead"
    (``*_cudagraphs``: CUDA graphs, the host's launch cost gone; ``over_dense_cudagraphs_*``), and ``host_syncs`` in
    the two eager MoE rows: what torch's sync debug mode reports over one forward+backward ("none" for grouped; the
    loop reads the experts' loads on the host)."""
    from ..layers import moe as moe_mod
    from ..layers.mlp import SwiGLU
    from ..layers.moe import MoE, MoEConfig

    torch.manual_seed(0)
    layer = MoE.from_config(MoEConfig(n_experts=n_experts, top_k=top_k, d_ff=d_ff), d_model)
    layer = layer.to(device=device, dtype=torch.bfloat16).train()
    dense = SwiGLU(d_model, top_k * d_ff).to(device=device, dtype=torch.bfloat16).train()
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(n_tokens, d_model, device=device, generator=g).to(torch.bfloat16).requires_grad_()
    dout = torch.randn(n_tokens, d_model, device=device, generator=g).to(torch.bfloat16)
    has_switch = hasattr(moe_mod, "DISPATCH")

    no_switch = "unavailable (archzoo.layers.moe has no DISPATCH switch yet)"
    dname = f"dense_swiglu_{top_k * d_ff}"
    impls: dict[str, object] = {
        "archzoo_grouped": _dispatched(moe_mod, layer, x, "grouped") if has_switch else no_switch,
        "archzoo_loop": _dispatched(moe_mod, layer, x, "loop") if has_switch else (lambda: layer(x)),
        dname: lambda: dense(x),
    }
    leaves = [x, *layer.parameters(), *dense.parameters()]
    if has_switch and torch.device(device).type == "cuda":
        # As training with speed.compile runs it: the layer compiled whole (routing, sort, capacity, losses fused
        # into few kernels; fullgraph=True, so a graph break is an error in the row, not eager Python between
        # graphs), beside the dense SwiGLU compiled the same way.
        compiled_layer, compiled_dense = torch.compile(layer, fullgraph=True), torch.compile(dense, fullgraph=True)
        impls["archzoo_grouped_compiled"] = _dispatched(moe_mod, compiled_layer, x, "grouped")
        impls[f"{dname}_compiled"] = lambda: compiled_dense(x)
        # Both again in CUDA graphs (mode="reduce-overhead"): one replay per graph, so launches cost the host nothing.
        # Each call starts a new step (cudagraph_mark_step_begin) and drops the leaves' gradients first, as
        # zero_grad(set_to_none=True) does, so no gradient from an earlier replay is alive when the graph reruns.
        graphed_layer = torch.compile(layer, mode="reduce-overhead", fullgraph=True)
        graphed_dense = torch.compile(dense, mode="reduce-overhead", fullgraph=True)
        impls["archzoo_grouped_cudagraphs"] = _graph_step(_dispatched(moe_mod, graphed_layer, x, "grouped"), leaves)
        impls[f"{dname}_cudagraphs"] = _graph_step(lambda: graphed_dense(x), leaves)
    dispatch: dict[str, object] = {}
    for name in ("archzoo_grouped", "archzoo_loop"):  # which path each side took, and the drops (same routing)
        fn = impls[name]
        if isinstance(fn, str):
            continue
        try:
            with torch.no_grad():
                fn()
        except Exception:  # _fwd_fwdbwd reports it
            continue
        if not has_switch:
            dispatch[name] = "loop (the layer's only path)"
        else:
            dispatch[name] = getattr(layer, "last_dispatch", "unknown (MoE has no last_dispatch attribute yet)")
    res, outs = _fwd_fwdbwd(impls, leaves, dout, rounds, device)
    for name in ("archzoo_grouped", "archzoo_loop", dname):
        if res[name].get("status") == "ok":
            res[name].update(_aten_ops(impls[name], dout, leaves))
            if device == "cuda" and name != dname:
                res[name]["host_syncs"] = _host_syncs(impls[name], dout, leaves)
    flops = 2 * 3 * n_tokens * d_model * top_k * d_ff
    peak = _bf16_peak(device)
    for name, row in res.items():
        if name in dispatch:
            row["last_dispatch"] = dispatch[name]
        for mode, f in (("fwd", flops), ("fwdbwd", 3 * flops)):
            row[f"over_dense_{mode}"] = _ratio(row, res[dname], f"{mode}_ms")
            for kind in ("compiled", "cudagraphs"):  # compiled against compiled, graphs against graphs
                if name.endswith(f"_{kind}") and f"{dname}_{kind}" in res:
                    row[f"over_dense_{kind}_{mode}"] = _ratio(row, res[f"{dname}_{kind}"], f"{mode}_ms")
            if peak and row.get("status") == "ok" and f"{mode}_ms" in row:
                row[f"bf16_peak_fraction_{mode}"] = f / (row[f"{mode}_ms"] / 1e3) / peak
    if "archzoo_grouped" in outs and "archzoo_loop" in outs:
        res["archzoo_grouped"]["rel_err_vs_loop"] = _rel(outs["archzoo_grouped"].float(), outs["archzoo_loop"].float())
    with torch.no_grad():  # the statistics of an eager call (a CUDA graph's outputs are overwritten by its next replay)
        impls["archzoo_loop"]()
    stats = layer.last_stats
    return {
        "shape": dict(tokens=n_tokens, d_model=d_model, d_ff=d_ff, n_experts=n_experts, top_k=top_k, dtype="bfloat16"),
        "capacity": dict(
            mode="train (capacity limits act, as in training)",
            factor=layer.capacity_factor,
            per_expert=layer.capacity(n_tokens),
            drop_fraction=float(stats["drop_fraction"]) if stats else None,
        ),  # fmt: skip
        "dense_reference": f"one SwiGLU({d_model}, {top_k * d_ff}): top_k x d_ff hidden, the active FLOPs of "
        f"{top_k} experts of d_ff {d_ff}",
        "target": f"archzoo_grouped ms / dense ms <= {MOE_TARGET}, forward and forward+backward",
        "dispatch_switch": has_switch,
        "bf16_peak_flops": peak,
        "rows": {n_tokens: res},
    }


def _dispatched(moe_mod, layer: torch.nn.Module, x: torch.Tensor, mode: str) -> Callable[[], torch.Tensor]:
    """-> call(): ``layer(x)`` with ``archzoo.layers.moe.DISPATCH`` set to ``mode`` around it and restored."""

    def call() -> torch.Tensor:
        old = moe_mod.DISPATCH
        moe_mod.DISPATCH = mode
        try:
            return layer(x)
        finally:
            moe_mod.DISPATCH = old

    return call


def _graph_step(fn: Callable[[], torch.Tensor], leaves: list[torch.Tensor]) -> Callable[[], torch.Tensor]:
    """-> call(): a CUDA-graph step of ``fn`` (compiled with mode="reduce-overhead"): the leaves' gradients dropped,
    a new cudagraph step begun, then ``fn()``."""

    def call() -> torch.Tensor:
        for t in leaves:
            t.grad = None
        torch.compiler.cudagraph_mark_step_begin()
        return fn()

    return call


def _aten_ops(fn: Callable[[], torch.Tensor], gout: torch.Tensor, leaves: list[torch.Tensor]) -> dict[str, int]:
    """-> aten_ops_fwd (one ``fn()`` without gradients) and aten_ops_fwdbwd (``fn().backward(gout)``)."""
    with torch.no_grad(), OpCounter() as fwd:
        fn()
    with OpCounter() as fb:
        fn().backward(gout)
    for t in leaves:
        t.grad = None
    return {"aten_ops_fwd": fwd.n, "aten_ops_fwdbwd": fb.n}


def _host_syncs(fn: Callable[[], torch.Tensor], gout: torch.Tensor, leaves: list[torch.Tensor]) -> str:
    """What ``torch.cuda.set_sync_debug_mode("error")`` reports over one ``fn().backward(gout)``: "none", or the
    error of the first call that synchronised with the host."""
    torch.cuda.synchronize()
    mode = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        fn().backward(gout)
        return "none"
    except RuntimeError as e:
        return _error(e)
    finally:
        torch.cuda.set_sync_debug_mode(mode)
        for t in leaves:
            t.grad = None


def _fmt_ms(r: dict, key: str) -> str:
    if r.get("status") != "ok":
        return r["status"].split(" (")[0]
    if key not in r:  # this mode did not run (a peer without a backward, say): its own status, else "-"
        return r.get(f"{key.removesuffix('_ms')}_status", "-").split(" (")[0]
    return f"{r[key]:.3f}"


def _pair(r: dict, a: str, b: str, fmt: str) -> str:
    """``r[a] / r[b]`` as "x / y" with fmt, "-" for a missing or None value; "-" for a row not ok."""
    if r.get("status") != "ok":
        return "-"
    return " / ".join(format(r[k], fmt) if r.get(k) is not None else "-" for k in (a, b))


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
                return f"{r[k] / mine[k]:.2f}" if both and k in r and k in mine else "-"

            per_round = "-"
            mine_rounds = mine.get("fwdbwd_rounds_ms") or []
            if both and r.get("fwdbwd_rounds_ms") and len(r["fwdbwd_rounds_ms"]) == len(mine_rounds):
                x = [p / m for p, m in zip(r["fwdbwd_rounds_ms"], mine_rounds, strict=True)]
                per_round = f"{min(x):.2f}-{max(x):.2f}"
            peak = _pair(r, "fwd_peak_mib", "fwdbwd_peak_mib", ".0f")
            host = _pair(r, "fwd_host_ms", "fwdbwd_host_ms", ".3f")
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


def _bench_gpu_ops(args: argparse.Namespace, ops: list[str]) -> dict:
    """The ops other than la / based / moe (they need a GPU); writes args.out as it goes and prints their tables.
    -> the results, to which main adds the other ops."""
    import triton

    from .. import kernels as K
    from ..kernels.causal_conv1d import get_backend
    from ..kernels.selective_scan import triton as scan_triton

    if args.scan_config:
        scan_triton.CONFIG_OVERRIDE.update(json.loads(args.scan_config))
    peers = _peers()
    lengths = [int(s) for s in (args.lengths or DEFAULT_LENGTHS).split(",")]
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
    ssm = "scan" in ops or "conv" in ops
    for L in lengths if ssm else ():
        if "scan" in ops:
            results["selective_scan"][L] = bench_scan(scan_impls, b, d, L, n, args.ref_max_len, args.rounds)
            print(f"selective_scan l={L}: done", flush=True)
        if "conv" in ops:
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
    if ssm:  # the SSM decode steps go with the SSM ops
        results["conv_backend_archzoo"] = {"setting": get_backend(), "last_ran": K.last_backend("causal_conv1d_fn")}
        results["scan_backend_archzoo"] = K.last_backend("selective_scan_fn")
        results["decode"] = bench_decode(peers, b, d, n, W, args.rounds)
    if "decode_attention" in ops:
        results["decode_attention"] = bench_decode_attention(args.rounds)
    if "mla" in ops:
        results["mla_decode"] = bench_mla_decode(args.rounds)
    if "la_update" in ops:
        results["linear_attention_update"] = bench_linear_attention_update(args.rounds)
    if "swa" in ops:
        results["window_attention"] = bench_window_attention(args.rounds)
    if "gemv" in ops:
        results["gemv"] = bench_gemv(args.rounds)
    if "gqa" in ops:
        results["gqa_sdpa"] = bench_gqa_sdpa(args.rounds)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=2)

    print(f"\ndevice: {results['device']}; torch {results['torch']}; triton {results['triton']}")
    print(f"shape: b={b} d={d} n={n} width={W} bf16; ratio = peer ms / archzoo ms (> 1: archzoo faster)")
    for k, v in results["peers"].items():
        if v != "ok":
            print(f"peer {k}: {v}")
    if "scan" in ops:
        print(_table("selective_scan_fn (D, z, delta_bias, softplus)", results["selective_scan"]))
    if "conv" in ops:
        print(_table(f"causal_conv1d_fn (width {W}, silu; archzoo backend: {results['conv_backend_archzoo']})",
                     results["causal_conv1d"]))  # fmt: skip
    if ssm:
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
    for label, res in results.get("gemv", {}).items():
        if label not in ("bandwidth", "timing"):
            _print_ms_rows(f"decode GEMV {label} {res['shape']} (CUDA graph, weights from HBM)", res, "archzoo")
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
    if "gqa_sdpa" in results:
        res = results["gqa_sdpa"]
        print(f"\n## causal SDPA with fewer K/V heads {res['shape']} (x = impl ms / native ms)")
        for label, rows in res.items():
            if label == "shape":
                continue
            for k, r in rows.items():
                ms = f"{r['fwd_ms']:.3f} / {r['fwdbwd_ms']:.3f} ms" if "fwdbwd_ms" in r else r.get("status", "")
                xs = f" x{r['x_fwd']:.2f} / x{r['x_fwdbwd']:.2f}" if "x_fwdbwd" in r else ""
                print(f"| {label} | {k} | fwd / fwd+bwd {ms}{xs} |")
    return results


DEFAULT_LENGTHS = "1024,4096,16384"
OPS = ("scan", "conv", "decode_attention", "mla", "la_update", "swa", "gemv", "gqa", "la", "based", "moe")
CPU_OPS = ("la", "based", "moe")  # the ops that also run without a GPU (tiny shapes, a smoke run)


def main(argv: list[str] | None = None) -> int:
    """``archzoo bench kernels [options]``; argv defaults to sys.argv[1:]. -> exit status."""
    ap = argparse.ArgumentParser(prog="archzoo bench kernels", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="JSON file to write")
    ap.add_argument(
        "--lengths", default=None, help=f"sequence lengths of scan, conv, la, based (default {DEFAULT_LENGTHS}; "
        f"la and based with --tiny: {','.join(map(str, TINY_LENGTHS))})"
    )  # fmt: skip
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--dim", type=int, default=2048)
    ap.add_argument("--dstate", type=int, default=16)
    ap.add_argument("--width", type=int, default=4)
    ap.add_argument("--ref-max-len", type=int, default=1024, help="skip mamba_ssm's PyTorch reference above this")
    ap.add_argument(
        "--ops",
        default="scan,conv",
        help="ops to time, comma-separated: scan, conv, decode_attention, mla, la_update, swa, gemv (decode GEMV "
        "with fused RMSNorm at the teacher's projections vs cuBLAS and inductor), gqa (causal SDPA with 3 or 1 "
        "K/V heads: enable_gqa vs K/V repeated), la (chunked linear "
        "attention vs fla chunk_linear_attn), based (BASED vs fla parallel_based), moe (MoE grouped and loop "
        "dispatch vs dense SwiGLU); without a GPU only la, based, moe, at tiny shapes",
    )
    ap.add_argument("--rounds", type=int, default=ROUNDS, help="interleaved timing rounds per call (median kept)")
    ap.add_argument(
        "--tiny", action="store_true", help="la, based, moe at tiny shapes (a smoke run; implied without a GPU)"
    )
    ap.add_argument(
        "--scan-config",
        default=None,
        help='JSON {"fwd": {...}, "bwd": {...}} overriding the scan\'s CUDA_CONFIG (e.g. a tuner\'s result)',
    )
    args = ap.parse_args(argv)
    ops = [o.strip() for o in args.ops.split(",") if o.strip()]
    unknown = [o for o in ops if o not in OPS]
    if unknown or not ops:
        what = f"unknown op {unknown[0]!r}" if unknown else "no op"
        raise UserError(f"--ops {args.ops!r}: {what}; expected a comma-separated list of {', '.join(OPS)}")
    cuda = torch.cuda.is_available()
    if not cuda and any(o not in CPU_OPS for o in ops):
        raise UserError(f"the kernel benchmark needs a CUDA GPU (without one only --ops {','.join(CPU_OPS)} run, "
                        "at tiny shapes)")  # fmt: skip
    device, tiny = ("cuda", args.tiny) if cuda else ("cpu", True)
    if cuda and any(o not in CPU_OPS for o in ops):
        results = _bench_gpu_ops(args, ops)
    else:
        results = {
            "device": torch.cuda.get_device_name() if cuda else f"cpu ({platform.processor() or 'cpu'})",
            "torch": torch.__version__,
            "triton": _version("triton"),
            "python": platform.python_version(),
            "rounds": args.rounds,
        }
    results["tiny"] = tiny
    results["fla"] = _version("fla")
    default = ",".join(map(str, TINY_LENGTHS)) if tiny else DEFAULT_LENGTHS
    la_lengths = tuple(int(s) for s in (args.lengths or default).split(","))
    small = dict(B=1, H=2, F=16, Dv=16) if tiny else {}
    if "la" in ops:
        results["linear_attention"] = bench_linear_attention(args.rounds, la_lengths, device, **small)
        _write(args.out, results)
    if "based" in ops:
        small_based = dict(B=1, H=2, Dv=16) if tiny else {}
        results["based"] = bench_based(args.rounds, la_lengths, device, **small_based)
        _write(args.out, results)
    if "moe" in ops:
        small_moe = dict(n_tokens=128, d_model=64, d_ff=96) if tiny else {}
        results["moe"] = bench_moe(args.rounds, device, **small_moe)
    _write(args.out, results)
    _print_issue19(results)
    print(f"\nwrote {args.out}")
    return 0


def _version(module: str) -> str:
    try:
        return importlib.import_module(module).__version__
    except Exception as e:
        return f"not installed ({type(e).__name__}: {e})"


def _write(path: str, results: dict) -> None:
    with open(path, "w") as f:
        json.dump(results, f, indent=2)


def _print_issue19(results: dict) -> None:
    """The tables of la, based and moe, where they ran."""
    if any(k in results for k in ("linear_attention", "based", "moe")) and "shape" not in results:
        print(f"\ndevice: {results['device']}; torch {results['torch']}; triton {results['triton']}")
    if results.get("tiny"):
        print("tiny shapes (a smoke run: the times say only that each call ran)")
    la = results.get("linear_attention")
    for norm in ("false", "true") if la else ():
        print(_table(f"linear_attention normalize={norm.title()} {la['shape']}; x = impl ms / archzoo ms "
                     f"(fla / archzoo >= {LA_TARGET} is issue 19's target); fla: {la['fla'].split(' (')[0]}",
                     la[f"normalize_{norm}"]))  # fmt: skip
        _print_backends(la[f"normalize_{norm}"])
    based = results.get("based")
    if based:
        print(_table(f"BASED {based['shape']}; x = impl ms / archzoo ms (target fla / archzoo >= {LA_TARGET}); "
                     f"fla: {based['fla'].split(' (')[0]}", based["rows"]))  # fmt: skip
        _print_backends(based["rows"])
    moe = results.get("moe")
    if moe:
        print(_table(f"MoE {moe['shape']}, capacity {moe['capacity']}; x = impl ms / dense ms (target: grouped <= "
                     f"{MOE_TARGET}); dense = {moe['dense_reference']}", moe["rows"],
                     ours=next(k for k in next(iter(moe["rows"].values())) if k.startswith("dense"))))  # fmt: skip
        for name, r in next(iter(moe["rows"].values())).items():
            if "last_dispatch" in r:
                print(f"{name}: dispatch ran: {r['last_dispatch']}")
            if "aten_ops_fwd" in r:
                syncs = f"; host syncs: {r['host_syncs']}" if "host_syncs" in r else ""
                print(f"{name}: ATen ops fwd {r['aten_ops_fwd']}, fwd+bwd {r['aten_ops_fwdbwd']}{syncs}")


def _print_backends(rows: dict) -> None:
    for L, res in rows.items():
        r = res.get("archzoo", {})
        fla = ", ".join(f"{m} {r[f'fla_over_ours_{m}']:.2f}x" for m in ("fwd", "fwdbwd")
                        if r.get(f"fla_over_ours_{m}") is not None)  # fmt: skip
        print(f"T={L}: archzoo backend {r.get('backend')}" + (f"; fla / archzoo {fla}" if fla else ""))


if __name__ == "__main__":
    raise SystemExit(main())
