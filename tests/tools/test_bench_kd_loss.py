"""tools/bench_kd_loss.py runs end to end on CPU at tiny shapes (the reference kd_loss_rows; times mean nothing):
every form gives the same loss and the fused gradients match the unfused ones to bf16 rounding."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

TOOLS = Path(__file__).resolve().parents[2] / "tools"


def test_bench_kd_loss_smoke(tmp_path):
    out = tmp_path / "kd.json"
    cmd = [sys.executable, str(TOOLS / "bench_kd_loss.py"), "--tokens", "48", "--vocab", "90", "--d", "8",
           "--token-chunk", "16", "--out", str(out)]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    for pair in (("unfused_kl", "fused_kl"), ("unfused_kl_ce", "fused_kl_ce")):
        ref, got = rows[pair[0]], rows[pair[1]]
        assert got["status"] == "ok" and abs(got["loss"] - ref["loss"]) <= 1e-4 * abs(ref["loss"])
        assert max(got["grad_rel_err_vs_unfused"]) < 2e-2  # bf16 gradients
    assert "liger_kl" in rows
