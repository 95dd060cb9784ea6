"""``archzoo bench NAME``: the benchmark entry points that exist so far.

- ``kernels``: the SSM kernel benchmark (benchmarks/bench_ssm_kernels.py) on one GPU.
- ``conversion``: held-out quality right after conversion (archzoo.bench.conversion).
- ``decode``: decode speed against the memory roofline and HF ``generate`` (archzoo.bench.decode).
The YAML-driven Pareto report (configs/bench/) is not built yet; a YAML path says so.
"""

from __future__ import annotations

import argparse
import runpy
import sys
from pathlib import Path

SUITES = ("kernels", "conversion", "decode")


def bench_cli(args: argparse.Namespace) -> int:
    from ..errors import UserError

    name, extra = args.config, list(getattr(args, "extra", []) or [])
    if name == "conversion":
        from .conversion import main

        return main(extra)
    if name == "decode":
        from .decode import main as decode_main

        return decode_main(extra)
    if name == "kernels":
        script = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_ssm_kernels.py"
        if not script.is_file():
            raise UserError(f"{script}: no such file (the kernel benchmark runs from a source checkout)")
        sys.argv = [str(script), *extra]
        runpy.run_path(str(script), run_name="__main__")
        return 0
    raise UserError(f"{name}: unknown benchmark; expected one of {', '.join(SUITES)} (YAML suites are not built yet)")
