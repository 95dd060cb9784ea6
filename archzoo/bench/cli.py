"""``archzoo bench NAME``: the benchmark entry points that exist so far.

- ``kernels``: the SSM kernel benchmark against mamba_ssm / causal-conv1d on one GPU (archzoo.bench.kernels).
- ``conversion``: held-out quality right after conversion (archzoo.bench.conversion).
- ``decode``: decode speed against the memory roofline and HF ``generate`` (archzoo.bench.decode).
- ``SUITE.yaml --out DIR [--resume] [--only NAME...] [--report-only]``: the Pareto report of a suite
  (archzoo.bench.suite).
"""

from __future__ import annotations

import argparse

SUITES = ("kernels", "conversion", "decode")


def bench_cli(args: argparse.Namespace) -> int:
    from ..errors import UserError

    name, extra = args.config, list(getattr(args, "extra", []) or [])
    if name.endswith((".yaml", ".yml")):
        return suite_cli(name, extra)
    if name == "conversion":
        from .conversion import main

        return main(extra)
    if name == "decode":
        from .decode import main as decode_main

        return decode_main(extra)
    if name == "kernels":
        from .kernels import main as kernels_main

        return kernels_main(extra)
    raise UserError(
        f"{name}: unknown benchmark; expected one of {', '.join(SUITES)} or a suite YAML (configs/bench/*.yaml)"
    )


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2, as every other user error
        from ..errors import UserError

        raise UserError(f"archzoo bench SUITE.yaml: {message}")


def suite_cli(path: str, extra: list[str]) -> int:
    """``archzoo bench SUITE.yaml --out DIR [--resume] [--only NAME...]``."""
    import shlex
    import sys

    from ..errors import UserError

    p = _Parser(prog="archzoo bench SUITE.yaml", description="the Pareto report of a benchmark suite")
    p.add_argument("--out", required=True, help="output folder: results.json, report.md, report.html, PNG charts")
    p.add_argument("--resume", action="store_true", help="skip models whose stored row has the same inputs")
    p.add_argument("--only", nargs="+", metavar="NAME", default=None, help="measure only these models (display names)")
    p.add_argument("--quiet", action="store_true", help="no progress display")
    p.add_argument(
        "--report-only",
        action="store_true",
        help="measure nothing, load no model: rewrite the report from the rows stored in DIR/rows (those measured "
        "under the suite's current settings), e.g. after copying in rows measured on another machine",
    )
    args = p.parse_args(extra)
    from .suite import report_from_rows, run_suite

    command = shlex.join(["archzoo", "bench", path, *extra])
    if args.report_only:
        if args.resume or args.only:
            raise UserError("archzoo bench SUITE.yaml: --report-only measures nothing; drop --resume / --only")
        res = report_from_rows(path, args.out)
    else:
        res = run_suite(path, args.out, resume=args.resume, only=args.only, command=command, progress=not args.quiet)
    print(f"{len(res['rows'])} models -> {args.out}/report.md, report.html, results.json, {len(res['charts'])} charts")
    if res["missing"]:
        print(f"not measured: {', '.join(res['missing'])}", file=sys.stderr)
    return 0
