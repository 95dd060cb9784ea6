"""Where the selective scan's host time goes: torch.profiler over forward+backward on one GPU.

    python tools/profile_scan_host.py --length 1024

At short lengths forward+backward is bound by the host (the host column of ``archzoo bench kernels``); this
prints the CPU self time per op and Python function (top rows) for archzoo and, when installed,
mamba_ssm, so the two host paths can be compared op by op.
"""

from __future__ import annotations

import argparse

import torch
from torch.profiler import ProfilerActivity, profile

from archzoo.bench.kernels import scan_fwdbwd, scan_leaves  # the kernel benchmark's inputs
from archzoo.kernels.selective_scan import triton as T


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--length", type=int, default=1024)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--top", type=int, default=25)
    args = ap.parse_args()
    leaves, gout = scan_leaves(args.length)
    impls = {"archzoo": T.selective_scan_fn}
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

        impls["mamba_ssm"] = selective_scan_fn
    except Exception as e:  # noqa: BLE001
        print(f"mamba_ssm: not installed ({type(e).__name__})")
    for name, fn in impls.items():
        step = scan_fwdbwd(fn, leaves, gout)
        for _ in range(5):
            step()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CPU], with_stack=False) as prof:
            for _ in range(args.iters):
                step()
            torch.cuda.synchronize()
        print(f"\n## {name}: l={args.length}, {args.iters} forward+backward calls (CPU self time)")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.top))


if __name__ == "__main__":
    main()
