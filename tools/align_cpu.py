"""The recipe's align stage alone, on a CPU: how much of each conversion's loss the first stage repairs before any
end-to-end distillation (docs/distillation.md, "After the align stage").

    python tools/align_cpu.py mamba jamba-half mla mqa --steps 40 --out runs/align-cpu    # ~6 min a student
    python tools/align_cpu.py mla --steps 40 --teacher-text 8704 --out runs/align-cpu     # -> runs/align-cpu/mla-mix
    archzoo bench configs/bench/smollm2-aligned-cpu.yaml --out docs/results/distillation/aligned-cpu

For each NAME it reads the GPU run ``configs/distill/smollm2-NAME.yaml`` and keeps its student (architecture,
initialiser, calibration, teacher layers) and its align stage's learning rate; it replaces what a 2-core CPU
cannot do: the data become the Shakespeare training split (the 20M-token teacher corpus needs a GPU to generate;
the scores are then on python-docs, a register no run trains on, and on the held-out Shakespeare works), the
batch 4 x 512 tokens, the stages the align stage alone for ``--steps`` steps, fp32. The run goes through
``archzoo distill`` (the trainer's own align step, ``train/module.py``) into OUT/NAME; a NAME whose
OUT/NAME/student exists is skipped, so a killed sweep resumes.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def cpu_run(name: str, steps: int, batch_size: int, teacher_text: int = 0) -> dict:
    """The CPU align-only run YAML (as a dict) derived from configs/distill/smollm2-NAME.yaml.

    ``teacher_text`` > 0: the data are half Shakespeare, half that many tokens of teacher-generated text (8,704 is
    the calibration corpus the calibrated conversions generate, so it is on the machine already)."""
    src = ROOT / "configs" / "distill" / f"smollm2-{name}.yaml"
    if not src.is_file():
        raise SystemExit(f"{src}: no such run YAML (NAME is the part after smollm2-)")
    run = yaml.safe_load(src.read_text())
    student = dict(run["student"])
    if isinstance(student.get("config"), str):
        student["config"] = str((src.parent / student["config"]).resolve())
    aligns = [s for s in run["stages"] if s.get("type") == "align"]
    if not aligns:
        raise SystemExit(f"{src}: has no align stage to run")
    data = {"source": "shakespeare", "max_tokens": 400_000}
    if teacher_text > 0:
        data = {"sources": [{"source": "teacher_generated", "size_tokens": teacher_text, "seed": 0, "weight": 0.5},
                            {"source": "shakespeare", "weight": 0.5, "max_tokens": 400_000}]}  # fmt: skip
    return {
        "teacher": run["teacher"],
        "student": student,
        "data": {
            **data,
            "block_len": 512,
            "batch_size": batch_size,
            "val_fraction": 0.02,
            "max_val_blocks": 4,
            "seed": 0,
        },
        "stages": [{"name": "align", "type": "align", "steps": steps, "lr": aligns[0]["lr"]}],
        "optimizer": {"lr": aligns[0]["lr"], "warmup_steps": 2, "schedule": "cosine", "weight_decay": 0.0},
        "trainer": {
            "accelerator": "cpu",
            "devices": 1,
            "precision": "32-true",
            "log_every_n_steps": 1,
            "gradient_clip_val": 1.0,
        },
        "checkpoint": {"every_n_steps": 10_000},
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("names", nargs="+", help="students: NAME of configs/distill/smollm2-NAME.yaml")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--teacher-text", type=int, default=0,
                   help="half the data from this many teacher-generated tokens (8704: the calibration corpus); "
                   "the run goes to OUT/NAME-mix")  # fmt: skip
    p.add_argument("--out", default="runs/align-cpu")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    suffix = "-mix" if args.teacher_text > 0 else ""
    runs = {name + suffix: cpu_run(name, args.steps, args.batch_size, args.teacher_text) for name in args.names}
    for name, run in runs.items():
        if (out / name / "student").is_dir():
            print(f"{name}: {out / name} exists, skipped", flush=True)
            continue
        cfg = out / f"{name}.yaml"
        cfg.write_text(yaml.safe_dump(run, sort_keys=False))
        print(f"{name}: archzoo distill {cfg} --output-dir {out / name}", flush=True)
        subprocess.run([sys.executable, "-m", "archzoo", "distill", str(cfg), "--output-dir", str(out / name)],
                       check=True)  # fmt: skip


if __name__ == "__main__":
    main()
