"""Host time of the pieces of one selective-scan forward+backward on one GPU (b=4, d=2048, n=16, bf16).

    python tools/scan_host_parts.py --length 1024

Each piece is issued many times in a loop with the GPU left to run behind (no synchronisation inside
the loop), and the wall time per issue is reported (the minimum over rounds): what the Python and the
CUDA API calls cost the host, the figure that bounds forward+backward at short l.
"""

from __future__ import annotations

import argparse
import time

import torch

from archzoo.bench.kernels import scan_fwdbwd, scan_leaves  # the kernel benchmark's inputs
from archzoo.kernels import _launch
from archzoo.kernels.selective_scan import triton as T


def _host_us(fn, n: int = 40, rounds: int = 15) -> float:
    best = float("inf")
    for _ in range(rounds):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - t0) / n * 1e6)
        torch.cuda.synchronize()
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--length", type=int, default=1024)
    args = ap.parse_args()
    b, d, n, L = 4, 2048, 16, args.length
    leaves, gout = scan_leaves(L, b, d, n)
    u, delta, A, B, C, D, z, bias = leaves
    fn = T.selective_scan_fn
    step = scan_fwdbwd(fn, leaves, gout)

    def fwd_grad():
        fn(u, delta, A, B, C, D, z, bias, True)

    def fwd_nograd():
        with torch.no_grad():
            fn(u, delta, A, B, C, D, z, bias, True)

    out = fn(u, delta, A, B, C, D, z, bias, True)
    step()
    plan = next(iter(T._PLANS.values()))
    fs = plan.fwd[True]
    bs = next(iter(plan.bwd.values()))
    ud, dd, Ad, Bd, Cd, Dd, zd, bd = (t.detach() for t in (u, delta, A, B, C, D, z, bias))
    _, _, ckpt, y = T._run_forward(fs, ud, dd, Ad, Bd, Cd, Dd, zd, bd, None)
    nbuf = sum(bs.acc_sizes)
    ptrs_f = (ud, dd, Ad, Bd, Cd, Dd, zd, bd, ud, ud, ud, ud, ckpt)
    pieces = {
        "fwd+bwd (do_bench's fn)": step,
        "forward, grad on": fwd_grad,
        "forward, no grad": fwd_nograd,
        "_run_forward": lambda: T._run_forward(fs, ud, dd, Ad, Bd, Cd, Dd, zd, bd, None),
        "_run_backward": lambda: T._run_backward(bs, ud, dd, Ad, Bd, Cd, Dd, zd, bd, ckpt, y, gout, None),
        "launch_site (fwd kernel)": lambda: _launch.launch_site(fs.site, ptrs_f),
        "compiled.run (fwd kernel)": lambda: fs.site.compiled.run(
            *fs.site.grid,
            _launch._stream(),
            fs.site.compiled.function,
            fs.site.compiled.packed_metadata,
            None,
            None,
            None,
            *ptrs_f,
            *fs.site.ints,
            *fs.site.consts,
        ),
        "torch.zeros (bwd buffer)": lambda: torch.zeros(nbuf, device="cuda"),
        "torch.empty (bwd buffer)": lambda: torch.empty(nbuf, device="cuda"),
        "torch.empty (3, b, d, l) + unbind": lambda: torch.empty(
            (3, b, d, L), device="cuda", dtype=torch.bfloat16
        ).unbind(0),
        "buf.to(bf16) (dB, dC)": lambda: torch.empty(2 * b * n * L, device="cuda").to(torch.bfloat16),
        "grads to None x8": lambda: [setattr(t, "grad", None) for t in leaves],
    }
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn as mamba_fn

        pieces["mamba_ssm fwd+bwd"] = scan_fwdbwd(mamba_fn, leaves, gout)
    except Exception as e:  # noqa: BLE001
        print(f"mamba_ssm: not installed ({type(e).__name__})")
    for name, f in pieces.items():
        f()
        print(f"| {name} | {_host_us(f):.1f} us |")
    del out


if __name__ == "__main__":
    main()
