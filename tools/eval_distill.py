"""Held-out quality of a distillation run, before (right after conversion) and after training.

    python tools/eval_distill.py configs/distill/smollm2-mla.yaml runs/smollm2-mla --out before_after.json

Perplexity and KL(teacher || student) per token on the held-out Shakespeare works (never trained on),
plus throughput and peak memory read from the run's metrics.csv.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import torch


def main() -> None:
    from archzoo import convert, from_pretrained
    from archzoo.bench.conversion import heldout_blocks
    from archzoo.teacher import resolve_teacher
    from archzoo.train.config import load_run_config
    from archzoo.train.evaluation import evaluate

    p = argparse.ArgumentParser()
    p.add_argument("config")
    p.add_argument("run_dir")
    p.add_argument("--out", required=True)
    p.add_argument("--max-blocks", type=int, default=64)
    args = p.parse_args()
    run = load_run_config(args.config)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    teacher = resolve_teacher(run.teacher, dtype=torch.float32).to(dev)
    blocks = heldout_blocks(teacher.tokenizer, 512, args.max_blocks)
    student_cfg = run.student_config  # the student's model config, resolved by load_run_config
    layers = run.student.teacher_layers
    before = evaluate(teacher, convert(teacher, student_cfg, **({"layers": layers} if layers else {})).to(dev), blocks)
    after = evaluate(teacher, from_pretrained(Path(args.run_dir) / "student", device=dev).float(), blocks)
    metrics = list(csv.DictReader(open(Path(args.run_dir) / "logs" / "metrics.csv")))

    def col(name):
        vals = [float(r[name]) for r in metrics if r.get(name) not in (None, "")]
        return vals

    def median(name):
        vals = sorted(col(name))
        return vals[len(vals) // 2] if vals else None

    out = {
        "before": before,
        "after": after,
        "last_logged": {name: (col(name)[-1] if col(name) else None) for name in metrics[0]},
        "median": {k: median(k) for k in ("train/tokens_per_s", "train/model_tflops", "train/peak_mem_gib")},
        "device": torch.cuda.get_device_name() if dev == "cuda" else "cpu",
    }
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
