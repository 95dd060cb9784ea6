"""FSDP (``trainer.strategy: fsdp``, FSDP2 under Lightning's ModelParallelStrategy; train/sharding.py).

On CPU: the config checks; on one gloo rank in this process, which modules become FSDP units, the
align and KD steps, the stage flags and the gathered export of a sharded student; and whole runs on
2 gloo processes against one process, with --resume from inside the align stage. On one GPU
(marked gpu): the same runs with bf16-mixed.
"""

from __future__ import annotations

import copy
import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import yaml

import archzoo
from archzoo.layers import ForwardContext
from archzoo.train.config import load_run_config
from archzoo.train.module import DistillModule
from archzoo.train.run import run_distill
from archzoo.train.sharding import fsdp_units, init_root, is_sharded, reshard, save_student, shard_student

from conftest import ROOT, assert_close, requires_cuda

TEACHER = {
    "vocab_size": 64,
    "d_model": 32,
    "n_layers": 2,
    "tie_embeddings": True,
    "mixer": {"type": "attention", "n_heads": 4, "n_kv_heads": 2},
    "ffn": {"type": "swiglu", "d_ff": 64},
    "init_std": 0.1,
}
MLA = {"type": "mla", "n_heads": 4, "kv_lora_rank": 16, "qk_nope_head_dim": 8, "qk_rope_head_dim": 4, "v_head_dim": 8}
# An MQA layer and an MLA layer (the family of configs/distill/smollm2-mla-fsdp.yaml), tied embeddings.
STUDENT = {
    **TEACHER,
    "mixer": {"type": "attention", "n_heads": 4, "n_kv_heads": 1},
    "layers": [{"at": [1], "mixer": MLA}],
}


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
            {"name": "kd", "type": "kd", "steps": 3, "ce_weight": 0.5, "token_chunk": 24},
        ],
        "optimizer": {"lr": 3e-3, "warmup_steps": 1},
        # Validation after step 3 leaves the root unit gathered right before the switch to the kd stage.
        "trainer": {
            "accelerator": "cpu",
            "devices": 1,
            "log_every_n_steps": 1,
            "enable_progress_bar": False,
            "val_check_interval": 3,
        },
        "checkpoint": {"every_n_steps": 4},
        "export": {"every_n_steps": 4},
    }
    for key, value in over.items():
        cfg[key] = {**cfg[key], **value} if isinstance(value, dict) else value
    return cfg


def _losses(path: Path) -> dict[int, float]:
    with open(path, newline="") as f:
        return {int(r["step"]): float(r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")}


# ---------------------------------------------------------------------------------- config


def test_fsdp_is_accepted_and_bad_precisions_name_the_key(teacher_dir, tmp_path):
    run = load_run_config(_config(teacher_dir, trainer={"strategy": "fsdp", "precision": "bf16-mixed"}))
    assert run.trainer.strategy == "fsdp", "fsdp needs no find_unused_parameters flag for an align stage"
    path = tmp_path / "run.yaml"
    for precision in ("16-mixed", "64-true"):
        path.write_text(yaml.safe_dump(_config(teacher_dir, trainer={"strategy": "fsdp", "precision": precision})))
        with pytest.raises(archzoo.ConfigError, match=f"^{path}: trainer.precision: '{precision}' does not work with"):
            load_run_config(path)
    path.write_text(yaml.safe_dump(_config(teacher_dir, trainer={"strategy": "deepspeed_stage_3"})))
    with pytest.raises(archzoo.ConfigError, match=f"^{path}: trainer.strategy: .*not supported.*use 'fsdp'"):
        load_run_config(path)


# ------------------------------------------------------------------- one gloo rank in-process


@pytest.fixture
def mesh():
    """A one-rank gloo process group and mesh in this process, torn down after the test."""
    from torch.distributed.device_mesh import init_device_mesh

    if dist.is_initialized():
        pytest.skip("a process group already exists in this process")
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield init_device_mesh("cpu", (1,))
    finally:
        dist.destroy_process_group()


def _pair(seed: int = 0):
    """(teacher, student, sharded copy of the student, the copy's DistillModule) with one align and one KD stage."""
    torch.manual_seed(seed)
    teacher, student = archzoo.build_model(TEACHER), archzoo.build_model(STUDENT)
    run = load_run_config(
        {
            "teacher": "unused",
            "student": {"config": STUDENT, "init": "random"},
            "data": {"source": "random", "block_len": 8},
            "stages": [{"name": "a", "type": "align", "steps": 1}, {"name": "kd", "type": "kd", "steps": 1}],
        }
    )
    return teacher, student, copy.deepcopy(student), run


def test_every_mixer_and_block_is_a_unit_and_names_and_flags_stay(mesh):
    _, ref, student, _ = _pair()
    student.blocks[0].ffn.requires_grad_(False)
    before = [(n, tuple(p.shape), p.requires_grad) for n, p in student.named_parameters()]
    shard_student(student, mesh)
    assert is_sharded(student) and not is_sharded(ref)
    assert fsdp_units(student) == ["", "blocks.0", "blocks.0.mixer", "blocks.1", "blocks.1.mixer"]
    after = [(n, tuple(p.shape), p.requires_grad) for n, p in student.named_parameters()]
    assert after == before, "sharding keeps every parameter's name, (global) shape and requires_grad"
    assert all(type(p).__name__ == "DTensor" for p in student.parameters())
    assert student.lm_head.weight is student.embed.weight, "the tied head and embedding stay one parameter"


def test_sharded_steps_match_and_the_export_is_full(mesh, tmp_path):
    teacher, ref, student, run = _pair()
    shard_student(student, mesh)
    init_root(student)
    ids = torch.randint(64, (2, 9))
    assert_close("hidden states", student.hidden_states(ids), ref.hidden_states(ids), 1e-6)
    x = torch.randn(2, 9, 32)
    ctx = ForwardContext()
    y, y_ref = student.blocks[1].mixer(x, None, ctx), ref.blocks[1].mixer(x, None, ctx)
    assert_close("MLA mixer called alone", y, y_ref, 1e-6)

    ours, theirs = DistillModule(run, teacher, student), DistillModule(run, teacher, ref)
    targets = torch.randint(64, (2, 9))
    for i, step in enumerate(("align", "kd")):
        for m in (ours, theirs):
            m._enter_stage(i)
            if step == "align":
                loss, _ = m.align_step(ids, [0, 1])
            else:
                loss, _ = m.kd_step(ids, targets, run.stages[1])
            loss.backward()
        for (name, p), q in zip(student.named_parameters(), ref.parameters(), strict=True):
            if q.grad is None:
                assert p.grad is None, f"{step}: {name} got a gradient but is frozen"
                continue
            assert_close(f"{step}: gradient of {name}", p.grad.full_tensor(), q.grad, 1e-5)
            p.grad = q.grad = None

    save_student(student, tmp_path / "student", is_global_zero=True)
    loaded = archzoo.from_pretrained(tmp_path / "student")
    assert list(loaded.state_dict()) == list(ref.state_dict())
    for name, p in ref.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], p), f"exported {name} differs from the weights"


def test_stage_switch_reaches_sharded_and_gathered_weights(mesh):
    """The root unit stays gathered after forward; entering a stage must still set the flags of the
    sharded parameters (which the optimizer holds and the next all-gather copies)."""
    teacher, _, student, run = _pair()
    shard_student(student, mesh)
    module = DistillModule(run, teacher, student)
    ids = torch.randint(64, (1, 4))
    for i, embed_trains in ((1, True), (0, False), (1, True)):
        student.hidden_states(ids)  # leaves the root unit gathered
        module._enter_stage(i)
        reshard(student)  # as after a backward
        w = student.embed.weight
        assert type(w).__name__ == "DTensor" and w.requires_grad == embed_trains, f"stage {i}: sharded embedding"
        student.hidden_states(ids)
        w = student.embed.weight
        assert type(w).__name__ != "DTensor", "the root unit is gathered after forward"
        assert w.requires_grad == embed_trains, f"stage {i}: gathered embedding requires_grad={w.requires_grad}"


# ---------------------------------------------------------------------------- whole runs

# One launch, three fits: Lightning starts the second rank by re-running this script, and every
# rank then runs all three (a full run, a run stopped inside the align stage, its resumption).
SCRIPT = """
import sys
from pathlib import Path
from archzoo.train.run import run_distill

full, part, out = sys.argv[1], sys.argv[2], Path(sys.argv[3])
run_distill(full, out / "full")
run_distill(part, out / "part")
run_distill(full, out / "part", resume=True)
"""


def _fsdp_runs(tmp_path: Path, cfg: dict, stop_at: int) -> Path:
    part = copy.deepcopy(cfg)
    part["trainer"]["max_steps"] = stop_at
    part["trainer"].pop("val_check_interval")  # Lightning wants it <= the run's batches
    for name, c in (("full.yaml", cfg), ("part.yaml", part)):
        (tmp_path / name).write_text(yaml.safe_dump(c))
    (tmp_path / "fsdp_runs.py").write_text(SCRIPT)
    out = tmp_path / "fsdp"
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)  # keep wheels set up there
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "fsdp_runs.py", "full.yaml", "part.yaml", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == 0, f"FSDP runs failed:\n{proc.stderr[-4000:]}"
    return out


def _check_runs(single: Path, out: Path, tol_single: float, tol_resume: float) -> None:
    want, got, resumed = (_losses(p / "logs" / "metrics.csv") for p in (single, out / "full", out / "part"))
    assert sorted(got) == sorted(resumed) == sorted(want) == list(range(6)), "one metrics.csv per run, every step"
    for step in want:
        assert got[step] == pytest.approx(want[step], rel=tol_single), f"FSDP vs one device: train/loss at {step}"
        assert resumed[step] == pytest.approx(got[step], rel=tol_resume), f"resumed vs full: train/loss at {step}"
    ckpt = torch.load(out / "full" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 6 and all(k.startswith("student.") for k in ckpt["state_dict"])
    ref = archzoo.from_pretrained(single / "student")
    for run in ("full", "part"):
        student = archzoo.from_pretrained(out / run / "student")  # a full checkpoint, on one device
        for (name, p), q in zip(ref.state_dict().items(), student.state_dict().values(), strict=True):
            assert_close(f"{run} FSDP student {name}", q, p, tol_single)
        saved = ckpt["state_dict"] if run == "full" else None
        if saved is not None:
            for name, p in student.state_dict().items():
                assert torch.equal(p, saved[f"student.{name}"]), f"exported {name} differs from last.ckpt"


def test_fsdp_two_cpu_processes_match_one_process_and_resume(teacher_dir, tmp_path):
    """2 ranks x 2 rows per micro-batch see the rows of 1 rank x 4: same losses (averaged over the
    ranks before logging) and weights. The partial run stops at step 2, inside the align stage, where
    the embedding, norms and FFNs are frozen and have no optimizer state yet."""
    fsdp = _config(teacher_dir, data={"batch_size": 2}, trainer={"strategy": "fsdp", "devices": 2})
    out = _fsdp_runs(tmp_path, fsdp, stop_at=2)
    run_distill(_config(teacher_dir), tmp_path / "single")
    _check_runs(tmp_path / "single", out, tol_single=1e-5, tol_resume=1e-6)


@pytest.mark.gpu
@requires_cuda
def test_fsdp_one_gpu_matches_one_device_and_resumes(teacher_dir, tmp_path):
    """FSDP on one GPU (world size 1, NCCL) with bf16 autocast, against the plain one-GPU run."""
    gpu = {"accelerator": "gpu", "devices": 1, "precision": "bf16-mixed"}
    out = _fsdp_runs(tmp_path, _config(teacher_dir, trainer={**gpu, "strategy": "fsdp"}), stop_at=2)
    run_distill(_config(teacher_dir, trainer=gpu), tmp_path / "single")
    _check_runs(tmp_path / "single", out, tol_single=2e-3, tol_resume=2e-3)
