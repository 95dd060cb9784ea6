"""Run YAML schema: shipped distill configs parse; bad ones name the file, the key and what is allowed."""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import yaml

import archzoo
from archzoo.train.config import load_run_config

from conftest import ROOT

DISTILL_CONFIGS = sorted((ROOT / "configs" / "distill").glob("*.yaml"))

GOOD = {
    "teacher": "smollm2-135m",
    "student": {
        "config": {
            "vocab_size": 64,
            "d_model": 32,
            "n_layers": 2,
            "mixer": {"type": "attention", "n_heads": 4, "n_kv_heads": 1},
            "ffn": {"type": "swiglu", "d_ff": 64},
        },
        "init": "random",
    },
    "data": {"source": "random", "block_len": 16},
    "stages": [{"name": "align", "type": "align", "steps": 2}, {"name": "kd", "type": "kd", "steps": 3}],
}


def _edit(path: str, value, *more):
    """GOOD with ``path`` set to ``value`` (and each further (path, value) pair in ``more``)."""
    data = copy.deepcopy(GOOD)
    for key, new in ((path, value), *zip(more[::2], more[1::2], strict=True)):
        d = data
        *head, last = key.split(".")
        for k in head:
            d = d[int(k)] if k.isdigit() else d.setdefault(k, {})
        d[last] = new
    return data


def test_good_config_and_derived_values():
    run = load_run_config(GOOD)
    assert run.total_steps == 5
    assert run.stage_at(0) == (0, 0) and run.stage_at(2) == (1, 0) and run.stage_at(4) == (1, 2)
    assert run.stages[0].trainable == ["blocks.*.mixer.*"] and run.stages[1].trainable == ["*"]
    assert run.student_config.n_layers == 2
    assert run.trainer.precision == "32-true" and run.optimizer.schedule == "cosine"


@pytest.mark.parametrize("path", DISTILL_CONFIGS, ids=lambda p: p.name)
def test_every_shipped_distill_yaml_parses(path):
    student = yaml.safe_load(path.read_text())["student"].get("config")
    if isinstance(student, str):
        assert (path.parent / student).is_file(), f"{path.name}: student config {student} does not exist"
    run = load_run_config(path)
    assert run.total_steps > 0


BAD = [
    ("misspelt top-level key", _edit("stagez", []), "stagez: unknown key"),
    ("kd key on an align stage", _edit("stages.0.temperature", 2.0), "stages.0.temperature: unknown key"),
    ("unknown stage type", _edit("stages.1.type", "dpo"), "stages.1: unknown type 'dpo'; expected one of"),
    ("unknown divergence", _edit("stages.1.kl", "fwd"), "stages.1.kl: Input should be 'forward', 'reverse' or 'jsd'"),
    ("temperature <= 0", _edit("stages.1.temperature", 0), "stages.1.temperature: Input should be greater than 0"),
    ("jsd beta out of range", _edit("stages.1.jsd_beta", 1.0), "stages.1.jsd_beta: Input should be less than 1"),
    ("no stages", _edit("stages", []), "stages: List should have at least 1 item"),
    ("duplicate stage names", _edit("stages.1.name", "align"), "stages.1.name: stage name 'align' is used twice"),
    ("empty trainable", _edit("stages.1.trainable", []), "stages.1.trainable: must list at least one"),
    ("nothing to train", _edit("stages.1.kl_weight", 0), "stages.1.kl_weight: kl_weight and ce_weight are both 0"),
    ("unknown trainer key", _edit("trainer.max_epochs", 3), "trainer.max_epochs: unknown key"),
    ("unknown precision", _edit("trainer.precision", "fp8"), "trainer.precision: Input should be '32-true'"),
    ("unknown strategy", _edit("trainer.strategy", "dpp"), "trainer.strategy: strategy 'dpp' is unknown; expected"),
    ("deepspeed", _edit("trainer.strategy", "deepspeed"), "trainer.strategy: strategy 'deepspeed' is not supported"),
    ("fsdp1 offload", _edit("trainer.strategy", "fsdp_cpu_offload"), "trainer.strategy: .*for sharded training use"),
    ("max_steps past stages", _edit("trainer.max_steps", 9), "trainer.max_steps: max_steps=9 exceeds the stages' 5"),
    ("plain ddp with align", _edit("trainer.strategy", "ddp"), "trainer.strategy: .*ddp_find_unused_parameters_true"),
    ("unknown schedule", _edit("optimizer.schedule", "linear"), "optimizer.schedule: Input should be 'cosine'"),
    ("bad betas", _edit("optimizer.betas", [0.9, 1.5]), r"optimizer.betas: betas must lie in \[0, 1\)"),
    ("unknown data source", _edit("data.source", "wiki"), "data.source: Input should be 'shakespeare'"),
    ("text without path", _edit("data.source", "text"), "data.path: source 'text' needs a path"),
    ("missing data file", _edit("data", {"source": "jsonl", "path": "nope.jsonl"}), "data.path: 'nope.jsonl': no such"),
    ("random takes no path", _edit("data.path", "x.txt"), "data.path: source 'random' takes no path"),
    ("bad student model", _edit("student.config.mixer.n_kv_heads", 3), "student.config.mixer.n_kv_heads: n_kv_heads=3"),
    ("bad student init", _edit("student.init", "pretrained"), "student.init: 'pretrained' is neither 'convert'"),
    ("student without config", _edit("student.config", None), "student.config: required when init is 'random'"),
    ("options without convert", _edit("student.convert", {"seed": 1}), "student.convert: converter options need init"),
    ("layer map length", _edit("student.teacher_layers", [0]), "student.teacher_layers: lists 1 layers but"),
    ("missing teacher", _edit("teacher", ""), "teacher: String should have at least 1 character"),
    (
        "fused loss, reverse KL",
        _edit("speed.fused_loss", True, "stages.1.kl", "reverse"),
        "speed.fused_loss: the fused loss computes the forward KL only, but stage 'kd' has kl: reverse",
    ),
    (
        "fused loss, vocab chunks",
        _edit("speed.fused_loss", True, "stages.1.vocab_chunk", 64),
        "stages.1.vocab_chunk: the fused loss streams the vocabulary itself",
    ),
]


@pytest.mark.parametrize("name,data,message", BAD, ids=[b[0] for b in BAD])
def test_bad_run_config_names_the_key(name, data, message, tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(archzoo.ConfigError, match=f"^{path}: {message}"):
        load_run_config(path)


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(archzoo.ConfigError, match="nope.yaml: no such file"):
        load_run_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("teacher: [")
    with pytest.raises(archzoo.ConfigError, match="bad.yaml: not valid YAML"):
        load_run_config(bad)


def test_relative_paths_are_taken_from_the_yaml_folder(tmp_path):
    (tmp_path / "students").mkdir()
    (tmp_path / "students" / "s.yaml").write_text(yaml.safe_dump(GOOD["student"]["config"]))
    (tmp_path / "corpus.txt").write_text("to be or not to be")
    data = {**GOOD, "student": {"config": "students/s.yaml", "init": "random"}}
    data["data"] = {"source": "text", "path": "corpus.txt"}
    (tmp_path / "runs").mkdir()
    path = tmp_path / "runs" / "r.yaml"
    path.write_text(yaml.safe_dump({**data, "student": {"config": "../students/s.yaml", "init": "random"}}))
    data["data"] = {"source": "text", "path": "../corpus.txt"}
    path.write_text(yaml.safe_dump({**data, "student": {"config": "../students/s.yaml", "init": "random"}}))
    run = load_run_config(path)
    assert run.student_config.d_model == 32
    assert run.resolve_path(run.data.path) == tmp_path / "runs" / ".." / "corpus.txt"


def test_cli_bad_config_exits_2_with_one_line(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(_edit("stages.1.kl", "fwd")))
    proc = subprocess.run(
        [sys.executable, "-m", "archzoo", "distill", str(path), "--output-dir", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}: stages.1.kl: "), proc.stderr
