"""Sweep block sizes and warps of the Triton causal conv1d (forward and backward) on one GPU.

    python tools/tune_causal_conv1d.py --lengths 1024,4096,16384 --out results/tune_conv.json

Times, at Mamba's configuration (b=4, d=2048, width 4, bias, SiLU, bf16), the forward without
autograd and the backward alone (``_conv_backward``: the zeroed dweight / dbias sums and the kernel,
which adds to them by atomics), for every (BLOCK_D, BLOCK_L, num_warps) whose groups per thread,
BLOCK_D * BLOCK_L / (8 * 32 * num_warps), lies in the given range, and the backward with one or more tiles a
program (``--tiles 1,4,16``), its tile loop pipelined or not (``--stages 0,2,3``), the next tile's loads issued
before a tile computes or not (``--prefetch 0,1``). Reports each compiled kernel's
registers / spills and the bandwidth it reaches (the forward moves x in and out once, the backward
reads x and dout and writes dx). The winners go into ``CUDA_CONFIG`` in
``archzoo/kernels/causal_conv1d/triton.py``.

Compile in parallel first (Triton's cache keeps the binaries), then time in one process:

    for i in 0 1 2 3; do python tools/tune_causal_conv1d.py --compile-only --shard $i/4 & done; wait
    python tools/tune_causal_conv1d.py --out results/tune_conv.json

Add ``--e2e`` (``--which ''`` for nothing else) to time the public op through autograd as
``archzoo bench kernels`` does, with the host time per call next to the wall time per call.

Smoke check without a GPU (Triton's interpreter, tiny shapes):

    TRITON_INTERPRET=1 python tools/tune_causal_conv1d.py --device cpu --compile-only \\
        --batch 1 --dim 8 --lengths 64 --e2e
"""

from __future__ import annotations

import argparse
import itertools
import json
import time

import torch
import triton.language as tl
from _tuning import Rows, add_common_args, check_device, make_bench  # this folder is on sys.path

from archzoo.kernels.causal_conv1d import triton as T

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def _ints(s: str) -> list[int]:
    return [int(x) for x in s.split(",")]


def _regs(key: str) -> tuple[int, int]:
    k = T.LAST_COMPILED.get(key)
    return getattr(k, "n_regs", -1), getattr(k, "n_spills", -1)


def _input(b: int, d: int, L: int, layout: str, dtype: torch.dtype, device: str, g: torch.Generator) -> torch.Tensor:
    """A (b, d, L) tensor, contiguous or channel-last."""
    if layout == "channel-last":
        return torch.randn(b, L, d, device=device, generator=g).to(dtype).transpose(1, 2)
    return torch.randn(b, d, L, device=device, generator=g).to(dtype)


def _host_us(fn, device: str) -> tuple[float, float]:
    """-> (Python time per call, wall time per call) in us: equal when the host, not the GPU, is the bottleneck."""
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    n = 30 if device == "cuda" else 1  # the interpreter only checks the script
    fn()
    sync()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    t1 = time.perf_counter()
    sync()
    t2 = time.perf_counter()
    return (t1 - t0) / n * 1e6, (t2 - t0) / n * 1e6


def _e2e(b, d, L, weight, bias, dtype, device, bench, layout, g) -> dict:
    """The public op as the benchmark calls it: forward without grad, and forward + backward."""
    from archzoo.kernels import causal_conv1d_fn, last_backend

    x, gout = (_input(b, d, L, layout, dtype, device, g) for _ in range(2))
    xg, wg, bg = (t.detach().clone().requires_grad_(True) for t in (x, weight, bias))

    def fwd():
        with torch.no_grad():
            causal_conv1d_fn(x, weight, bias, activation="silu")

    def fwdbwd():
        for t in (xg, wg, bg):
            t.grad = None
        causal_conv1d_fn(xg, wg, bg, activation="silu").backward(gout)

    config = {k: T.conv_config(k, L, device == "cuda") for k in ("fwd", "bwd")}
    row = dict(kernel="e2e", length=L, layout=layout, config=config)
    row["fwd_ms"], row["fwdbwd_ms"] = bench(fwd), bench(fwdbwd)
    row["fwd_host_us"], row["fwd_wall_us"] = _host_us(fwd, device)
    row["fwdbwd_host_us"], row["fwdbwd_wall_us"] = _host_us(fwdbwd, device)
    row["backend"] = last_backend("causal_conv1d_fn")
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--dim", type=int, default=2048)
    ap.add_argument("--width", type=int, default=4)
    ap.add_argument("--lengths", default="4096", help="comma-separated; each config is timed at every length")
    ap.add_argument("--dtype", default="bf16", choices=list(_DTYPES))
    ap.add_argument(
        "--layout",
        default="contiguous",
        choices=["contiguous", "channel-last"],
        help="x and dout (b, d, l) contiguous, or channel-last (stride 1 along d: Mamba's in_proj output transposed)",
    )
    ap.add_argument("--which", default="fwd,bwd", help="kernels to sweep: fwd, bwd, both, or '' (none)")
    ap.add_argument(
        "--e2e",
        action="store_true",
        help="also time the public causal_conv1d_fn (fwd, fwd+bwd through autograd, as archzoo bench kernels) at "
        "the defaults or --config, with the host time per call, to tell launch-bound from GPU-bound",
    )
    ap.add_argument("--config", default=None, help='JSON {"fwd": {...}, "bwd": {...}} for --e2e (else CUDA_CONFIG)')
    ap.add_argument("--fwd-block-d", default="1,2,4,8,16")
    ap.add_argument("--fwd-block-l", default="256,512,1024,2048")
    ap.add_argument("--bwd-block-d", default="1,2,4,8")
    ap.add_argument("--bwd-block-l", default="128,256,512,1024")
    ap.add_argument("--warps", default="2,4,8")
    ap.add_argument("--tiles", default="1", help="the backward's TILES values (consecutive tiles a program walks)")
    ap.add_argument("--stages", default="0", help="the backward's STAGES values (0: its tile loop as written)")
    ap.add_argument("--prefetch", default="0", help="the backward's PREFETCH values (1: the next tile's loads first)")
    ap.add_argument("--fwd-groups", default="1,4", help="keep groups per thread in this range (inclusive)")
    ap.add_argument("--bwd-groups", default="1,2")
    add_common_args(ap)
    args = ap.parse_args()
    check_device(args.device)
    b, d, W = args.batch, args.dim, args.width
    dtype = _DTYPES[args.dtype]
    lengths = _ints(args.lengths)
    acc = tl.float32
    g = torch.Generator(device=args.device).manual_seed(0)
    weight = torch.randn(d, W, device=args.device, generator=g) / W**0.5
    bias = torch.randn(d, device=args.device, generator=g)

    bench = make_bench(args.compile_only, args.rep)
    rows = Rows(args.out)
    record = rows.record

    grids = {
        "fwd": (_ints(args.fwd_block_d), _ints(args.fwd_block_l), _ints(args.fwd_groups)),
        "bwd": (_ints(args.bwd_block_d), _ints(args.bwd_block_l), _ints(args.bwd_groups)),
    }
    todo = []
    which = [k for k in args.which.split(",") if k]
    which = ["fwd", "bwd"] if which == ["both"] else which  # "both" is "fwd,bwd"
    unknown = sorted(set(which) - set(grids))
    if unknown:
        ap.error(f"--which: unknown kernels {unknown}; give fwd, bwd, both or ''")
    for key in which:
        bds, bls, (lo, hi) = grids[key]
        tiles = _ints(args.tiles) if key == "bwd" else [None]
        stages = _ints(args.stages) if key == "bwd" else [None]
        prefetch = [int(v) for v in args.prefetch.split(",")] if key == "bwd" else [None]
        for bd, bl, nw, nt, ns, pf in itertools.product(bds, bls, _ints(args.warps), tiles, stages, prefetch):
            if lo * 256 * nw <= bd * bl <= hi * 256 * nw:  # groups per thread = bd * bl / (8 * 32 * nw)
                if (ns or pf) and nt == 1:
                    continue  # one tile a program: a loop of one iteration, nothing to pipeline or prefetch
                if ns and pf:
                    continue  # two ways of the same thing: each against the plain loop
                todo.append((key, bd, bl, nw, nt, ns, pf))
    shard, n_shards = map(int, args.shard.split("/"))
    for L in lengths:  # compile-only runs every length too: BLOCK_L shrinks for l < BLOCK_L (another kernel)
        x, gout = (_input(b, d, L, args.layout, dtype, args.device, g) for _ in range(2))
        moved = {"fwd": 2 * x.numel() * x.element_size(), "bwd": 3 * x.numel() * x.element_size()}
        for j, (key, bd, bl, nw, nt, ns, pf) in enumerate(todo):
            if j % n_shards != shard:
                continue
            cfg = dict(BLOCK_D=bd, BLOCK_L=bl, num_warps=nw)
            if nt is not None:
                cfg["TILES"] = nt
            if ns:
                cfg["STAGES"] = ns
            if pf:
                cfg["PREFETCH"] = pf
            T.CONFIG_OVERRIDE.clear()
            T.CONFIG_OVERRIDE[key] = cfg
            row = dict(kernel=key, length=L, layout=args.layout, **cfg, groups_per_thread=bd * bl / (256 * nw))
            try:
                if key == "fwd":
                    row["ms"] = bench(lambda x=x: T._conv_forward(x, weight, bias, None, True, acc))
                else:
                    row["ms"] = bench(
                        lambda x=x, gout=gout: T._conv_backward(x, weight, bias, None, gout, True, acc, False)
                    )
                row["regs"], row["spills"] = _regs(key)
                if row["ms"] > 0:
                    row["GB/s"] = round(moved[key] / row["ms"] / 1e6, 1)
            except Exception as e:  # a config the compiler rejects (e.g. out of resources)
                row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"
            record(row)
        del x, gout
    T.CONFIG_OVERRIDE.clear()
    if args.e2e:
        if args.config:
            T.CONFIG_OVERRIDE.update(json.loads(args.config))
        for L in lengths:
            record(_e2e(b, d, L, weight, bias, dtype, args.device, bench, args.layout, g))
    for key in which:
        for L in lengths:
            ok = [r for r in rows.rows if r["kernel"] == key and r["length"] == L and r.get("ms", 0) > 0]
            if ok:
                print(f"best {key} l={L}: {json.dumps(min(ok, key=lambda r: r['ms']))}")


if __name__ == "__main__":
    main()
