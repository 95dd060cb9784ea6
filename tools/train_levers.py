"""The trainer's throughput levers measured one by one on one GPU (issue 16, item 5), in one process.

    python tools/train_levers.py configs/distill/smollm2-mla.yaml --steps 40 --out levers.json

Each variant runs the run YAML's student and teacher for ``--steps`` KD steps on random token rows of the
run's block length (the data's content does not change the speed, and no corpus is generated), starting from
the same converted student, and reports the median tokens/s, model TFLOP/s and MFU of its steps (the
trainer's own ``StepThroughput``: a median over the steps, so the first steps that compile do not count
once ``--steps`` is well above them). Variants (``--variants``, comma-separated):

- ``base``: the run as configured, every lever off (teacher fp32 under autocast, foreach AdamW, eager);
- ``teacher_bf16``: ``speed.teacher_dtype: bf16``;
- ``fused_adamw``: ``speed.fused_adamw: true``;
- ``compile``: ``speed.compile: true`` (regional, student and teacher blocks);
- ``sync10``: ``speed.sync_every: 10`` (the host waits for the device every 10 steps, not twice a step);
- ``fused_loss``: ``speed.fused_loss: true`` (the KD loss through ``archzoo.kernels.kd_loss_rows``);
- ``all``: the five together;
- ``all_b32``, ``all_b64``: the five with micro-batch 32 / 64;
- ``asis``: the run's own ``speed`` section and micro-batch (what ``archzoo distill`` would run), e.g. to
  profile two students' shipped recipes side by side (``--variants asis --profile asis``).

A variant named twice runs twice (``base,...,base``): the spread between the two is the noise to beat.
``--random-teacher`` builds the teacher from ``configs/students/teacher.yaml`` with random weights (same
shape, same FLOPs and bytes, so the same speed) and converts the student data-free, so the levers can be
measured on a machine that does not hold the real teacher's GGUF. ``--profile VARIANT`` runs that variant
once more under ``torch.profiler`` and writes the top CUDA kernels and the GPU's busy fraction
(kernel time over wall time) to ``<out>.profile.txt``: where a step's time goes.
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
from pathlib import Path

import yaml

from archzoo.train.run import run_distill

PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0}  # dense bf16, SXM

_ALL = {"teacher_dtype": "bf16", "fused_adamw": True, "compile": True, "sync_every": 10, "fused_loss": True}
VARIANTS = {
    "base": ({"teacher_dtype": "fp32", "fused_adamw": False, "compile": False}, None),
    "teacher_bf16": ({"teacher_dtype": "bf16", "fused_adamw": False, "compile": False}, None),
    "fused_adamw": ({"teacher_dtype": "fp32", "fused_adamw": True, "compile": False}, None),
    "compile": ({"teacher_dtype": "fp32", "fused_adamw": False, "compile": True}, None),
    "sync10": ({"teacher_dtype": "fp32", "fused_adamw": False, "compile": False, "sync_every": 10}, None),
    "fused_loss": ({"teacher_dtype": "fp32", "fused_adamw": False, "compile": False, "fused_loss": True}, None),
    "all": ({**_ALL}, None),
    "all_b32": ({**_ALL}, 32),
    "all_b64": ({**_ALL}, 64),
    "asis": (None, None),
}


def variant_config(
    run: dict, base_dir: Path, speed: dict, batch: int | None, steps: int, teacher: str | None = None
) -> dict:
    cfg = copy.deepcopy(run)
    student = cfg["student"]
    if isinstance(student.get("config"), str):
        student["config"] = str((base_dir / student["config"]).resolve())
    if teacher is not None:  # a random teacher: no text to calibrate on, so the student converts data-free
        cfg["teacher"] = teacher
        (student.get("convert") or {}).pop("calibration", None)
    data = cfg["data"]
    cfg["data"] = {
        "source": "random",
        "block_len": data.get("block_len", 512),
        "batch_size": batch or data.get("batch_size", 16),
        "n_blocks": (batch or data.get("batch_size", 16)) * (steps + 4),
        "val_fraction": 0,
        "num_workers": data.get("num_workers", 0),
    }
    cfg["stages"] = [{"name": "kd", "type": "kd", "steps": steps, "kl": "forward", "ce_weight": 0.0}]
    if speed is not None:  # None: the run's own (``asis``)
        cfg["speed"] = speed
    cfg["trainer"] = {**cfg.get("trainer", {}), "val_check_interval": None, "log_every_n_steps": 1}
    cfg["trainer"].pop("max_steps", None)
    import torch

    if not torch.cuda.is_available():  # a smoke run of the tool itself on a CPU
        cfg["trainer"].update(accelerator="cpu", precision="32-true")
    cfg["checkpoint"] = {"every_n_steps": 10 * steps}
    cfg["export"] = {}
    return cfg


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--out", required=True)
    p.add_argument("--random-teacher", action="store_true", help="the teacher's shape with random weights")
    p.add_argument("--profile", default=None, metavar="VARIANT", help="profile this variant afterwards")
    p.add_argument("--profile-host", action="store_true", help="also run the variant under cProfile (host time)")
    args = p.parse_args()
    path = Path(args.run)
    run = yaml.safe_load(path.read_text())
    import torch

    name = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)
    names = args.variants.split(",")
    unknown = [v for v in names + ([args.profile] if args.profile else []) if v not in VARIANTS]
    if unknown:
        p.error(f"unknown variant(s) {', '.join(unknown)}; expected some of {', '.join(VARIANTS)}")
    teacher_dir = tempfile.TemporaryDirectory()
    teacher = random_teacher(Path(teacher_dir.name)) if args.random_teacher else None
    rows = []
    for i, v in enumerate(names):
        speed, batch = VARIANTS[v]
        label = v if v not in names[:i] else f"{v}#{names[:i].count(v) + 1}"
        row = {"variant": label, "speed": speed, "batch_size": batch or run["data"].get("batch_size", 16)}
        with tempfile.TemporaryDirectory() as tmp:
            cfg = variant_config(run, path.parent, speed, batch, args.steps, teacher)
            t0 = time.perf_counter()
            try:
                res = run_distill(cfg, Path(tmp) / "out")
                m = res.get("metrics", res)
                row.update(
                    tokens_per_s=m.get("train/tokens_per_s"),
                    model_tflops=m.get("train/model_tflops"),
                    wall_s=time.perf_counter() - t0,
                )
                if peak and row["model_tflops"]:
                    row["mfu"] = row["model_tflops"] / peak
            except Exception as e:  # report the variant and go on
                row["error"] = f"{type(e).__name__}: {str(e)[:300]}"
        rows.append(row)
        print(json.dumps(row), flush=True)
        meta = {"device": name, "run": str(path), "steps": args.steps, "random_teacher": args.random_teacher}
        Path(args.out).write_text(json.dumps({**meta, "rows": rows}, indent=1))
    if args.profile:
        speed, batch = VARIANTS[args.profile]
        with tempfile.TemporaryDirectory() as tmp:
            cfg = variant_config(run, path.parent, speed, batch, max(8, args.steps // 4), teacher)
            text = profile_run(cfg, Path(tmp) / "out", args.profile_host)
        Path(args.out + ".profile.txt").write_text(f"variant {args.profile}\n{text}")
        print(text, flush=True)


def random_teacher(folder: Path) -> str:
    """The teacher's shape (configs/students/teacher.yaml) with random weights, saved as an archzoo checkpoint."""
    import torch

    from archzoo import build_model, load_config
    from archzoo.checkpoint import save_pretrained

    torch.manual_seed(0)
    cfg = load_config(Path(__file__).resolve().parents[1] / "configs/students/teacher.yaml")
    save_pretrained(build_model(cfg), folder / "teacher")
    return str(folder / "teacher")


def profile_run(cfg: dict, out: Path, host: bool = False) -> str:
    """Run ``cfg`` under torch.profiler: the GPU's busy fraction and the top kernels by CUDA time; with ``host``,
    once more under cProfile: the Python functions by their own and cumulative time (where a step that no
    kernel fills spends it; setup included, the per-call counts tell the steps apart)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CUDA] if torch.cuda.is_available() else [ProfilerActivity.CPU]  # CPU ops: too slow
    t0 = time.perf_counter()
    with profile(activities=acts) as prof:
        res = run_distill(cfg, out)
    wall = time.perf_counter() - t0
    m = res.get("metrics", res)
    steps = cfg["stages"][0]["steps"]
    step_ms = 1e3 * cfg["data"]["batch_size"] * cfg["data"]["block_len"] / m["train/tokens_per_s"]
    events = prof.key_averages()
    device_us = sum(e.self_device_time_total for e in events if e.device_type == torch.autograd.DeviceType.CUDA)
    kernel_ms = device_us / 1e3 / steps  # setup's kernels (conversion) included: an upper bound per step
    head = (f"{steps} steps, wall {wall:.1f} s with setup; a step takes {step_ms:.1f} ms (median, under the "
            f"profiler) and launches at most {kernel_ms:.1f} ms of kernels: the GPU is busy at most "
            f"{kernel_ms / step_ms:.0%} of a step")  # fmt: skip
    text = head + "\n" + events.table(sort_by="self_cuda_time_total", row_limit=30, max_name_column_width=60)
    if host:
        import cProfile
        import io
        import pstats
        import shutil

        shutil.rmtree(out, ignore_errors=True)
        prof_py = cProfile.Profile()
        prof_py.runcall(run_distill, cfg, out)
        buf = io.StringIO()
        stats = pstats.Stats(prof_py, stream=buf)
        stats.sort_stats("tottime").print_stats(25)
        stats.sort_stats("cumulative").print_stats(35)
        text += "\n\ncProfile (host time, setup included)\n" + buf.getvalue()
    return text


if __name__ == "__main__":
    main()
