"""Benchmark archzoo's kernels against their public peers on one GPU, in one process.

The paragraph above is the description of ``archzoo bench kernels --help`` (main); the package's docstring
(archzoo/bench/kernels/__init__.py) tells the rest. _bench_gpu_ops runs and prints the ops that need a GPU.
"""

from __future__ import annotations

import argparse
import importlib
import json
import platform

import torch
import torch.nn.functional as F

from ...errors import UserError
from ._common import ROUNDS
from .attention import bench_gqa_sdpa, bench_window_attention
from .decode import bench_decode_attention, bench_gemv, bench_linear_attention_update, bench_mla_decode
from .linear import TINY_LENGTHS, bench_based, bench_linear_attention
from .moe import bench_moe
from .ssm import _peers, bench_conv, bench_decode, bench_scan
from .tables import _fmt_ms, _print_issue19, _print_ms_rows, _table


def _bench_gpu_ops(args: argparse.Namespace, ops: list[str]) -> dict:
    """The ops other than la / based / moe (they need a GPU); writes args.out as it goes and prints their tables.
    -> the results, to which main adds the other ops."""
    import triton

    from ... import kernels as K
    from ...kernels.causal_conv1d import get_backend
    from ...kernels.causal_conv1d import triton as conv_triton
    from ...kernels.selective_scan import triton as scan_triton

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
        # the conv's tiles as this process runs them (CUDA_CONFIG with conv_triton.CONFIG_ENV's override)
        "archzoo_conv_config": {
            k: {**v, **conv_triton.CONFIG_OVERRIDE.get(k, {})} for k, v in conv_triton.CUDA_CONFIG.items()
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
        title = (f"causal_conv1d_fn (width {W}, silu; archzoo backend: {results['conv_backend_archzoo']}; "
                 f"tiles: {results['archzoo_conv_config']})")  # fmt: skip
        print(_table(title, results["causal_conv1d"]))
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
