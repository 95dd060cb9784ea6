"""What the two tuners (tune_ssm_kernels.py, tune_causal_conv1d.py) share: timing a call, or only launching
it once under --compile-only (which fills Triton's cache for parallel compile shards), and recording rows
(printed as JSON lines and, with --out, rewritten to the file after every row so a run cut short keeps them)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable


def add_common_args(ap: argparse.ArgumentParser) -> None:
    """The options both tuners take: timing, sharded compiles, device, output."""
    ap.add_argument("--rep", type=int, default=25, help="do_bench rep (ms)")
    ap.add_argument("--shard", default="0/1", help="I/K: run every K-th config from the I-th (parallel compiles)")
    ap.add_argument("--compile-only", action="store_true", help="launch each config once (fills Triton's cache)")
    ap.add_argument("--device", default="cuda", help="cpu only checks this script (under TRITON_INTERPRET=1)")
    ap.add_argument("--out", default=None, help="write every row as JSON here")


def check_device(device: str) -> None:
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda needs a CUDA GPU (smoke-test with --device cpu and TRITON_INTERPRET=1)")


def make_bench(compile_only: bool, rep: int) -> Callable[[Callable[[], object]], float]:
    """-> bench(fn): median ms of triton.testing.do_bench, or 0.0 after one launch under compile_only."""

    def bench(fn: Callable[[], object]) -> float:
        if compile_only:
            fn()
            return 0.0
        import triton.testing

        return triton.testing.do_bench(fn, warmup=5, rep=rep, return_mode="median")

    return bench


class Rows:
    """The rows of a sweep; ``record`` prints one and rewrites ``out`` (when given) with all so far."""

    def __init__(self, out: str | None):
        self.out, self.rows = out, []

    def record(self, row: dict) -> None:
        self.rows.append(row)
        print(json.dumps(row), flush=True)
        if self.out:
            with open(self.out, "w") as f:
                json.dump(self.rows, f, indent=1)
