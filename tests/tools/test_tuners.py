"""The tuners run end to end on CPU under Triton's interpreter (--device cpu --compile-only, tiny
shapes): the shared timing and recording (tools/_tuning.py) and every row they write."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")
TOOLS = Path(__file__).resolve().parents[2] / "tools"
TINY = {
    "tune_ssm_kernels.py": "--length 16 --batch 1 --dim 2 --dstate 2 --fwd-block-d 1 --fwd-block-l 16 "
    "--bwd-block-d 1 --bwd-block-l 16 --warps 1 --fwd-per-thread 0,64 --bwd-per-thread 0,64",
    "tune_causal_conv1d.py": "--lengths 16 --batch 1 --dim 4 --fwd-block-d 4 --fwd-block-l 16 --bwd-block-d 4 "
    "--bwd-block-l 16 --warps 1 --fwd-groups 0,8 --bwd-groups 0,8 --which both --tiles 1,2 --prefetch 0,1",
    # "both": the queue's convtune; --prefetch 1 with 2 tiles a program runs the PREFETCH kernel
}


@pytest.mark.parametrize("script", list(TINY))
def test_tuner_runs_and_records_every_row(script, tmp_path):
    out = tmp_path / "rows.json"
    cmd = [sys.executable, str(TOOLS / script), "--device", "cpu", "--compile-only", *TINY[script].split()]
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    res = subprocess.run([*cmd, "--out", str(out)], capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    rows = json.loads(out.read_text())
    printed = [ln for ln in res.stdout.splitlines() if ln.startswith("{")]
    assert rows and len(printed) == len(rows), "each row printed once and written to --out"
    assert {r["kernel"] for r in rows} == {"fwd", "bwd"}


@pytest.mark.parametrize(
    ("script", "args", "key"),
    [
        ("tune_moe_grouped.py", "--shard 0/18", "group"),  # the default and a plan row (35 quick rows in all)
        ("tune_moe_step.py", "--batch 1 --shard 0/3", "us_per_layer"),
    ],
)
def test_moe_tuner_runs_and_records_every_row(script, args, key, tmp_path):
    """The MoE tuners (the fused experts' tiles, the decode step's) on tiny shapes: the default's row first, then
    every configuration of the shard, each printed once and written to --out."""
    out = tmp_path / "rows.json"
    cmd = [sys.executable, str(TOOLS / script), "--device", "cpu", "--quick", "--compile-only", *args.split()]
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    res = subprocess.run([*cmd, "--out", str(out)], capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    rows = json.loads(out.read_text())
    printed = [ln for ln in res.stdout.splitlines() if ln.startswith("{")]
    assert len(rows) == 2 and len(printed) == len(rows), rows
    assert rows[0]["config"] == {} and all(key in r and "error" not in r for r in rows), rows


def test_conv_tuner_names_an_unknown_kernel():
    """--which takes fwd, bwd, both or '': anything else is an error naming it, before any kernel runs."""
    cmd = [sys.executable, str(TOOLS / "tune_causal_conv1d.py"), "--device", "cpu", "--compile-only", "--which", "bwdd"]
    res = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TRITON_INTERPRET": "1"}, timeout=300)
    assert res.returncode == 2 and "unknown kernels ['bwdd']" in res.stderr, res.stderr[-2000:]


def test_conv_best_picks_each_kernels_fastest_row_at_the_length():
    """tools/device/conv_best.py: the fastest timed row per kernel at the length asked, errors and others left out."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("conv_best", TOOLS / "device" / "conv_best.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    row = lambda k, L, ms, **kw: dict(kernel=k, length=L, ms=ms, BLOCK_D=1, BLOCK_L=1024, num_warps=2, **kw)  # noqa: E731
    rows = [row("bwd", 16384, 0.30, TILES=1), row("bwd", 16384, 0.25, TILES=4), row("bwd", 4096, 0.01, TILES=1),
            row("fwd", 16384, 0.2), {"kernel": "fwd", "length": 16384, "error": "out of resources"}]  # fmt: skip
    got = mod.best(rows, 16384)
    assert got == {"bwd": dict(BLOCK_D=1, BLOCK_L=1024, num_warps=2, TILES=4),
                   "fwd": dict(BLOCK_D=1, BLOCK_L=1024, num_warps=2)}  # fmt: skip
    assert mod.best(rows, 1024) == {}
