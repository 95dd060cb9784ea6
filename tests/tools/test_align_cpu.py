"""tools/align_cpu.py derives, from every shipped GPU run with an align stage, a CPU run that the trainer's own
schema accepts: the student kept as it is (config path made absolute, calibration and teacher layers kept), the
align stage alone on the Shakespeare split in fp32."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from archzoo.train.config import load_run_config

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("align_cpu", ROOT / "tools" / "align_cpu.py")
align_cpu = importlib.util.module_from_spec(spec)
spec.loader.exec_module(align_cpu)

NAMES = sorted(p.stem.removeprefix("smollm2-") for p in (ROOT / "configs" / "distill").glob("smollm2-*.yaml")
               if "type: align" in p.read_text())  # fmt: skip


@pytest.mark.parametrize("name", NAMES)
def test_cpu_run_validates(name):
    gpu = load_run_config(ROOT / "configs" / "distill" / f"smollm2-{name}.yaml")
    run = load_run_config(align_cpu.cpu_run(name, steps=3, batch_size=2))
    assert [s.type for s in run.stages] == ["align"] and run.stages[0].steps == 3
    assert run.trainer.accelerator == "cpu" and run.trainer.precision == "32-true"
    assert run.student.init == gpu.student.init and run.student.convert == gpu.student.convert
    assert run.student.teacher_layers == gpu.student.teacher_layers


def test_unknown_name_is_one_clear_error():
    with pytest.raises(SystemExit, match="smollm2-nope.yaml: no such run YAML"):
        align_cpu.cpu_run("nope", steps=1, batch_size=1)


def test_teacher_text_mixture_validates():
    run = load_run_config(align_cpu.cpu_run("mla", steps=3, batch_size=2, teacher_text=8704))
    kinds = {s.source: s.weight for s in run.data.sources}
    assert kinds == {"teacher_generated": 0.5, "shakespeare": 0.5}
