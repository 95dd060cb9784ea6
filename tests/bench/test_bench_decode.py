"""``archzoo bench decode`` end to end on tiny configs on the CPU: the files, their fields, the errors.

No timing is asserted: only that the figures are there and follow the formulas the JSON states.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

import archzoo
from archzoo.cache import cache_read_bytes
from archzoo.cli import main

from conftest import ROOT

GQA = str(ROOT / "configs" / "models" / "gqa.yaml")
MAMBA = str(ROOT / "configs" / "models" / "mamba.yaml")
TINY = ["--device", "cpu", "--dtype", "fp32", "--prompt-lens", "8", "--new-tokens", "4"]
FIELDS = (
    "model implementation backend batch_size prompt_len new_tokens tokens_per_s ms_per_token prefill_ms cache_bytes "
    "weight_bytes step_bytes peak_memory_bytes hbm_fraction compile_s timing"
).split()


def _bench(out, *args: str) -> tuple[int, dict]:
    rc = main(["bench", "decode", *args, "--out", str(out)])
    return rc, json.loads((out / "decode.json").read_text())


def _check_measured(row: dict, bandwidth: float) -> None:
    """A measured row: every figure present and consistent with the formulas."""
    name = f"{row['model']} {row['implementation']} B={row['batch_size']}"
    assert not row.get("error") and not row.get("skipped"), name
    assert row["prefill_ms"] > 0 and row["compile_s"] >= 0, name
    if row["decode_s"] is None:  # a call no longer than its prefill on a busy host: said, not hidden
        assert "timing noise" in row["note"], name
        return
    b, n, s = row["batch_size"], row["new_tokens"], row["decode_s"]
    assert math.isclose(row["tokens_per_s"], b * n / s), name
    assert math.isclose(row["ms_per_token"], s / n * 1e3), name
    assert math.isclose(row["hbm_fraction"], row["step_bytes"] / (s / n) / bandwidth), name


def test_bench_decode_tiny_models_on_cpu(tmp_path):
    out = tmp_path / "out"
    rc, res = _bench(out, GQA, MAMBA, *TINY, "--batch-sizes", "1,2")
    assert rc == 0
    for key in ("device", "torch", "triton", "date", "command", "formulas", "bandwidth", "rows"):
        assert key in res, key
    assert res["command"].startswith("archzoo bench decode ") and "--batch-sizes 1,2" in res["command"]
    assert "hbm_fraction" in res["formulas"] and "step_bytes" in res["formulas"]
    bandwidth = res["bandwidth"]["bytes_per_s"]
    assert bandwidth > 0
    rows = res["rows"]
    assert [(r["model"], r["batch_size"]) for r in rows] == [(GQA, 1), (GQA, 2), (MAMBA, 1), (MAMBA, 2)]
    for r in rows:
        assert all(k in r for k in FIELDS), sorted(set(FIELDS) - set(r))
        assert r["implementation"] == "archzoo" and r["prompt_len"] == 8 and r["new_tokens"] == 4
        assert r["peak_memory_bytes"] is None  # CPU
        cfg = archzoo.load_config(r["model"])
        assert r["cache_bytes"] == archzoo.cache_bytes(cfg, r["batch_size"], 8 + 4, torch.float32)
        model = archzoo.build_model(cfg)
        assert r["weight_bytes"] == 4 * model.num_parameters()  # fp32, the tied head once
        assert r["step_bytes"] == r["weight_bytes"] + archzoo.cache_bytes(cfg, r["batch_size"], 8 + 2, torch.float32)
        assert r["step_bytes"] == r["weight_bytes"] + cache_read_bytes(cfg, r["batch_size"], 8 + 2, torch.float32)
        _check_measured(r, bandwidth)

    md = (out / "decode.md").read_text()
    assert md.startswith("# archzoo bench decode")
    assert res["command"] in md
    summary, full = md.split("## Every measurement")
    table = [ln for ln in full.splitlines() if ln.startswith("|")]
    assert "tokens/s" in table[0] and len(table) == 2 + len(rows)
    pivot = [ln for ln in summary.splitlines() if ln.startswith("|")]
    assert "B=1 P=8 | B=2 P=8 |" in pivot[0] and [ln.split("|")[1].strip() for ln in pivot[2:]] == ["gqa", "mamba"]
    assert not [p.name for p in out.iterdir() if p.name not in ("decode.json", "decode.md", "decode.png")], (
        "temporary files left"
    )
    assert (out / "decode.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_decode_hf_baseline(tmp_path):
    """A Hugging Face folder as the teacher: its archzoo row and both HF rows; a Mamba YAML: HF rows skipped."""
    pytest.importorskip("transformers")
    from archzoo.hf import to_hf

    torch.manual_seed(0)
    hf_dir = tmp_path / "hf-gqa"
    to_hf(archzoo.build_model(GQA)).save_pretrained(hf_dir)
    out = tmp_path / "out"
    rc, res = _bench(out, str(hf_dir), MAMBA, *TINY, "--batch-sizes", "1", "--baseline", "hf")
    assert rc == 0
    rows = {(r["model"], r["implementation"]): r for r in res["rows"]}
    assert len(rows) == len(res["rows"]) == 6
    for impl in ("archzoo", "hf-dynamic", "hf-static"):
        row = rows[(str(hf_dir), impl)]
        assert row["source"] == "teacher"
        _check_measured(row, res["bandwidth"]["bytes_per_s"])
    for impl in ("hf-dynamic", "hf-static"):
        assert "not Llama-shaped" in rows[(MAMBA, impl)]["skipped"]
        assert rows[(MAMBA, impl)]["tokens_per_s"] is None
    assert "skipped: not Llama-shaped" in (out / "decode.md").read_text()

    # A prompt + new tokens beyond the folder's max_position_embeddings: refused before anything is written.
    cfg = json.loads((hf_dir / "config.json").read_text())
    (hf_dir / "config.json").write_text(json.dumps({**cfg, "max_position_embeddings": 10}))
    _assert_refused(tmp_path / "long", [str(hf_dir), *TINY], "holds 10")


def _assert_refused(out, args: list[str], message: str) -> None:
    import io
    from contextlib import redirect_stderr

    err = io.StringIO()
    with redirect_stderr(err):
        rc = main(["bench", "decode", *args, "--out", str(out)])
    lines = err.getvalue().strip().splitlines()
    assert rc == 2, err.getvalue()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
    assert not out.exists(), "nothing may be written for bad input"


def test_bench_decode_attention_forms_side_by_side(tmp_path):
    """--decode-attention kernel,sdpa: one row per form and shape, the form restored afterwards."""
    from archzoo.layers import attention

    rc, res = _bench(tmp_path / "out", GQA, *TINY, "--decode-attention", "kernel,sdpa")
    assert rc == 0 and res["decode_attention"] == ["kernel", "sdpa"]
    assert all(r["attention_backend"] == "sdpa" for r in res["rows"]), "on the CPU no decode kernel runs"
    pairs = [(r["implementation"], r["decode_attention"]) for r in res["rows"]]
    assert pairs == [("archzoo", "kernel"), ("archzoo-sdpa", "sdpa")] * (len(pairs) // 2) and pairs
    assert attention.DECODE_ATTENTION == "kernel"


def test_bench_decode_linear_forms_side_by_side(tmp_path):
    """--decode-linear cublas,kernel,kernel-pdl,kernel-pdl-l2: one row per form and shape (archzoo / archzoo-gemv /
    archzoo-gemv-pdl / archzoo-gemv-pdl-l2), what the projections ran recorded, the settings (PDL's and the GEMV's
    L2 prefetch too) restored afterwards."""
    from archzoo.kernels import _pdl
    from archzoo.kernels.decode_linear import triton as gemv_triton
    from archzoo.layers import fused

    forms = "cublas,kernel,kernel-pdl,kernel-pdl-l2,kernel-pdl-l2-m16"
    rc, res = _bench(tmp_path / "out", GQA, *TINY, "--batch-sizes", "1", "--decode-linear", forms)
    assert rc == 0 and res["decode_linear"] == forms.split(",")
    pairs = [(r["implementation"], r["decode_linear"]) for r in res["rows"]]
    want = [("archzoo", "cublas"), ("archzoo-gemv", "kernel"), ("archzoo-gemv-pdl", "kernel-pdl"),
            ("archzoo-gemv-pdl-l2", "kernel-pdl-l2"), ("archzoo-gemv-pdl-l2-m16", "kernel-pdl-l2-m16")]  # fmt: skip
    assert pairs == want * (len(pairs) // 5) and pairs
    gemv = [r for r in res["rows"] if r["decode_linear"] != "cublas"]
    assert all(r["linear_backend"] in ("naive", "triton") for r in gemv), gemv  # the CPU: no Triton unless interpreted
    assert fused.DECODE_LINEAR == "auto" and _pdl.ENABLED is None, "the library's defaults restored"
    assert not gemv_triton.CONFIG_OVERRIDE, "the GEMV's configuration restored"


def test_bench_decode_inductor_option_sets(tmp_path):
    """--inductor-options: one row per option set and shape, the set in the row and in the table's label."""
    from archzoo.bench.decode import parse_inductor_options

    assert parse_inductor_options(";coordinate_descent_tuning=1,max_autotune=false") == [
        {}, {"coordinate_descent_tuning": True, "max_autotune": False}]  # fmt: skip
    rc, res = _bench(tmp_path / "out", GQA, *TINY, "--batch-sizes", "1", "--inductor-options", ";max_autotune=0")
    assert rc == 0 and res["inductor_options"] == [{}, {"max_autotune": False}]
    assert [r.get("inductor_options") for r in res["rows"]] == [None, {"max_autotune": False}]
    assert "archzoo [max_autotune=False]" in (tmp_path / "out" / "decode.md").read_text()


@pytest.mark.parametrize(
    "args, message",
    [
        (["no/such/model.yaml", *TINY], "no/such/model.yaml: no such file or folder"),
        (["not-a-teacher", *TINY], "a teacher name (smollm2-135m)"),
        ([str(ROOT / "configs"), *TINY], "not a model"),
        ([GQA, *TINY, "--batch-sizes", "1,x"], "--batch-sizes: expected comma-separated positive integers"),
        ([GQA, *TINY, "--prompt-lens", "0"], "--prompt-lens: expected comma-separated positive integers"),
        ([GQA, *TINY, "--new-tokens", "0"], "--new-tokens"),
        ([GQA, *TINY, "--dtype", "fp8"], "--dtype: unknown dtype 'fp8'"),
        ([GQA, *TINY, "--device", "tpu"], "--device"),
        ([GQA, *TINY, "--baseline", "vllm"], "--baseline"),
        ([*TINY], "MODEL"),
        ([GQA, *TINY, "--num-draft-tokens", "2"], "--num-draft-tokens: goes with --draft"),
        ([GQA, *TINY, "--draft", MAMBA, "--num-draft-tokens", "0"], "--num-draft-tokens: expected"),
        ([GQA, *TINY, "--draft", "no/such/draft.yaml"], "no/such/draft.yaml: no such file or folder"),
        ([GQA, *TINY, "--decode-attention", "kernel,flash"], "--decode-attention: expected a comma-separated list"),
        ([GQA, *TINY, "--decode-linear", "cublas,gemm"], "--decode-linear: expected a comma-separated list"),
        ([GQA, *TINY, "--inductor-options", "fast_please=1"], "--inductor-options: 'fast_please=1' is not KEY=VALUE"),
    ],
)
def test_bench_decode_bad_input(tmp_path, args, message):
    _assert_refused(tmp_path / "out", args, message)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message for a machine without CUDA")
def test_bench_decode_cuda_without_cuda(tmp_path):
    _assert_refused(tmp_path / "out", [GQA, "--device", "cuda"], "CUDA is not available")


def test_bench_decode_speculative_rows(tmp_path):
    """--draft adds one speculative row per k and shape, with acceptance and the speed-up over the target alone."""
    out = tmp_path / "out"
    rc, res = _bench(out, GQA, *TINY, "--batch-sizes", "1,2", "--draft", MAMBA, "--num-draft-tokens", "1,3")
    assert rc == 0
    assert res["draft"] == MAMBA and res["num_draft_tokens"] == [1, 3]
    rows = res["rows"]
    assert [(r["implementation"], r["batch_size"], r.get("num_draft_tokens")) for r in rows] == [
        ("archzoo", 1, None),
        ("archzoo", 2, None),
        ("speculative", 1, 1),
        ("speculative", 1, 3),
        ("speculative", 2, 1),
        ("speculative", 2, 3),
    ]
    bandwidth = res["bandwidth"]["bytes_per_s"]
    own = {r["batch_size"]: r for r in rows if r["implementation"] == "archzoo"}
    for r in rows[2:]:
        _check_measured(r, bandwidth)
        assert r["backend"] == "speculative" and r["draft"] == MAMBA
        assert 0.0 <= r["acceptance_rate"] <= 1.0
        # the greedy check (exactness itself is tests/test_speculative.py's, in float64)
        n_diff, first = r["greedy_rows_differing"], r["greedy_first_difference"]
        assert 0 <= n_diff <= r["batch_size"] and len(first) == n_diff and r["greedy_tokens_differing"] >= n_diff
        assert math.isclose(r["tokens_per_verify"], r["accepted_per_verify"] + 1)
        if r["decode_s"] is not None and own[r["batch_size"]]["decode_s"] is not None:
            assert math.isclose(r["speedup"], r["tokens_per_s"] / own[r["batch_size"]]["tokens_per_s"])
            # where a round's time goes: k+1 draft steps (the draft timed alone), one target step, the rest
            assert r["verify_steps"] >= 1 and math.isclose(r["round_ms"], r["decode_s"] * 1e3 / r["verify_steps"])
            k, base = r["num_draft_tokens"], own[r["batch_size"]]["ms_per_token"]
            assert r["draft_ms_per_step"] > 0
            assert math.isclose(r["round_rest_ms"], r["round_ms"] - (k + 1) * r["draft_ms_per_step"] - base)
    md = (out / "decode.md").read_text()
    assert "| speculative k=3 |" in md and "tokens/verify" in md and "greedy rows differing" in md
    assert "round " in md and " draft" in md
    # the chart of what the draft buys (decode.png, tokens/s against cache bytes, has one target here)
    assert (out / "decode_spec.png").stat().st_size > 10_000

    from archzoo.bench.spec_chart import spec_chart

    assert spec_chart(tmp_path / "none.png", res, rows[:2]) is None and not (tmp_path / "none.png").exists()
    # a k whose row was skipped (out of memory at 64 x 4k on an H100) keeps its place, its reason in the bar's
    skipped = dict(rows[3], tokens_per_s=None, skipped="out of cuda memory", num_draft_tokens=5)
    assert spec_chart(tmp_path / "skip.png", res, rows + [skipped]).stat().st_size > 10_000
    from archzoo.bench.spec_chart import _why

    assert _why(skipped) == "out of cuda memory" and _why({"error": "x" * 60}).endswith("...")


def test_speculative_rows_run_under_each_linear_form(tmp_path, monkeypatch):
    """With several --decode-linear forms, each speculative row runs under its own form (the draft's steps and the
    target's verify alike) and its speed-up is over the plain row of that form: before, speculative rows ran
    under the module's default ("auto": the GEMV at batch 1) while compared with the cuBLAS row."""
    import archzoo.bench.decode as bd
    from archzoo.layers import fused

    seen = []
    real = bd.run_archzoo
    monkeypatch.setattr(
        bd,
        "run_archzoo",
        lambda *a, **k: seen.append((k.get("draft") is not None, fused.DECODE_LINEAR)) or real(*a, **k),
    )
    out = tmp_path / "out"
    rc, res = _bench(out, GQA, *TINY, "--decode-linear", "cublas,kernel", "--draft", MAMBA, "--num-draft-tokens", "2")
    assert rc == 0
    spec = [r for r in res["rows"] if r["implementation"] == "speculative"]
    assert [r["decode_linear"] for r in spec] == ["cublas", "kernel"] * (len(spec) // 2) and spec
    assert sorted(set(seen)) == [(False, "cublas"), (False, "kernel"), (True, "cublas"), (True, "kernel")]
    plain = {(r["batch_size"], r["decode_linear"]): r for r in res["rows"] if r["implementation"].startswith("archzoo")}
    for r in spec:
        base = plain[r["batch_size"], r["decode_linear"]]["tokens_per_s"]
        if r.get("tokens_per_s") and base:
            assert math.isclose(r["speedup"], r["tokens_per_s"] / base)
    md = (out / "decode.md").read_text()
    assert "| speculative k=2 |" in md and "| speculative-gemv k=2 |" in md


def test_speculative_rows_under_each_attention_form(tmp_path):
    """--decode-attention kernel,sdpa: a speculative row per attention form (the verify and the draft's steps under
    it), each compared with the plain row of the same form."""
    out = tmp_path / "out"
    rc, res = _bench(out, GQA, *TINY, "--batch-sizes", "1", "--decode-attention", "kernel,sdpa", "--draft", MAMBA,
                     "--num-draft-tokens", "2")  # fmt: skip
    assert rc == 0
    spec = [r for r in res["rows"] if r["implementation"] == "speculative"]
    assert [r["decode_attention"] for r in spec] == ["kernel", "sdpa"]
    plain = {r["decode_attention"]: r for r in res["rows"] if r["implementation"].startswith("archzoo")}
    for r in spec:
        base = plain[r["decode_attention"]]
        if r.get("tokens_per_s") and base.get("tokens_per_s"):
            assert math.isclose(r["speedup"], r["tokens_per_s"] / base["tokens_per_s"])
    md = (out / "decode.md").read_text()
    assert "| speculative k=2 |" in md and "| speculative-sdpa k=2 |" in md


def test_speculative_row_says_why_its_round_is_not_split(tmp_path, monkeypatch):
    """When the draft alone cannot be timed, the speculative row still runs and says why its round has no split."""
    import archzoo.bench.decode as bd

    real = bd.run_archzoo

    def run(model, ids, **kw):
        if kw.get("draft") is None and model.cfg.mixer.type == "mamba":  # the draft decoding alone
            raise RuntimeError("boom")
        return real(model, ids, **kw)

    monkeypatch.setattr(bd, "run_archzoo", run)
    out = tmp_path / "out"
    rc, res = _bench(out, GQA, *TINY, "--batch-sizes", "1", "--draft", MAMBA, "--num-draft-tokens", "2")
    assert rc == 0
    (spec,) = [r for r in res["rows"] if r["implementation"] == "speculative"]
    assert spec.get("draft_ms_per_step") is None and "round_rest_ms" not in spec
    assert spec["draft_step_note"] == "the draft alone failed: RuntimeError: boom"
    assert "round not split: the draft alone failed" in (out / "decode.md").read_text()
