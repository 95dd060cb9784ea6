"""archzoo.bench.kernels (``archzoo bench kernels``): the report table and the CLI's dispatch (the timings
themselves need a GPU)."""

from __future__ import annotations

import pytest
import torch

from archzoo.bench.kernels import _table
from archzoo.cli import main


def _ok(fwd: float, fb: float, rounds: list[float] | None = None) -> dict:
    return dict(status="ok", fwd_ms=fwd, fwdbwd_ms=fb, fwd_peak_mib=16.0, fwdbwd_peak_mib=80.0,
                fwd_host_ms=0.05, fwdbwd_host_ms=0.3, fwdbwd_rounds_ms=rounds or [fb])  # fmt: skip


def test_table_ratios_host_times_and_missing_peers():
    rows = {
        1024: {
            "archzoo": _ok(0.2, 0.8, [0.8, 0.8, 1.0]),
            "peer": _ok(0.3, 0.4, [0.4, 1.2, 0.5]),
            "absent": {"status": "not installed (x)"},
        }
    }
    text = _table("scan", rows)
    lines = {ln.split("|")[2].strip(): ln for ln in text.splitlines() if ln.startswith("| 1024")}
    assert "| 1.50 | 0.50 |" in lines["peer"], lines["peer"]  # peer ms / ours: above 1, ours is faster
    assert "| 0.50-1.50 |" in lines["peer"], "per-round ratios, round by round"
    assert "0.050 / 0.300" in lines["archzoo"]
    assert "not installed" in lines["absent"] and lines["absent"].rstrip().endswith("| - | - | - | - | - |")


def test_cli_dispatches_kernels_to_the_library_module(capsys):
    with pytest.raises(SystemExit) as e:
        main(["bench", "kernels", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: archzoo bench kernels") and "--scan-config" in out


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given without a GPU")
def test_cli_kernels_without_a_gpu_is_one_line_and_exit_2(tmp_path, capsys):
    out = tmp_path / "k.json"
    assert main(["bench", "kernels", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: the kernel benchmark needs a CUDA GPU", err
    assert not out.exists()
