"""``archzoo distill CONFIG --output-dir DIR [--resume]`` (wired in archzoo/cli.py).

Also runnable as ``python -m archzoo.train.cli`` with the same arguments. A bad run config
exits 2 with one ``error: <file>: <field.path>: ...`` line (archzoo.cli's handler); a
non-finite loss exits 1 with one line, leaving the last checkpoint in place.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence


def distill_cli(args: argparse.Namespace) -> int:
    """Run the distillation; rank 0 ends with one JSON line: the final step, the student folder and the
    run's summary (the last step's losses and validation metrics; ``train/tokens_per_s`` and
    ``train/model_tflops`` as medians over the run's steps, ``train/model_flops`` the total, see train/run.py)."""
    from .module import NonFiniteLossError
    from .run import run_distill

    try:
        result = run_distill(args.config, args.output_dir, resume=args.resume)
    except NonFiniteLossError as e:
        print(f"error: {args.config}: {e}", file=sys.stderr)
        return 1
    finally:
        _close_process_group()
    if result["is_global_zero"]:
        print(json.dumps({"global_step": result["global_step"], "student": result["student"], **result["metrics"]}))
    return 0


def _close_process_group() -> None:
    """Destroy the process group a distributed strategy opened (Lightning leaves it open): a
    ProcessGroupNCCL destructed at interpreter exit can hang the process after the run is done, which
    is what an FSDP run on the H100 did (the run finished, then the process did not exit)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def main(argv: Sequence[str] | None = None) -> int:
    from archzoo.cli import main as archzoo_main

    return archzoo_main(["distill", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
