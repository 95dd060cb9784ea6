"""``archzoo bench NAME``: the benchmark entry points that exist so far.

- ``kernels``: the SSM kernel benchmark against mamba_ssm / causal-conv1d on one GPU (archzoo.bench.kernels).
- ``conversion``: held-out quality right after conversion (archzoo.bench.conversion).
- ``decode``: decode speed against the memory roofline and HF ``generate`` (archzoo.bench.decode).
The YAML-driven Pareto report (configs/bench/) is not built yet; a YAML path says so.
"""

from __future__ import annotations

import argparse

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
        from .kernels import main as kernels_main

        return kernels_main(extra)
    raise UserError(f"{name}: unknown benchmark; expected one of {', '.join(SUITES)} (YAML suites are not built yet)")
