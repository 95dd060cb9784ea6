"""Issue 18's table from a speed run's results.json: per model, tokens/s at each decode cell, the fraction of the
bandwidth one step reads at, the speed-up over the teacher at the primary cell, its target (80% of the cache
ratio) and its bound: the step's fixed part (its time at the same batch with the shortest prompt, less that
cache's read at full bandwidth; printed in ms) plus the primary cell's cache read at full bandwidth.

A step reads every weight once and each layer's cache up to the mean length (``weight_bytes`` +
``archzoo.cache.cache_read_bytes`` at prompt + new / 2, as ``archzoo bench decode`` counts it); the suite run
does not measure the bandwidth, so it is given (a ``bench decode`` JSON's ``bandwidth.bytes_per_s``, same GPU).

    python tools/speed_table.py docs/results/pareto-smollm2/speed/results.json \
        --bandwidth docs/results/decode/decode_h100_pdl_b64.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from archzoo.bench.common import DTYPES
from archzoo.cache import cache_bytes, cache_read_bytes
from archzoo.config import load_config

TEACHER_SHAPE = "configs/students/teacher.yaml"  # the teacher row's source is a teacher name: its shape is this


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results", type=Path)
    ap.add_argument("--bandwidth", type=Path, required=True, help="a bench decode JSON of the same GPU")
    ap.add_argument("--target", type=float, default=0.8, help="the target's fraction of the cache ratio")
    args = ap.parse_args(argv)
    res = json.loads(args.results.read_text())
    bw = json.loads(args.bandwidth.read_text())["bandwidth"]["bytes_per_s"]
    d = res["settings"]["decode"]
    dt = DTYPES[res["dtype"]]
    new = d["new_tokens"]
    rows = res["rows"]
    cells = list(next(r["decode_grid"] for r in rows if r.get("decode_grid")))
    teacher = next(r for r in rows if r["teacher"])
    primary = cells[0]
    head = ["model", "cache/token", *(c.replace(",", " ") for c in cells), "speed-up", "bound", "fixed ms"]
    head += ["cache ratio -> target"]
    pb, pp = (int(x.split("=")[1]) for x in primary.split(","))
    short = min((c for c in cells if c.startswith(f"B={pb},")), key=lambda c: int(c.split("P=")[1]))
    sp = int(short.split("P=")[1])
    t_step = pb / teacher["decode_grid"][primary]
    print(f"bandwidth {bw / 1e12:.2f} TB/s ({args.bandwidth}); tokens/s (fraction of it one step reads at)\n")
    print("| " + " | ".join(head) + " |\n|---|" + "--:|" * (len(head) - 2) + "---|")
    for r in rows:
        cfg = load_config(TEACHER_SHAPE if r["teacher"] else r["source"])
        ctx = res["settings"]["cache_context"]
        if cache_bytes(cfg, 1, ctx, dt) / ctx != r["cache_bytes_per_token"]:  # the row's model, not another
            raise SystemExit(f"{r['name']}: {TEACHER_SHAPE if r['teacher'] else r['source']} has another cache size")
        cells_out = []
        for c in cells:
            tok_s = (r.get("decode_grid") or {}).get(c)
            b, p = (int(x.split("=")[1]) for x in c.split(","))
            if not tok_s:
                cells_out.append("-")
                continue
            step_bytes = r["weight_bytes"] + cache_read_bytes(cfg, b, p + new // 2, dt)
            frac = step_bytes * tok_s / b / bw
            cells_out.append(f"{tok_s:,.0f} ({frac:.0%})")
        up = r["decode_grid"][primary] / teacher["decode_grid"][primary]
        fixed = pb / r["decode_grid"][short] - cache_read_bytes(cfg, pb, sp + new // 2, dt) / bw
        bound = t_step / (fixed + cache_read_bytes(cfg, pb, pp + new // 2, dt) / bw)
        ratio = teacher["cache_bytes_per_token"] / r["cache_bytes_per_token"]
        goal = "" if r["teacher"] else f"{ratio:.2f}x -> {args.target * ratio:.2f}x"
        kib = r["cache_bytes_per_token"] / 1024
        tail = f" | {up:.2f}x | {bound:.2f}x | {fixed * 1e3:.2f} | {goal} |"
        print(f"| {r['name']} | {kib:.2f} KiB | " + " | ".join(cells_out) + tail)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
