"""The decode-time ops: decode attention (GQA and MLA), the linear-attention update and the decode GEMV, each
against its peers at batch 1 and above, with the fraction of the copy bandwidth reached."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from ._common import _error, _interleaved, _rel


def bench_decode_attention(rounds: int, batches: tuple[int, ...] = (1, 64), H: int = 9, Hkv: int = 3, D: int = 64,
                           length: int = 4096, T_max: int = 8192) -> dict:  # fmt: skip
    """decode_attention vs SDPA (masked whole buffer, sliced valid length) vs FlexAttention, per batch size.

    Times by do_bench (CUDA events), interleaved as the other ops. ``hbm_fraction`` = bytes of valid K/V
    (B * H_kv * length * (D + Dv) * 2) / time / the copy bandwidth of ``measure_bandwidth``.
    """
    from ..common import measure_bandwidth

    bw = measure_bandwidth("cuda")
    out: dict = {"bandwidth": bw, "shape": dict(H=H, H_kv=Hkv, D=D, length=length, T_max=T_max, dtype="bfloat16")}
    for B in batches:
        out[B] = _decode_attention_row(B, H, Hkv, D, length, T_max, rounds, bw["bytes_per_s"])
    return out


def _decode_attention_row(B: int, H: int, Hkv: int, D: int, length: int, T_max: int, rounds: int, bw: float) -> dict:
    from ...kernels import decode_attention, last_backend
    from ...kernels.decode_attention import triton as attn_triton
    from ...layers.attention import attend_cached

    g = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(B, H, D, device="cuda", generator=g).to(torch.bfloat16)
    k = torch.randn(B, Hkv, T_max, D, device="cuda", generator=g).to(torch.bfloat16)
    v = torch.randn(B, Hkv, T_max, D, device="cuda", generator=g).to(torch.bfloat16)
    lengths = torch.full((B,), length, device="cuda", dtype=torch.int32)
    mask = torch.where(torch.arange(T_max, device="cuda") < lengths[:, None], 0.0, float("-inf"))
    mask = mask.to(torch.bfloat16)[:, None, None, :]  # (B, 1, 1, T_max) additive, as step_mask builds it
    ks, vs = k[:, :, :length], v[:, :, :length]

    def planned_splits():  # splits of T_max / n_splits positions, as before each row's own (BALANCE)
        attn_triton.CONFIG_OVERRIDE["BALANCE"] = False
        try:
            return decode_attention(q, k, v, lengths)
        finally:
            attn_triton.CONFIG_OVERRIDE.pop("BALANCE", None)

    impls: dict[str, object] = {
        "archzoo": lambda: decode_attention(q, k, v, lengths),
        "archzoo_planned_splits": planned_splits,
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
    from ...kernels import decode_attention, decode_attention_mla
    from ...layers.attention import attend_cached
    from ..common import measure_bandwidth

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
    from ..common import measure_bandwidth

    bw = measure_bandwidth("cuda")
    out: dict = {"bandwidth": bw}
    for label, H, n_feat, Dv in (("h8_f64_dv64", 8, 64, 64), ("based_h9_f273_dv64", 9, 273, 64)):
        for B in batches:
            out[f"{label}_b{B}"] = _la_update_row(B, H, n_feat, Dv, rounds, bw["bytes_per_s"])
    return out


def _la_update_row(B: int, H: int, F: int, Dv: int, rounds: int, bw: float) -> dict:
    from ...kernels import last_backend, linear_attention_update
    from ...kernels.linear_attention import naive_linear_attention_update

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
    from ..common import measure_bandwidth

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
    from ...kernels import _dispatch, decode_linear, last_backend
    from ...kernels.decode_linear import rms_norm, torch_decode_linear
    from ...kernels.decode_linear import triton as gemv_triton

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
