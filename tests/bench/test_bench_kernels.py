"""archzoo.bench.kernels (``archzoo bench kernels``): the report table, the CLI's dispatch, and the ops that also
run on the CPU at tiny shapes (la, based, moe; the other timings need a GPU)."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from archzoo.bench.kernels import OPS, _table, bench_moe
from archzoo.cli import main

from conftest import TRITON_SKIP, interpreter_only


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
    assert err.startswith("error: the kernel benchmark needs a CUDA GPU (") and "\n" not in err, err
    assert "la,based,moe" in err, "says what runs without a GPU"
    assert not out.exists()


def test_cli_kernels_unknown_op_lists_the_valid_ones(tmp_path, capsys):
    assert main(["bench", "kernels", "--ops", "la,lla", "--out", str(tmp_path / "k.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert "unknown op 'lla'" in err and "la_update" in err and "moe" in err, err


def test_help_lists_every_op(capsys):
    with pytest.raises(SystemExit):
        main(["bench", "kernels", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    for op in OPS:
        assert op in out, op
    assert "--tiny" in out


FLA = importlib.util.find_spec("fla") is not None


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU smoke run; a GPU runs the real shapes")
def test_la_based_moe_run_on_the_cpu_at_tiny_shapes(tmp_path, capsys):
    """``--ops la,based,moe`` without a GPU: tiny shapes, every archzoo row timed, its backend recorded, fla's
    rows say it is missing, the MoE's grouped side runs or says why not, JSON and tables written."""
    out = tmp_path / "k.json"
    assert main(["bench", "kernels", "--ops", "la,based,moe", "--rounds", "1", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    res = json.loads(out.read_text())
    assert res["tiny"] is True and res["device"].startswith("cpu")
    la = res["linear_attention"]
    assert set(la["normalize_false"]) == set(la["normalize_true"]) == {"64", "100"}
    for norm in ("normalize_false", "normalize_true"):
        for T, cell in la[norm].items():
            ours = cell["archzoo"]
            assert ours["status"] == "ok" and ours["fwd_ms"] > 0 and ours["fwdbwd_ms"] > 0, (norm, T, ours)
            assert ours["backend"] in ("chunk", "triton"), ours
            assert 0 < ours["hbm_fraction_fwd"] and 0 < ours["hbm_fraction_fwdbwd"]
            if not FLA:
                assert cell["fla_chunk_linear_attn"]["status"].startswith("fla not installed"), cell
                assert ours["fla_over_ours_fwd"] is None and ours["fla_over_ours_fwdbwd"] is None
    based = res["based"]
    assert based["shape"]["features"] == 273
    for T, cell in based["rows"].items():
        ours = cell["archzoo"]
        assert ours["status"] == "ok" and ours["fwdbwd_ms"] > 0, (T, ours)
        assert ours["backend"] in ("chunk", "triton"), ours  # the BASED kernel on CUDA (and the interpreter)
        chunk = cell["archzoo_chunk"]
        assert chunk["status"] == "ok" and "273 features" in chunk["backend"], chunk  # the expanded form, as before
        if not FLA:
            assert cell["fla_parallel_based"]["status"].startswith("fla not installed"), cell
    moe = res["moe"]
    assert moe["capacity"]["mode"].startswith("train") and moe["capacity"]["factor"] == 1.25
    rows = moe["rows"]["128"]
    dense = rows["dense_swiglu_192"]  # top_k x d_ff = 2 x 96 hidden
    assert dense["status"] == "ok" and dense["over_dense_fwd"] == 1.0
    assert rows["archzoo_loop"]["status"] == "ok" and rows["archzoo_loop"]["over_dense_fwdbwd"] > 0
    grouped = rows["archzoo_grouped"]
    if not moe["dispatch_switch"]:
        assert grouped["status"].startswith("unavailable"), grouped
    elif grouped["status"] == "ok":  # the path that ran is named; same routing and weights as the loop
        assert grouped["last_dispatch"] == "grouped" and grouped["rel_err_vs_loop"] < 2e-2, grouped
    else:  # a torch without a grouped GEMM on this CPU: the layer says why, and the row carries it
        assert "grouped GEMM cannot run" in grouped["status"], grouped
    padded = rows["archzoo_padded"]  # capacity-padded slabs: torch.bmm, on every device
    assert padded["status"] == "ok" and padded["last_dispatch"] == "padded" and padded["rel_err_vs_loop"] < 2e-2, padded
    layer_fused = rows["archzoo_fused"]  # the layer with DISPATCH="fused": same routing and drops as the loop
    assert layer_fused["status"] == "ok" and layer_fused["last_dispatch"] == "fused", layer_fused
    assert layer_fused["rel_err_vs_loop"] < 2e-2, layer_fused
    fused = rows["archzoo_fused_experts"]  # moe_grouped_experts (its naive form here: the CPU, no interpreter)
    assert fused["status"] == "ok" and fused["over_dense_fwd"] > 0, fused
    routed = rows["archzoo_fused_routed"]  # with moe_route's routing (its reference here: no counts)
    assert routed["status"] == "ok" and routed["over_dense_fwdbwd"] > 0, routed
    assert moe["whole_graph"] is None, "the whole-graph rows are CUDA graphs: not on the CPU"
    for title in ("## linear_attention normalize=False", "## linear_attention normalize=True", "## BASED", "## MoE"):
        assert title in text, title
    if not FLA:
        assert "| fla_chunk_linear_attn | fla not installed | fla not installed |" in text


def test_moe_sets_the_dispatch_switch_around_each_side_and_restores_it(monkeypatch):
    """Each timed MoE call runs under its side's DISPATCH value, which is put back after the call (whether or
    not layers/moe.py has the switch yet: here it is given one)."""
    from archzoo.layers import moe as moe_mod

    monkeypatch.setattr(moe_mod, "DISPATCH", "auto", raising=False)
    seen = []
    forward = moe_mod.MoE.forward

    def spy(self, x):
        seen.append(moe_mod.DISPATCH)
        return forward(self, x)

    monkeypatch.setattr(moe_mod.MoE, "forward", spy)
    res = bench_moe(1, "cpu", n_tokens=32, d_model=16, d_ff=24)
    assert res["dispatch_switch"] is True
    assert {"grouped", "loop"} <= set(seen) and "auto" not in seen, seen
    assert moe_mod.DISPATCH == "auto"
    assert res["rows"][32]["archzoo_loop"]["status"] == "ok"
    assert "last_dispatch" in res["rows"][32]["archzoo_loop"]


@interpreter_only
@pytest.mark.skipif(TRITON_SKIP is not None, reason=str(TRITON_SKIP))
def test_la_takes_the_triton_kernel_under_the_interpreter(tmp_path, monkeypatch):
    """With TRITON_INTERPRET=1 (Triton imported interpreted by conftest) the la rows record the Triton kernel."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    out = tmp_path / "k.json"
    assert main(["bench", "kernels", "--ops", "la", "--lengths", "40", "--rounds", "1", "--out", str(out)]) == 0
    la = json.loads(out.read_text())["linear_attention"]
    for norm in ("normalize_false", "normalize_true"):
        ours = la[norm]["40"]["archzoo"]
        assert ours["status"] == "ok" and ours["backend"] == "triton", ours


def test_moe_rows_set_their_switches_for_the_call_only():
    """A MoE bench row's switches (DISPATCH, ROUTE, GATE_UP) hold during its call and are as they were after."""
    from archzoo.bench.kernels.moe import _dispatched
    from archzoo.layers import moe as moe_mod

    before = moe_mod.DISPATCH, moe_mod.ROUTE, moe_mod.GATE_UP
    seen = []
    call = _dispatched(moe_mod, lambda x: seen.append((moe_mod.DISPATCH, moe_mod.ROUTE, moe_mod.GATE_UP)) or x,
                       torch.zeros(1), "grouped", route="count", gate_up="fused")  # fmt: skip
    call()
    _dispatched(moe_mod, lambda x: seen.append((moe_mod.DISPATCH, moe_mod.ROUTE, moe_mod.GATE_UP)) or x,
                torch.zeros(1), "loop")()  # fmt: skip
    assert seen == [("grouped", "count", "fused"), ("loop", *before[1:])]
    assert (moe_mod.DISPATCH, moe_mod.ROUTE, moe_mod.GATE_UP) == before


def test_moe_whole_graph_table_prints_ratios_and_failures(capsys):
    """The MoE's whole-graph rows (forward, forward + backward each one CUDA graph) print as their own table: ms and
    x the dense layer's, a failed capture by its status."""
    from archzoo.bench.kernels.tables import _print_issue19

    row = {"status": "ok", "fwd_ms": 0.1, "fwdbwd_ms": 0.4}
    moe = {"shape": {}, "capacity": {}, "dense_reference": "d", "rows": {8: {"dense_x": row}},
           "whole_graph": {"dense_x": {**row, "over_dense_fwd": 1.0, "over_dense_fwdbwd": 1.0},
                           "archzoo_fused_experts": {"status": "ok", "fwd_ms": 0.13, "fwdbwd_ms": 0.6,
                                                     "over_dense_fwd": 1.3, "over_dense_fwdbwd": 1.5},
                           "archzoo_fused_routed": {"status": "error (RuntimeError: capture)"}}}  # fmt: skip
    _print_issue19({"moe": moe, "device": "d", "torch": "t", "triton": "t"})
    text = capsys.readouterr().out
    assert "One CUDA graph a call" in text
    assert "| archzoo_fused_experts | 0.130 | 0.600 | 1.30 | 1.50 |" in text, text
    assert "| archzoo_fused_routed | error | error | - | - |" in text, text
