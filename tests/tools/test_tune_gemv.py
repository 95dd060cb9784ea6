"""tools/tune_gemv.py without a GPU: the grid, the dry run's plans (as a 132-SM GPU plans them), the exit without
CUDA, the bf16 check, the best-configuration summary, and one case swept end to end under Triton's interpreter at a
tiny shape (graph capture and timing stubbed: they need CUDA)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, TRITON_SKIP

TOOL = ROOT / "tools" / "tune_gemv.py"


@pytest.fixture(scope="module")
def tg():
    pytest.importorskip("triton")
    sys.path.insert(0, str(TOOL.parent))  # the tool imports tools/_tuning.py
    try:
        spec = importlib.util.spec_from_file_location("tune_gemv", TOOL)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    finally:
        sys.path.remove(str(TOOL.parent))
    return mod


def test_grid_holds_only_keys_that_differ_from_the_cuda_config(tg):
    gt = tg.gt
    for quick in (False, True):
        grid = tg.build_grid(quick)
        assert next(iter(grid)) == "default" and grid["default"] == {}
        keys = [tuple(sorted(c.items())) for c in grid.values()]
        assert len(set(keys)) == len(keys), "no configuration twice"
        for name, cfg in grid.items():
            assert all(k in gt.CUDA_CONFIG and gt.CUDA_CONFIG[k] != v for k, v in cfg.items()), (name, cfg)
    full, quick = tg.build_grid(), tg.build_grid(True)
    assert len(quick) < 10 < len(full) < 200
    swept = {k for c in full.values() for k in c}
    assert {"BLOCK_N", "MIN_BLOCK_N", "MAX_BLOCK_K", "MAX_TILE", "num_warps", "PROGRAMS_PER_SM", "SPLIT_BELOW_PER_SM",
            "FIXUP", "L2_PREFETCH"} <= swept  # fmt: skip


def test_wide_grid_only_where_rows_reach_wide_m(tg, capsys):
    """Rows of WIDE_M (32) or more add the wide tiles (WIDE_MIN_BLOCK_N, MAX_TILE, M_TILE), whose plans at 64 rows
    differ from the default's; the grid of a 16-row sweep has none of them."""
    narrow, wide = tg.build_grid(), tg.build_grid(wide=True)
    assert set(narrow) < set(wide) and not any("M_TILE" in c or "WIDE_MIN_BLOCK_N" in c for c in narrow.values())
    assert {"M_TILE", "WIDE_MIN_BLOCK_N"} <= {k for c in wide.values() for k in c}
    assert tg.build_grid(True, wide=True) == tg.build_grid(True), "--quick stays tiny"
    cpu = torch.device("cpu")
    plans = {tg.plan_key(tg.plan_of(64, "gate_up", c, cpu)) for c in wide.values()}
    assert len(plans) > len({tg.plan_key(tg.plan_of(64, "gate_up", c, cpu)) for c in narrow.values()})
    row_blocks = tg.plan_of(64, "o", {"M_TILE": 32}, cpu)
    assert row_blocks["m_blocks"] == 2 and "x2 row blocks" in tg.plan_str(row_blocks)
    assert tg.main(["--dry-run", "--rows", "64", "--shapes", "o"]) == 0
    assert f"{len(wide)} configurations over " in capsys.readouterr().out


def test_dry_run_plans_as_the_gpu_did(tg, capsys):
    """The flat configuration's plans at 16 rows are the ones the H200 chose (docs/results/kernels/gemv_h200.json),
    the default's are the per-epilogue winners of the H100 sweep (gemv_tune_h100_16_8.log: Q|K|V 16x256 w4, O and
    down 16x64 w2, gate|up 32x256), and CONFIG_OVERRIDE is left as it was."""
    assert tg.main(["--dry-run", "--quick", "--rows", "16", "--shapes", "qkv_rope,o,gate_up,down,qkv"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].startswith(f"{len(tg.build_grid(True))} configurations over ")
    flat = next(ln for ln in lines if ln.startswith("flat |"))
    cells = [c.strip() for c in flat.split("|")[2:]]
    assert cells == ["16x512 60x1 w4 l2", "16x128 36x5 w4 +reduce l2", "16x512 192x1 w4 l2",
                     "16x256 36x8 w4 +reduce l2", "16x128 60x5 w4 +reduce l2"]  # fmt: skip
    default = next(ln for ln in lines if ln.startswith("default |"))
    cells = [c.strip() for c in default.split("|")[2:]]
    assert cells == ["16x256 60x1 w4 l2", "16x64 36x5 w2 +reduce l2", "32x256 96x3 w4 +reduce l2",
                     "16x64 36x8 w2 +reduce l2", "16x128 60x5 w4 +reduce l2"]  # fmt: skip
    for name in tg.build_grid(True):
        assert any(ln.startswith(f"{name} |") for ln in lines), name
    assert "distinct plans at 16 rows: qkv_rope " in out and "distinct (shape, rows, plan)" in out
    assert tg.gt.CONFIG_OVERRIDE == {}
    nosplit = tg.plan_of(16, "o", {"SPLIT_BELOW_PER_SM": 0.0}, torch.device("cpu"))
    assert nosplit["n_splits"] == 1 and nosplit["launches"] == 1
    fixup = tg.plan_of(16, "down", {"FIXUP": True}, torch.device("cpu"))
    assert fixup["n_splits"] == 8 and fixup["fixup"] and fixup["launches"] == 1


def test_without_cuda_it_exits_2_with_one_line():
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    res = subprocess.run([sys.executable, str(TOOL), "--rows", "16"], capture_output=True, text=True, env=env,
                         cwd=ROOT, timeout=300)  # fmt: skip
    assert res.returncode == 2, res.stderr[-2000:]
    assert res.stderr.strip().count("\n") == 0 and "CUDA" in res.stderr and "--dry-run" in res.stderr
    assert res.stdout == ""


def test_check_allows_a_rounding_and_flags_more(tg):
    ref = torch.tensor([1.0, -2.0, 0.5, 0.0], dtype=torch.bfloat16)
    one_ulp = torch.tensor([1.0078125, -2.0, 0.5, 0.0], dtype=torch.bfloat16)  # 1 + 2^-7
    r = tg.check([one_ulp], [ref])
    assert r["ok"] and r["max_abs_err"] == pytest.approx(2**-7) and r["rel_err"] == pytest.approx(2**-8)
    assert not tg.check([torch.tensor([1.0, -2.0, 0.6, 0.0], dtype=torch.bfloat16)], [ref])["ok"]
    assert not tg.check([torch.tensor([1.0, float("nan"), 0.5, 0.0])], [ref])["ok"]
    assert not tg.check([ref, torch.ones(3)], [ref, torch.zeros(3)])["ok"], "every output counts (the caches)"


def _rows(times: dict) -> list[dict]:
    """Synthetic timed rows: {(shape, M): {config: ms}}, each config's override naming it."""
    rows = [{"meta": True}]
    for (s, M), per in times.items():
        rows.append({"shape": s, "M": M, "config": "cublas_f_linear", "override": None, "ms": 0.001})
        for name, ms in per.items():
            override = {} if name == "default" else {"KEY_" + name: 1} if name != "two" else {"A": 1, "B": 2}
            rows.append({"shape": s, "M": M, "config": name, "override": override, "plan_str": name, "ms": ms,
                         "default_ms": per["default"], "cublas_ms": 0.001, "x_vs_cublas": 0.001 / ms})  # fmt: skip
    rows.append({"shape": "o", "M": 16, "config": "broken", "override": {"X": 1}, "status": "wrong"})
    return rows


def test_summary_suggests_the_config_that_wins_every_case(tg):
    s = tg.summarize(_rows({("o", 16): {"default": 5.0, "a": 4.0, "two": 4.0, "b": 4.5},
                            ("down", 16): {"default": 6.0, "a": 3.0, "two": 3.02, "b": 2.0}}))  # fmt: skip
    assert s["wins_everywhere"] is None, "b wins down, a wins o"
    assert s["least_total"] == "b" and s["least_total_ms"] == pytest.approx(6.5) and s["default_total_ms"] == 11.0
    assert s["best"]["o_m16"]["config"] == "a" and s["best"]["down_m16"]["config"] == "b"
    s = tg.summarize(_rows({("o", 16): {"default": 5.0, "a": 4.0, "two": 4.0, "b": 4.5},
                            ("down", 16): {"default": 6.0, "a": 3.0, "two": 3.02, "b": 3.5}}))  # fmt: skip
    # a and two both win everywhere (3.02 is within 1% of 3.0): the one with fewer overridden keys
    assert s["wins_everywhere"] == "a" and s["suggested_override"] == {"KEY_a": 1}
    s = tg.summarize(_rows({("o", 16): {"default": 4.0, "a": 4.0}}))
    assert s["wins_everywhere"] == "default" and s["suggested_override"] == {}
    text = tg.report(s, ["o"], [16], torch.device("cpu"))
    assert "| o_m16 |" in text and "(the default already)" in text


@pytest.mark.skipif(TRITON_SKIP is not None, reason=str(TRITON_SKIP))
def test_a_tiny_case_sweeps_end_to_end_in_the_interpreter(tg, monkeypatch):
    """sweep_case on CPU tensors (the kernel under Triton's interpreter; graph capture and timing stubbed): every
    configuration gets a row, configurations with one plan share a timing, a wrong output is reported untimed."""
    if torch.cuda.is_available():
        pytest.skip("the kernel runs compiled here (this test is the CPU's)")
    from archzoo.bench.kernels import decode as bench_decode

    monkeypatch.setitem(bench_decode.GEMV_SHAPES, "tiny_qkv", (48, 32, True))
    monkeypatch.setitem(tg.SHAPES, "tiny_rope", ("tiny_qkv", "rope"))
    monkeypatch.setitem(bench_decode.GEMV_SHAPES, "tiny_down", (24, 96, False))
    monkeypatch.setitem(tg.SHAPES, "tiny_res", ("tiny_down", "residual"))
    monkeypatch.setattr(tg, "HEADS", 1)
    monkeypatch.setattr(tg, "KV_HEADS", 1)
    monkeypatch.setattr(tg, "HEAD_DIM", 16)
    monkeypatch.setattr(tg, "SLOTS", 8)
    monkeypatch.setattr(bench_decode, "_capture_chain", lambda fn, ws: "graph")
    fake = lambda graphs, rounds: {n: [0.002 if n == "cublas_f_linear" else 0.001 + len(n) * 1e-6] * rounds  # noqa: E731
                                   for n in graphs}  # fmt: skip
    monkeypatch.setattr(tg, "time_graphs", fake)
    grid = tg.build_grid(quick=True)
    real = tg.Case.kernel

    def wrong_with_fixup(self, w):  # a broken configuration: its output off by one
        out = real(self, w)
        return out + 1 if tg.gt.CONFIG_OVERRIDE.get("FIXUP") else out

    monkeypatch.setattr(tg.Case, "kernel", wrong_with_fixup)
    rows = []
    for shape in ("tiny_rope", "tiny_res"):
        case = tg.Case(shape, 8, copies=2, device="cpu")
        rows += tg.sweep_case(case, grid, 2, 1e12, deadline=float("inf"))
    for shape in ("tiny_rope", "tiny_res"):
        mine = [r for r in rows if r["shape"] == shape]
        assert [r["config"] for r in mine] == ["cublas_f_linear", *grid]
        default = mine[1]
        assert default["status"] == "ok" and default["rel_err_vs_pytorch"] < 1e-2 and default["x_vs_default"] == 1
        for r in mine[2:]:
            fixed_up = r["plan"]["fixup"]
            assert r["status"] == ("wrong" if fixed_up else "ok"), r
            assert ("ms" in r) == (not fixed_up) and (r.get("max_abs_err", 0) >= 1) == fixed_up
            if "same_plan_as" in r:
                assert r["ms"] == next(x["ms"] for x in mine if x["config"] == r["same_plan_as"])
    assert any(r["plan"] and r["plan"]["fixup"] for r in rows), "a split configuration with FIXUP was swept"
    summary = tg.summarize(rows)
    assert summary["wins_everywhere"] == "default" and set(summary["best"]) == {"tiny_res_m8", "tiny_rope_m8"}
    assert tg.gt.CONFIG_OVERRIDE == {}


def test_rope_split_rows_plan_qkv_split_with_one_launch(tg):
    """The grid's FIXUP rows and "ropesplit" split Q|K|V with RoPE along K at 16 rows (60 column blocks of 16 for
    the teacher's 960 rows, against 132 SMs), summed by the last split program: one launch; without ROPE_SPLIT it
    never splits; the other projections' plans are the default's under "ropesplit"."""
    cpu = torch.device("cpu")
    grid = tg.build_grid()
    base = tg.plan_of(16, "qkv_rope", grid["default"], cpu)
    split = tg.plan_of(16, "qkv_rope", grid["ropesplit"], cpu)
    assert base["n_splits"] == 1 and split["n_splits"] > 1 and split["fixup"] and split["launches"] == 1
    fixup_rows = [c for c in grid.values() if c.get("FIXUP")]
    assert fixup_rows and all(c.get("ROPE_SPLIT") for c in fixup_rows)
    for name in ("o", "gate_up", "down"):
        assert tg.plan_of(16, name, grid["ropesplit"], cpu) == tg.plan_of(16, name, grid["default"], cpu), name
