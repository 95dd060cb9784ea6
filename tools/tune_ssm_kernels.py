"""Sweep block sizes, warps and code-path flags of the Triton selective scan on one GPU.

    python tools/tune_ssm_kernels.py --length 4096 --out results/tune.json

Times the inference forward (no checkpoints) and, separately, the backward kernel alone (from the
checkpoints of the default forward, which stores them every backward BLOCK_L steps; its time with
those checkpoints is reported as fwd_ckpt_ms), at Mamba's configuration (D, z, delta_bias,
softplus, B / C (b, n, l)), and reports each compiled kernel's registers and spills, which is
where the backward's cost hides. The winners go into ``CUDA_CONFIG`` in
``archzoo/kernels/selective_scan/triton.py``.
"""

from __future__ import annotations

import argparse
import itertools
import json

import torch
from _tuning import Rows, add_common_args, check_device, make_bench  # this folder is on sys.path

from archzoo.kernels.selective_scan import triton as T


def _ints(s: str) -> list[int]:
    return [int(x) for x in s.split(",")]


def _regs(key: str) -> tuple[int, int]:
    k = T.LAST_COMPILED.get(key)
    return getattr(k, "n_regs", -1), getattr(k, "n_spills", -1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--dim", type=int, default=2048)
    ap.add_argument("--dstate", type=int, default=16)
    ap.add_argument("--length", type=int, default=4096)
    ap.add_argument("--top", type=int, default=0, help="with --from-json: only time the top K configs of that file")
    ap.add_argument("--from-json", default=None, help="a previous --out file whose best configs to re-time")
    ap.add_argument("--which", default="fwd,bwd")
    ap.add_argument("--fwd-block-d", default="1,2,4")
    ap.add_argument("--fwd-block-l", default="256,512,1024")
    ap.add_argument("--bwd-block-d", default="1,2,4,8")
    ap.add_argument("--bwd-block-l", default="64,128,256,512")
    ap.add_argument("--warps", default="1,2")
    ap.add_argument("--fwd-per-thread", default="8,32", help="keep BLOCK_D*BLOCK_L/(32*warps) in this range")
    ap.add_argument("--bwd-per-thread", default="4,16")
    add_common_args(ap)
    args = ap.parse_args()
    check_device(args.device)
    b, d, n, L = args.batch, args.dim, args.dstate, args.length
    g = torch.Generator(device=args.device).manual_seed(0)
    r = lambda *s, dt=torch.bfloat16: torch.randn(*s, device=args.device, generator=g).to(dt)
    u, delta, z = r(b, d, L), (0.5 * r(b, d, L, dt=torch.float32) - 4).to(torch.bfloat16), r(b, d, L)
    A, B, C = -torch.exp(0.5 * r(d, n, dt=torch.float32)), r(b, n, L), r(b, n, L)
    D, bias = r(d, dt=torch.float32), 0.1 * r(d, dt=torch.float32)
    gout = r(b, d, L)

    bench = make_bench(args.compile_only, args.rep)
    rows = Rows(args.out)
    record = rows.record

    which = args.which.split(",")
    # (PREFETCH, RELOAD, PAIR, MIRROR): see scan_config's flags
    fwd_variants = [(True, False, False, False), (False, False, False, False), (False, False, True, False)]
    bwd_variants = [(True, False, False, True), (False, False, True, True), (False, True, True, True),
                    (False, False, True, False)]  # fmt: skip
    grids = {
        "fwd": (_ints(args.fwd_block_d), _ints(args.fwd_block_l), _ints(args.fwd_per_thread), fwd_variants),
        "bwd": (_ints(args.bwd_block_d), _ints(args.bwd_block_l), _ints(args.bwd_per_thread), bwd_variants),
    }
    shard, n_shards = map(int, args.shard.split("/"))
    todo = []
    for key in which:
        bds, bls, (lo, hi), variants = grids[key]
        for bd, bl, nw, (pf, rl, pair, mirror) in itertools.product(bds, bls, _ints(args.warps), variants):
            if lo <= bd * bl // (32 * nw) <= hi:
                todo.append((key, bd, bl, nw, pf, rl, pair, mirror))
    if args.from_json:  # re-time the best --top configs per kernel of an earlier sweep (e.g. at another length)
        with open(args.from_json) as f:
            prev = [x for x in json.load(f) if "ms" in x and x["kernel"] in which]
        todo = []
        for key in which:
            best = sorted((x for x in prev if x["kernel"] == key), key=lambda x: x["ms"] + x.get("fwd_ckpt_ms", 0.0))
            cols = ("BLOCK_D", "BLOCK_L", "num_warps", "PREFETCH", "RELOAD", "PAIR", "MIRROR")
            todo += [(key, *(x.get(c, False) for c in cols)) for x in best[: args.top or len(best)]]
    for j, (key, bd, bl, nw, pf, rl, pair, mirror) in enumerate(todo):
        if j % n_shards == shard:
            cfg = dict(BLOCK_D=bd, BLOCK_L=bl, num_warps=nw, PREFETCH=pf, RELOAD=rl, PAIR=pair, MIRROR=mirror)
            T.CONFIG_OVERRIDE.clear()
            T.CONFIG_OVERRIDE[key] = cfg  # a backward row runs after the default forward
            row = dict(kernel=key, length=L, **cfg)
            try:
                with torch.no_grad():
                    if key == "fwd":
                        row["ms"] = bench(
                            lambda: T._scan_forward(u, delta, A, B, C, D, z, bias, None, True, False, False)
                        )
                    else:
                        _, _, ckpt, y = T._scan_forward(u, delta, A, B, C, D, z, bias, None, True, True, False)
                        row["fwd_ckpt_ms"] = bench(
                            lambda: T._scan_forward(u, delta, A, B, C, D, z, bias, None, True, True, False)
                        )
                        row["regs_fwd_ckpt"], row["spills_fwd_ckpt"] = _regs("fwd")
                        row["ms"] = bench(
                            lambda ck=ckpt, y=y: T._scan_backward(
                                u, delta, A, B, C, D, z, bias, ck, y, gout, None, True, False
                            )
                        )
                        del ckpt, y
                row["regs"], row["spills"] = _regs(key)
            except Exception as e:  # a config the compiler rejects (e.g. out of resources)
                row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"
            record(row)
    for key in which:
        ok = [x for x in rows.rows if x["kernel"] == key and "ms" in x]
        if ok:
            best = min(ok, key=lambda x: x["ms"] + x.get("fwd_ckpt_ms", 0.0))
            print(f"best {key}: {json.dumps(best)}")


if __name__ == "__main__":
    main()
