"""Whole runs with tiny models on random tokens: outputs, exact resume, DDP on 2 CPU processes, a NaN stop."""

from __future__ import annotations

import csv
import json
import math
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from lightning.pytorch.utilities.model_summary import get_human_readable_count

import archzoo
from archzoo.train.module import DistillModule, NonFiniteLossError
from archzoo.train.run import run_distill

from conftest import ROOT, assert_close

TEACHER = {
    "vocab_size": 64,
    "d_model": 32,
    "n_layers": 2,
    "mixer": {"type": "attention", "n_heads": 4, "n_kv_heads": 2},
    "ffn": {"type": "swiglu", "d_ff": 64},
    "init_std": 0.1,
}
STUDENT = {**TEACHER, "mixer": {"type": "attention", "n_heads": 4, "n_kv_heads": 1}}


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("teacher")
    torch.manual_seed(0)
    archzoo.build_model(TEACHER).save_pretrained(path)
    return path


def _config(teacher_dir: Path, **over) -> dict:
    cfg = {
        "teacher": str(teacher_dir),
        "student": {"config": STUDENT, "init": "random"},
        "data": {"source": "random", "block_len": 16, "batch_size": 4, "n_blocks": 64, "val_fraction": 0.125},
        "stages": [
            {"name": "align", "type": "align", "steps": 3},
            {"name": "kd", "type": "kd", "steps": 5, "ce_weight": 0.5, "token_chunk": 24},
        ],
        "optimizer": {"lr": 3e-3, "warmup_steps": 1},
        "trainer": {"accelerator": "cpu", "devices": 1, "log_every_n_steps": 1, "enable_progress_bar": False},
        "checkpoint": {"every_n_steps": 3},
        "export": {"every_n_steps": 4},
    }
    for key, value in over.items():
        cfg[key] = {**cfg.get(key, {}), **value} if isinstance(value, dict) else value
    return cfg


def _losses(path: Path) -> dict[int, float]:
    with open(path, newline="") as f:
        return {int(r["step"]): float(r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")}


def test_run_writes_metrics_checkpoint_and_a_loadable_student(teacher_dir, tmp_path):
    out = tmp_path / "run"
    result = run_distill(_config(teacher_dir), out)
    assert result["global_step"] == 8
    with open(out / "logs" / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for key in ("train/loss", "train/kl", "train/ce", "train/aux", "train/align", "train/tokens_per_s", "train/lr"):
        assert any(r.get(key) for r in rows), f"metrics.csv has no {key}"
    assert any(r.get("val/ppl") for r in rows) and any(r.get("val/kl") for r in rows)
    assert any(r.get("val/kl_far") for r in rows), "the KL over the second half of the blocks is logged"
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 8, "the last step is checkpointed even off the every_n_steps grid"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["global_step"] == 8 and summary["tokens_trained"] == 8 * 4 * 16 and summary["fit_seconds"] > 0
    assert summary["metrics"]["train/tokens_per_s"] > 0 and len(summary["fits"]) == 1
    assert not any(k.startswith("teacher") for k in ckpt["state_dict"]), "the teacher is not checkpointed"
    student = archzoo.from_pretrained(out / "student")
    saved = {k[len("student.") :]: v for k, v in ckpt["state_dict"].items()}
    for name, p in student.state_dict().items():
        assert torch.equal(p, saved[name]), f"exported {name} differs from the final weights"
    assert student(torch.randint(64, (1, 5))).shape == (1, 5, 64)
    assert yaml.safe_load((out / "run.yaml").read_text())["stages"][1]["name"] == "kd"
    with pytest.raises(archzoo.ConfigError, match="already holds a run; pass --resume"):
        run_distill(_config(teacher_dir), out)


def test_resume_continues_with_the_same_losses(teacher_dir, tmp_path):
    full = tmp_path / "full"
    run_distill(_config(teacher_dir), full)
    part = tmp_path / "part"
    run_distill(_config(teacher_dir, trainer={"max_steps": 4}), part)  # stops inside the kd stage
    assert torch.load(part / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 4
    run_distill(_config(teacher_dir), part, resume=True)
    want, got = _losses(full / "logs" / "metrics.csv"), _losses(part / "logs" / "metrics.csv")
    assert sorted(got) == sorted(want) == list(range(8)), "one metrics.csv holds the whole run"
    fits = json.loads((part / "summary.json").read_text())["fits"]
    assert [(f["from_step"], f["to_step"]) for f in fits] == [(0, 4), (4, 8)], "summary.json keeps both fits"
    for step in range(8):
        assert got[step] == pytest.approx(want[step], rel=1e-6, abs=1e-7), f"train/loss at step {step}"
    a, b = archzoo.from_pretrained(full / "student"), archzoo.from_pretrained(part / "student")
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert_close(f"resumed {name}", q, p, 1e-6)


def test_resume_needs_a_checkpoint_and_the_same_student(teacher_dir, tmp_path):
    with pytest.raises(archzoo.ConfigError, match="no checkpoint to resume from"):
        run_distill(_config(teacher_dir), tmp_path / "none", resume=True)
    out = tmp_path / "run"
    run_distill(_config(teacher_dir, trainer={"max_steps": 2}), out)
    other = _config(teacher_dir, student={"config": {**STUDENT, "n_layers": 1}})
    with pytest.raises(archzoo.ConfigError, match="student differ from the run being resumed"):
        run_distill(other, out, resume=True)


def test_non_finite_loss_stops_the_run_and_keeps_the_last_checkpoint(teacher_dir, tmp_path, monkeypatch):
    kd_step = DistillModule.kd_step

    def poisoned(self, ids, targets, stage):  # the loss turns NaN at step 4 (0-based)
        loss, parts = kd_step(self, ids, targets, stage)
        return (loss * float("nan"), parts) if self.global_step == 4 else (loss, parts)

    monkeypatch.setattr(DistillModule, "kd_step", poisoned)
    out = tmp_path / "nan"
    with pytest.raises(NonFiniteLossError, match=r"non-finite training loss at step 4 \(stage 'kd'"):
        run_distill(_config(teacher_dir, export={"every_n_steps": None}), out)
    assert torch.load(out / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 3
    assert not (out / "student").exists(), "a diverged student is not exported as the result"


@pytest.mark.slow
def test_ddp_two_cpu_processes_match_one_process(teacher_dir, tmp_path):
    """2 ranks x 2 rows per micro-batch see the same rows as 1 rank x 4, so the weights must agree.

    An align stage trains the mixers only, so DDP must allow unused parameters."""
    stages = [
        {"name": "align", "type": "align", "steps": 2},
        {"name": "kd", "type": "kd", "steps": 2, "ce_weight": 0.5},
    ]
    base = _config(teacher_dir, stages=stages)
    ddp = _config(
        teacher_dir,
        stages=stages,
        data={"batch_size": 2},
        trainer={"strategy": "ddp_find_unused_parameters_true", "devices": 2},
    )
    cfg_path = tmp_path / "ddp.yaml"
    cfg_path.write_text(yaml.safe_dump(ddp))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "archzoo", "distill", str(cfg_path), "--output-dir", str(tmp_path / "ddp")],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, f"DDP run failed:\n{proc.stderr[-3000:]}"
    assert (tmp_path / "ddp" / "logs" / "metrics.csv").is_file()
    run_distill(base, tmp_path / "single")
    a = archzoo.from_pretrained(tmp_path / "single" / "student")
    b = archzoo.from_pretrained(tmp_path / "ddp" / "student")
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert_close(f"DDP {name}", q, p, 1e-5)


def _word_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = "to be or not that is the question".split()
    tok = Tokenizer(models.WordLevel({"<unk>": 0, "<eos>": 1, **{w: i + 2 for i, w in enumerate(words)}}, "<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<eos>")


BAD_RUNS = {  # what is wrong -> (run overrides, where the error line points)
    "teacher name": (lambda d: {"teacher": "smollm9"}, "not a teacher name"),
    "teacher file": (lambda d: {"teacher": str(d / "junk.gguf")}, "not a GGUF file"),
    "data path": (lambda d: {"data": {"source": "jsonl", "path": "missing.jsonl"}}, "data.path: 'missing.jsonl'"),
    "data content": (lambda d: {"data": {"source": "jsonl", "path": "bad.jsonl"}}, "data.path: .*not valid JSON"),
    "student config": (
        lambda d: {"student": {"config": {**STUDENT, "mixer": {"type": "attention", "n_heads": 4, "n_kv_heads": 3}}}},
        "student.config.mixer",
    ),
    "stage globs": (
        lambda d: {"stages": [{"name": "kd", "type": "kd", "steps": 2, "trainable": ["nothing.*"]}]},
        "stages.0.trainable",
    ),
}


@pytest.mark.parametrize("case", list(BAD_RUNS))
def test_a_bad_run_exits_2_before_writing_anything(tmp_path, capsys, case):
    """Config, teacher, student, stages and data are all checked before the output folder is created."""
    from archzoo.cli import main

    teacher = archzoo.build_model(TEACHER)
    teacher.tokenizer = _word_tokenizer()  # text sources need one
    teacher.save_pretrained(tmp_path / "teacher")
    (tmp_path / "junk.gguf").write_bytes(b"not a gguf file at all")
    (tmp_path / "bad.jsonl").write_text('{"text": "to be or not to be"}\nthat is the question\n')
    over, message = BAD_RUNS[case]
    cfg = _config(tmp_path / "teacher", **over(tmp_path))
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    out = tmp_path / "out"
    assert main(["distill", str(tmp_path / "run.yaml"), "--output-dir", str(out)]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    assert re.search(message, lines[0]), lines[0]
    assert not out.exists(), f"{case}: wrote {sorted(p.name for p in out.rglob('*'))} before failing"


def test_summary_reports_median_step_throughput_and_model_flops(teacher_dir, tmp_path):
    """The line ``archzoo distill`` ends with holds the median of the per-step tokens/s in metrics.csv (not
    the last step's, which a checkpoint write used to slow down) and the run's model FLOPs (6N rule);
    Lightning's litlogger tip and its FLOPs-less model summary are not printed."""
    cfg_path = tmp_path / "run.yaml"
    cfg_path.write_text(yaml.safe_dump(_config(teacher_dir)))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "archzoo", "distill", str(cfg_path), "--output-dir", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    output = proc.stdout + proc.stderr
    assert "Tip:" not in output and "litlogger" not in output, "Lightning's advertising line"
    assert "Total FLOPs" not in output and "Total Flops" not in output, "Lightning's model summary (FLOPs 0)"
    summary = json.loads(proc.stdout.strip().splitlines()[-1])

    with open(tmp_path / "out" / "logs" / "metrics.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("train/tokens_per_s")]
    per_step = [float(r["train/tokens_per_s"]) for r in rows]
    assert len(per_step) == 8, "one value per optimizer step"
    assert summary["train/tokens_per_s"] == pytest.approx(statistics.median(per_step), rel=1e-5)
    tflops = [float(r["train/model_tflops"]) for r in rows]
    assert summary["train/model_tflops"] == pytest.approx(statistics.median(tflops), rel=1e-5)

    teacher, student = archzoo.from_pretrained(teacher_dir), archzoo.build_model(STUDENT)

    def matmul(m) -> int:  # every parameter but the embedding table, the LM head once
        return m.num_parameters(exclude_embeddings=True) + m.lm_head.weight.numel()

    align = 2 * sum(p.numel() for p in teacher.blocks.parameters())
    align += 6 * sum(p.numel() for b in student.blocks for p in b.mixer.parameters())
    kd = 6 * matmul(student) + 2 * matmul(teacher)  # kl_weight 1: the teacher runs
    tokens = 4 * 16  # batch_size x block_len per optimizer step
    assert summary["train/model_flops"] == pytest.approx((3 * align + 5 * kd) * tokens, rel=1e-9)
    count = get_human_readable_count
    assert f"model FLOPs per token: align {count(align).strip()}, kd {count(kd).strip()}" in proc.stdout


def test_speed_levers_keep_the_losses(teacher_dir, tmp_path, monkeypatch):
    """speed.compile (dynamo with the eager backend here: tracing, no codegen) and fused_adamw=False keep every
    loss of a plain run; teacher_dtype puts the frozen teacher in that dtype for the fit."""
    plain = tmp_path / "plain"
    run_distill(_config(teacher_dir), plain)
    levers = tmp_path / "levers"
    seen = {}
    orig = DistillModule.kd_step

    def compiled(block) -> bool:
        return getattr(block, "_compiled_call_impl", None) is not None

    def spy(self, ids, targets, stage):
        seen["teacher"] = self.teacher.embed.weight.dtype
        seen["compiled"] = compiled(self.student.blocks[0])
        seen["teacher_compiled_in_kd"] = all(compiled(b) for b in self.teacher.blocks)
        return orig(self, ids, targets, stage)

    orig_align = DistillModule.align_step

    def align_spy(self, ids, layers):  # the align stage hooks into the teacher's blocks: they stay eager there
        seen["teacher_compiled_in_align"] = any(compiled(b) for b in self.teacher.blocks)
        return orig_align(self, ids, layers)

    monkeypatch.setattr(DistillModule, "kd_step", spy)
    monkeypatch.setattr(DistillModule, "align_step", align_spy)
    torch._dynamo.reset()
    run_distill(_config(teacher_dir, speed={"compile": True, "compile_backend": "eager", "fused_adamw": False}), levers)
    torch._dynamo.reset()
    assert seen == {"teacher": torch.float32, "compiled": True, "teacher_compiled_in_kd": True,
                    "teacher_compiled_in_align": False}  # fmt: skip
    want, got = _losses(plain / "logs" / "metrics.csv"), _losses(levers / "logs" / "metrics.csv")
    assert sorted(got) == sorted(want)
    for step in want:
        assert got[step] == pytest.approx(want[step], rel=1e-5, abs=1e-6), f"train/loss at step {step}"
    run_distill(_config(teacher_dir, speed={"teacher_dtype": "fp16"}, stages=[{"name": "kd", "type": "kd", "steps": 2}]),  # noqa: E501
                tmp_path / "half")  # fmt: skip
    assert seen["teacher"] == torch.float16


def test_fused_loss_keeps_the_losses(teacher_dir, tmp_path):
    """speed.fused_loss: the KD stage's loss and its logged parts are those of the unfused loss (the reference
    kd_loss_rows on CPU; tests/kernels/test_kd_loss.py holds the kernel to it)."""
    plain, fused = tmp_path / "plain", tmp_path / "fused"
    run_distill(_config(teacher_dir), plain)
    run_distill(_config(teacher_dir, speed={"fused_loss": True}), fused)
    for key in ("train/loss", "train/kl", "train/ce"):
        with open(plain / "logs" / "metrics.csv", newline="") as f:
            want = {int(r["step"]): float(r[key]) for r in csv.DictReader(f) if r.get(key)}
        with open(fused / "logs" / "metrics.csv", newline="") as f:
            got = {int(r["step"]): float(r[key]) for r in csv.DictReader(f) if r.get(key)}
        assert sorted(got) == sorted(want) and want, key
        for step in want:
            assert got[step] == pytest.approx(want[step], rel=1e-5, abs=1e-6), f"{key} at step {step}"


def test_sync_every_waits_per_window_and_still_stops_before_a_diverged_checkpoint(teacher_dir, tmp_path, monkeypatch):
    """speed.sync_every = 4: the same losses as waiting every step; throughput logged per window; a NaN at step 4
    is caught before the checkpoint of step 6 is written, so the last checkpoint is still step 3's."""
    plain, windowed = tmp_path / "plain", tmp_path / "windowed"
    run_distill(_config(teacher_dir), plain)
    run_distill(_config(teacher_dir, speed={"sync_every": 4}), windowed)
    want, got = _losses(plain / "logs" / "metrics.csv"), _losses(windowed / "logs" / "metrics.csv")
    assert got == pytest.approx(want, rel=1e-6, abs=1e-7)
    with open(windowed / "logs" / "metrics.csv", newline="") as f:
        timed = [int(r["step"]) for r in csv.DictReader(f) if r.get("train/tokens_per_s")]
    assert len(timed) < 8, f"throughput per window, not per step: logged at steps {timed}"

    kd_step = DistillModule.kd_step

    def poisoned(self, ids, targets, stage):
        loss, parts = kd_step(self, ids, targets, stage)
        return (loss * float("nan"), parts) if self.global_step == 4 else (loss, parts)

    monkeypatch.setattr(DistillModule, "kd_step", poisoned)
    out = tmp_path / "nan"
    with pytest.raises(NonFiniteLossError, match=r"non-finite training loss at step 4 \(stage 'kd'"):
        run_distill(_config(teacher_dir, export={"every_n_steps": None}, speed={"sync_every": 4}), out)
    assert torch.load(out / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 3
    assert not (out / "student").exists(), "a diverged student is not exported as the result"


def test_convert_calibration_spec_reaches_convert_as_tokens(teacher_dir, tmp_path, monkeypatch):
    """student.convert.calibration: the spec becomes token ids before archzoo.convert sees it; a spec the teacher
    cannot serve (no tokenizer here) is one error naming the key, before anything is written."""
    spec = {"source": "shakespeare", "tokens": 32, "block_len": 8}
    cfg = _config(teacher_dir, student={"config": STUDENT, "init": "convert", "convert": {"calibration": spec}})
    with pytest.raises(archzoo.ConfigError, match=r"student\.convert\.calibration: calibration needs the teacher's"):
        run_distill(cfg, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    import archzoo.data.calibration as cal

    seen = {}
    monkeypatch.setattr(cal, "calibration_ids", lambda spec, teacher: seen.setdefault("ids", torch.zeros(2, 8).long()))
    import archzoo.convert as conv

    real = conv.convert
    monkeypatch.setattr(conv, "convert", lambda t, c, **o: seen.setdefault("opts", o) and real(t, c, **o))
    cfg["stages"] = [{"name": "kd", "type": "kd", "steps": 1}]
    run_distill(cfg, tmp_path / "ok")
    assert torch.equal(seen["opts"]["calibration"], seen["ids"])


@pytest.mark.parametrize("precision", ["bf16-mixed", "32-true"])
def test_fused_adamw_with_gradient_clipping(teacher_dir, tmp_path, precision):
    """A fused AdamW (torch's fused kernel, also on CPU) under mixed precision with gradient clipping: Lightning's
    plugin refuses to clip before it ("performs unscaling of gradients internally"), which made every GPU run
    with the default fused_adamw fail at its first step (H200, 2026-12-05). The module clips itself: the run
    finishes with the losses of the unfused optimizer (float32; bf16 only finishes)."""
    kw = {"trainer": {"precision": precision, "gradient_clip_val": 0.5}}
    fused, plain = tmp_path / "fused", tmp_path / "plain"
    run_distill(_config(teacher_dir, speed={"fused_adamw": True}, **kw), fused)
    run_distill(_config(teacher_dir, speed={"fused_adamw": False}, **kw), plain)
    want, got = _losses(plain / "logs" / "metrics.csv"), _losses(fused / "logs" / "metrics.csv")
    assert sorted(got) == sorted(want) and all(math.isfinite(v) for v in got.values())
    if precision == "32-true":
        for step in want:
            assert got[step] == pytest.approx(want[step], rel=1e-4, abs=1e-5), f"train/loss at step {step}"


def test_fused_adamw_refuses_fp16_clipping(teacher_dir, tmp_path):
    """Refused when the run is read, before anything is written."""
    cfg = _config(teacher_dir, speed={"fused_adamw": True}, trainer={"precision": "16-mixed", "gradient_clip_val": 1.0})
    with pytest.raises(archzoo.ConfigError, match="fused_adamw: fused AdamW unscales fp16 gradients"):
        run_distill(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()
