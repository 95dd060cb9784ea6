"""Sweep block sizes / warps of the Triton selective scan on one GPU (helps pick scan_config's defaults).

python benchmarks/tune_ssm_kernels.py --length 4096
"""

from __future__ import annotations

import argparse
import itertools

import torch
import triton.testing

from archzoo.kernels.selective_scan import triton as T


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--dim", type=int, default=2048)
    ap.add_argument("--dstate", type=int, default=16)
    ap.add_argument("--length", type=int, default=4096)
    ap.add_argument("--block-d", default="1,2,4,8")
    ap.add_argument("--block-l", default="128,256,512,1024")
    ap.add_argument("--warps", default="4,8")
    ap.add_argument("--per-thread", default="8,32", help="keep configs with BLOCK_D*BLOCK_L/(32*warps) in this range")
    args = ap.parse_args()
    b, d, n, L = args.batch, args.dim, args.dstate, args.length
    g = torch.Generator(device="cuda").manual_seed(0)
    r = lambda *s, dt=torch.bfloat16: torch.randn(*s, device="cuda", generator=g).to(dt)
    u, delta, z = r(b, d, L), (0.5 * r(b, d, L, dt=torch.float32) - 4).to(torch.bfloat16), r(b, d, L)
    A, B, C = -torch.exp(0.5 * r(d, n, dt=torch.float32)), r(b, n, L), r(b, n, L)
    D, bias = r(d, dt=torch.float32), 0.1 * r(d, dt=torch.float32)
    gout = r(b, d, L)
    rows = []
    for bd, bl, nw in itertools.product(*(map(int, s.split(",")) for s in (args.block_d, args.block_l, args.warps))):
        lo, hi = map(int, args.per_thread.split(","))
        if not lo <= bd * bl // (32 * nw) <= hi:
            continue
        cfg = dict(BLOCK_D=bd, BLOCK_L=bl, num_warps=nw)
        T.CONFIG_OVERRIDE.clear()
        T.CONFIG_OVERRIDE.update(fwd=cfg, bwd=cfg)
        try:
            with torch.no_grad():
                fwd = triton.testing.do_bench(lambda: T.selective_scan_fn(u, delta, A, B, C, D, z, bias, True),
                                              warmup=5, rep=30, return_mode="median")  # fmt: skip
            with torch.no_grad():  # the backward kernel alone, from saved checkpoints
                _, _, ckpt, y = T._scan_forward(u, delta, A, B, C, D, z, bias, None, True, True, False)
            bwd = triton.testing.do_bench(
                lambda ck=ckpt, y=y: T._scan_backward(u, delta, A, B, C, D, z, bias, ck, y, gout, None, True, False),
                warmup=5, rep=30, return_mode="median",
            )  # fmt: skip
            del ckpt, y
        except Exception as e:  # a config the compiler rejects (e.g. out of resources)
            print(f"{cfg}: failed: {type(e).__name__}: {str(e).splitlines()[0][:100]}", flush=True)
            continue
        rows.append((fwd, bwd, cfg))
        print(f"BLOCK_D={bd:3d} BLOCK_L={bl:4d} warps={nw}: fwd {fwd:.3f} ms  bwd-kernel {bwd:.3f} ms", flush=True)
    print("\nbest fwd:", min(rows, key=lambda x: x[0]))
    print("best bwd:", min(rows, key=lambda x: x[1]))


if __name__ == "__main__":
    main()
