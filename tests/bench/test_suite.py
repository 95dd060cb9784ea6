"""``archzoo bench SUITE.yaml``: the tiny suite end to end on the CPU, resume, and bad input.

The suite runs as configs/bench/tiny-cpu.yaml does, except that its Shakespeare set is replaced by a
local text file (no download in CI). The outputs are checked against the library: cache bytes equal
``archzoo.cache_bytes``, frontier points are non-dominated and every other point is dominated.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
import yaml

import archzoo
from archzoo.bench.pareto import pareto
from archzoo.bench.suite import load_suite, position_buckets
from archzoo.cli import main

from conftest import ROOT

TINY = ROOT / "configs" / "bench" / "tiny-cpu.yaml"
TEXT = (ROOT / "docs" / "architecture.md").read_text() * 2  # ~17k bytes of English: 8 blocks of 128 fit


def _suite(tmp_path, models: list[str] | None = None, **changes) -> tuple:
    """tiny-cpu.yaml with a local text file instead of Shakespeare; ``models`` keeps only those names."""
    data = yaml.safe_load(TINY.read_text())
    text = tmp_path / "heldout.txt"
    text.write_text(TEXT)
    data["eval"][0] = {"type": "file", "name": "text", "path": str(text), "block_len": 128, "max_blocks": 8}
    if models is not None:
        data["models"] = [m for m in data["models"] if m["name"] in models]
    data.update(changes)
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path, data


def _bench(*args) -> int:
    return main(["bench", *map(str, args), "--quiet"])


def _dominated(p, others, higher: bool) -> bool:
    s = -1 if higher else 1
    return any(x <= p[1] and s * y <= s * p[2] and (x < p[1] or s * y < s * p[2]) for _, x, y in others)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tiny")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(ROOT)  # the suite's model paths are relative to the repository root
        path, data = _suite(tmp)
        out = tmp / "out"
        assert _bench(path, "--out", out) == 0
    return out, data


def test_tiny_suite_outputs(tiny):
    out, data = tiny
    for name in ("results.json", "report.md", "report.html"):
        assert (out / name).is_file(), name
    res = json.loads((out / "results.json").read_text())
    assert res["schema_version"] == 1 and res["missing"] == []
    names = [r["name"] for r in res["rows"]]
    assert names == [data["teacher"]["name"], *(m["name"] for m in data["models"])]
    assert res["rows"][0]["teacher"] and res["rows"][0]["kl"] == {"text": 0.0, "random": 0.0}
    assert len(res["charts"]) == 8  # + KL by position, one per text set
    for c in res["charts"]:
        png = (out / c).read_bytes()
        assert png.startswith(b"\x89PNG"), c
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 8 and "http://" not in page and "https://" not in page
    assert "<script>" in page and "sortable" in page
    md = (out / "report.md").read_text()
    assert "archzoo bench" in md and "| gqa |" in md and "torch" in md
    assert "## KL by position in the block: text" in md
    # every student drafted for the teacher (speculative decoding on prompts from the first text set)
    assert "draft acceptance (k=4)" in md
    teacher, *students = res["rows"]
    assert "draft_acceptance_rate" not in teacher
    for r in students:
        assert 0.0 <= r["draft_acceptance_rate"] <= 1.0 and r["draft_tokens_per_verify"] >= 1.0, r["name"]


def test_tiny_suite_agrees_with_the_library(tiny):
    out, data = tiny
    res = json.loads((out / "results.json").read_text())
    sources = {data["teacher"]["name"]: data["teacher"]["source"], **{m["name"]: m["source"] for m in data["models"]}}
    for r in res["rows"]:
        cfg = archzoo.load_config(ROOT / sources[r["name"]])
        for n, b in r["cache_bytes"].items():
            assert b == archzoo.cache_bytes(cfg, 1, int(n), torch.float32), (r["name"], n)
        assert r["cache_bytes_per_token"] == archzoo.cache_bytes(cfg, 1, 4096, torch.float32) / 4096, r["name"]
        assert r["parameters"] > 0 and r["decode_tokens_per_s"] > 0 and r["prefill_tokens_per_s"] > 0, r["name"]
        assert r["peak_memory_bytes"] is None  # CPU
        for s in ("text", "random"):
            assert math.isfinite(r["ppl"][s]) and r["ppl"][s] > 1 and r["kl"][s] >= 0, (r["name"], s)
        assert set(r["mqar"]["mqar"]) == {"4", "16"} and all(0 <= a <= 1 for a in r["mqar"]["mqar"].values())
        for s, buckets in r["by_position"].items():  # ranges of one block: together, the set's figures
            L = buckets[-1]["end"]
            assert [b["start"] for b in buckets] == position_buckets(L)[:-1] and buckets[0]["start"] == 0
            kl = sum(b["kl"] * (b["end"] - b["start"]) for b in buckets) / L
            nll = sum(math.log(b["ppl"]) * (b["end"] - b["start"]) for b in buckets) / L
            assert kl == pytest.approx(r["kl"][s], rel=1e-9, abs=1e-12) and nll == pytest.approx(math.log(r["ppl"][s]))
        assert len(r["provenance"]["config_hash"]) == 16
    # Frontier: every member non-dominated, every other point dominated.
    assert set(res["frontier"]) == {"ppl/text", "kl/text", "ppl/random", "kl/random", "mqar/mqar/4", "mqar/mqar/16"}
    for key, front in res["frontier"].items():
        kind, _, rest = key.partition("/")
        higher = kind == "mqar"
        pts = [
            (r["name"], r["cache_bytes_per_token"], r["mqar"]["mqar"][rest.split("/")[1]] if higher else r[kind][rest])
            for r in res["rows"]
        ]
        assert front, key
        for p in pts:
            others = [q for q in pts if q[0] != p[0]]
            assert _dominated(p, others, higher) == (p[0] not in front), (key, p[0])
            row = next(r for r in res["rows"] if r["name"] == p[0])
            assert row["on_frontier"][key] == (p[0] in front)


def test_pareto():
    pts = [("a", 1, 5), ("b", 2, 3), ("c", 2, 4), ("d", 4, 3), ("e", 8, 1), ("f", 8, 1)]
    assert pareto(pts) == ["a", "b", "e", "f"]  # ties on both axes: neither dominates the other
    assert pareto(pts, higher_is_better=True) == ["a"]


def test_resume_and_only(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    path, data = _suite(tmp_path, ["gqa", "mamba"])
    out = tmp_path / "out"
    assert _bench(path, "--out", out) == 0
    rows = {p.name: p.read_text() for p in (out / "rows").iterdir()}
    assert len(rows) == 3
    assert _bench(path, "--out", out, "--resume") == 0  # nothing changed: nothing measured
    assert {p.name: p.read_text() for p in (out / "rows").iterdir()} == rows
    assert _bench(path, "--out", out, "--only", "gqa") == 0  # only gqa measured again
    after = {p.name: p.read_text() for p in (out / "rows").iterdir()}
    changed = [n for n in rows if after[n] != rows[n]]
    assert len(changed) == 1 and changed[0].startswith("gqa")
    # A changed suite setting changes every model's inputs: --resume measures them all again.
    path, _ = _suite(tmp_path, ["gqa", "mamba"], decode={**data["decode"], "new_tokens": 3})
    assert _bench(path, "--out", out, "--resume") == 0
    again = {p.name: p.read_text() for p in (out / "rows").iterdir()}
    assert all(again[n] != after[n] for n in rows)
    assert len(json.loads((out / "results.json").read_text())["rows"]) == 3


def _error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_bad_input_exits_2_and_keeps_rows(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    path, data = _suite(tmp_path, ["gqa"])
    out = tmp_path / "out"
    assert _bench(path, "--out", out) == 0
    before = {p.name: p.read_text() for p in (out / "rows").iterdir()}
    capsys.readouterr()

    def bad(**changes) -> str:
        p = tmp_path / "bad.yaml"
        p.write_text(yaml.safe_dump({**data, **changes}, sort_keys=False))
        assert _bench(p, "--out", out) == 2
        assert {q.name: q.read_text() for q in (out / "rows").iterdir()} == before  # nothing measured is lost
        return _error(capsys)

    models = data["models"]
    msg = bad(models=[*models, {"name": "ghost", "source": "configs/models/nope.yaml"}])
    assert "ghost" in msg and "configs/models/nope.yaml" in msg and "no such file" in msg
    small = tmp_path / "small-vocab.yaml"
    small.write_text((ROOT / "configs/models/gqa.yaml").read_text().replace("vocab_size: 512", "vocab_size: 256"))
    msg = bad(models=[*models, {"name": "small", "source": str(small)}])
    assert "small" in msg and "vocabulary of 256" in msg and "512" in msg
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    msg = bad(eval=[{"type": "file", "name": "e", "path": str(empty), "block_len": 16}])
    assert str(empty) in msg and "empty" in msg
    short = tmp_path / "short.txt"
    short.write_text("To be, or not to be.")
    msg = bad(eval=[{"type": "file", "name": "s", "path": str(short), "block_len": 64}])
    assert str(short) in msg and "64 + 1" in msg
    msg = bad(eval=[{"type": "file", "name": "m", "path": str(tmp_path / "missing.jsonl")}])
    assert "missing.jsonl" in msg and "no such file" in msg
    msg = bad(eval=[{"type": "heldout", "name": "t", "set": "teacher-heldout"}])
    assert "eval.0 (t)" in msg and "tokenizer: teacher" in msg
    assert _bench(path, "--out", out, "--only", "nobody") == 2
    assert "nobody" in _error(capsys)


def test_decode_grid(tmp_path, monkeypatch):
    """decode.batch_sizes x decode.prompt_lens: every combination measured once (the primary among them), each
    a column of the report; the primary stays the chart's figure."""
    monkeypatch.chdir(ROOT)
    path, data = _suite(tmp_path, ["gqa"], speculative=None)
    data["decode"] = {**data["decode"], "batch_sizes": [1, 2], "prompt_lens": [32], "decode_linear": "auto"}
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    assert load_suite(path).decode.grid() == [(2, 32), (1, 32)]
    out = tmp_path / "out"
    resets = []  # each model's decode starts from a reset dynamo: a suite of 19 models passed its recompile limit
    real_reset = torch._dynamo.reset
    monkeypatch.setattr(torch._dynamo, "reset", lambda: resets.append(1) or real_reset())
    assert _bench(path, "--out", out) == 0
    res = json.loads((out / "results.json").read_text())
    assert len(resets) >= len(res["rows"]) >= 2
    for r in res["rows"]:
        assert list(r["decode_grid"]) == ["B=2,P=32", "B=1,P=32"]
        assert r["decode_grid"]["B=2,P=32"] == r["decode_tokens_per_s"]
        assert r["decode_linear"] == "auto" and r["linear_backend"], "the row says how its projections ran"
        assert list(r["decode_step_bytes"]) == ["B=2,P=32", "B=1,P=32"] and r["decode_bandwidth"] > 0
        cfg = archzoo.load_config(r["source"]) if not r["teacher"] else None
        if cfg is not None:  # every weight once and the cache to the mean length, as bench decode counts it
            dt = load_suite(path).torch_dtype
            want = r["weight_bytes"] + archzoo.cache.cache_read_bytes(
                cfg, 1, 32 + data["decode"]["new_tokens"] // 2, dt
            )
            assert r["decode_step_bytes"]["B=1,P=32"] == want
    md = (out / "report.md").read_text()
    assert "decode tok/s (B=1, P=32)" in md and "draft acceptance" not in md and "projections `auto`" in md
    assert "| HBM |" in md and "| x teacher |" in md


def test_speed_run_report_without_quality(tmp_path, monkeypatch):
    """report_quality: false (a speed run of random weights) changes what the report shows, not what it measures:
    --report-only takes it from the suite file under the same settings hash, the quality tables and charts go
    (their files too), and the cache-against-speed chart stays, a panel for the primary cell and batch 1."""
    monkeypatch.chdir(ROOT)
    path, data = _suite(tmp_path, ["gqa"], speculative=None)
    data["decode"] = {**data["decode"], "batch_sizes": [2, 1], "prompt_lens": [32]}
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    out = tmp_path / "out"
    assert _bench(path, "--out", out) == 0
    before = json.loads((out / "results.json").read_text())
    assert "cache_vs_speed.png" in before["charts"] and any(c.startswith("cache_vs_ppl") for c in before["charts"])
    assert "## Quality" in (out / "report.md").read_text()
    hash_before = load_suite(path).settings_hash()
    path.write_text(yaml.safe_dump({**data, "report_quality": False}, sort_keys=False))
    assert load_suite(path).settings_hash() == hash_before
    assert _bench(path, "--report-only", "--out", out) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["charts"] == ["cache_vs_speed.png"]
    assert sorted(p.name for p in out.glob("*.png")) == ["cache_vs_speed.png"], "stale quality charts removed"
    md = (out / "report.md").read_text()
    assert "## Quality" not in md and "KL by position" not in md and "quality: not shown" in md
    assert "| x teacher |" in md and "## Provenance" in md
    from archzoo.bench.report import speed_cells

    assert speed_cells(res) == ["B=2,P=32", "B=1,P=32"]


def test_builtin_heldout_set(tmp_path):
    """``type: heldout, set: python-docs``: the Python documentation's topic help, in evenly spread blocks."""
    from archzoo.bench.suite import prepare_sets

    path, data = _suite(tmp_path, ["gqa"])
    data["eval"] = [{"type": "heldout", "name": "docs", "set": "python-docs", "block_len": 64, "max_blocks": 4}]
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    (p,) = prepare_sets(load_suite(path), 512, None)
    assert p.kind == "text" and p.blocks.shape == (4, 65) and "python-docs" in p.describe
    assert int(p.blocks.max()) < 257, "bytes tokenizer: ids 0-255 and EOS 256"


def test_schema_errors_name_the_file_and_field(tmp_path):
    data = yaml.safe_load(TINY.read_text())
    cases = [
        ({**data, "decode": {**data["decode"], "batch_sise": 2}}, "decode.batch_sise", "unknown key"),
        ({**data, "eval": [{"type": "wikitext", "name": "w"}]}, "eval.0", "wikitext"),
        ({**data, "models": [{"name": "x"}]}, "models.0.source", "missing"),
        ({**data, "dtype": "fp8"}, "dtype", "fp8"),
        ({**data, "models": [*data["models"], {"name": "gqa", "source": "a.yaml"}]}, "models.11.name", "twice"),
        ({**data, "decode_from": "runs/speed"}, "decode_from", "not both"),
        ({**data, "decode": {**data["decode"], "decode_linear": "gemv"}}, "decode.decode_linear", "gemv"),
        (
            {**data, "models": [{"name": "x", "source": "a.yaml", "convert": {"seed": 1}}]},
            "models.0.convert",
            "for init: convert",
        ),  # fmt: skip
        ({**data, "models": [{"name": "x", "source": "a.yaml", "init": "random"}]}, "models.0.init", "convert"),
    ]
    for i, (d, field, what) in enumerate(cases):
        p = tmp_path / f"s{i}.yaml"
        p.write_text(yaml.safe_dump(d))
        with pytest.raises(archzoo.ConfigError) as e:
            load_suite(p)
        assert str(e.value).startswith(f"{p}: {field}") and what in str(e.value), str(e.value)


def test_shipped_suites_parse():
    for p in sorted((ROOT / "configs" / "bench").glob("*.yaml")):
        load_suite(p)


def _saved_run(teacher_yaml, student_yaml, out, summary: dict) -> None:
    """A distill run folder without training: the converted student, nudged, saved as student/, and a summary.json."""
    torch.manual_seed(0)  # the suite's seed: the teacher YAML's random weights are the suite's teacher
    teacher = archzoo.build_model(archzoo.load_config(teacher_yaml))
    student = archzoo.convert(teacher, archzoo.load_config(student_yaml))
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.01 * torch.randn_like(p))
    student.save_pretrained(out / "student")
    (out / "summary.json").write_text(json.dumps(summary))


def test_converted_rows_before_after_and_speeds_from_another_run(tmp_path, monkeypatch):
    """init: convert rows (the teacher converted, untrained) beside their trained rows are 'before' references: in
    the before -> after table, off the frontiers and charts; a converted copy of the teacher's own architecture
    scores as the teacher; decode: null with decode_from takes speeds from another run by name and config; a run
    folder that is not here keeps its stored row when --only leaves it out."""
    monkeypatch.chdir(ROOT)
    from archzoo.bench.suite import _hash, shape_of

    run = tmp_path / "run-gqa"
    _saved_run("configs/models/mha.yaml", "configs/models/gqa.yaml", run, {"tokens_trained": 1234, "fit_seconds": 120})
    cfg_hash = _hash(archzoo.load_config("configs/models/gqa.yaml").to_dict())
    mla_shape = _hash(shape_of(archzoo.load_config("configs/models/mla.yaml")))
    speeds = tmp_path / "speeds"
    speeds.mkdir()
    decode = {"batch_size": 64, "prompt_len": 4096, "new_tokens": 128, "warmup": 1, "repeat": 1, "compile": None}
    rows = [
        {"name": "gqa", "provenance": {"config_hash": cfg_hash}, "decode_tokens_per_s": 123.0},
        {"name": "teacher (mha)", "provenance": {"config_hash": "other"}, "decode_tokens_per_s": 9.0},
        # the YAML's MLA: conversion changes its RoPE base (values, not shapes): the same shape, its speed taken
        {"name": "mla", "provenance": {"config_hash": "yaml", "shape_hash": mla_shape}, "decode_tokens_per_s": 77.0},
    ]
    fake = {"settings": {"decode": decode}, "date": "d", "device": "H200", "rows": rows}
    (speeds / "results.json").write_text(json.dumps(fake))
    mla = tmp_path / "run-mla"  # converting into MLA writes the teacher's RoPE base into the student's config
    _saved_run("configs/models/mha.yaml", "configs/models/mla.yaml", mla, {"tokens_trained": 5})
    models = [
        {"name": "mha (converted)", "source": "configs/models/mha.yaml", "init": "convert"},
        {"name": "gqa (converted)", "source": "configs/models/gqa.yaml", "init": "convert"},
        {"name": "gqa", "source": str(run)},
        {"name": "gqa-again", "source": str(run)},  # a recipe variant under another name: gqa's speeds, by config
        {"name": "mla (converted)", "source": "configs/models/mla.yaml", "init": "convert"},
        {"name": "mla", "source": str(mla)},
    ]
    path, _ = _suite(tmp_path, [], decode=None, decode_from=str(speeds), speculative=None)
    data = yaml.safe_load(path.read_text())
    data["models"] = models
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    out = tmp_path / "out"
    assert _bench(path, "--out", out) == 0
    res = json.loads((out / "results.json").read_text())
    rows = {r["name"]: r for r in res["rows"]}
    teacher, same = rows["teacher (mha)"], rows["mha (converted)"]
    assert same["init"] == "convert" and same["kind"] == "converted"
    for t in teacher["ppl"]:
        assert same["ppl"][t] == pytest.approx(teacher["ppl"][t], rel=1e-4) and same["kl"][t] < 1e-4
    # gqa (converted) is gqa's "before": off the frontiers; mha (converted) has no trained row: a point like any other
    assert not any(rows["gqa (converted)"]["on_frontier"].values())
    assert all(n != "gqa (converted)" for names in res["frontier"].values() for n in names)
    assert any("mha (converted)" in names for names in res["frontier"].values())
    assert rows["gqa"]["decode_tokens_per_s"] == 123.0 and rows["gqa"]["decode_from"].endswith("results.json")
    assert "decode_tokens_per_s" not in teacher and "another config" in teacher["decode_note"]
    assert rows["mla"]["provenance"]["config_hash"] != _hash(archzoo.load_config("configs/models/mla.yaml").to_dict())
    assert rows["mla"]["decode_tokens_per_s"] == 77.0, "a converted student decodes as its YAML's shape"
    again = rows["gqa-again"]
    assert again["decode_tokens_per_s"] == 123.0 and again["decode_match"] == "'gqa' by config_hash"
    assert rows["gqa"]["provenance"]["tokens_trained"] == 1234 and rows["gqa"]["provenance"]["train_seconds"] == 120
    md = (out / "report.md").read_text()
    assert "## Distillation: converted (before) -> trained (after)" in md
    line = next(x for x in md.splitlines() if x.startswith("| gqa |") and "->" in x)
    assert "1,234" in line and "2.0 min" in line
    assert any(x.startswith("| mla |") and "->" in x for x in md.splitlines()), "paired by the converted config"
    assert any(c.startswith("speed_vs_ppl") for c in res["charts"]), "the speed chart from the other run's speeds"
    assert "decode speeds from" in md
    # The run folder is trained on another machine: gone here; --only the rest keeps its row.
    import shutil

    shutil.rmtree(run)
    assert _bench(path, "--out", out, "--only", "gqa (converted)") == 0
    assert "gqa" in {r["name"] for r in json.loads((out / "results.json").read_text())["rows"]}
    assert _bench(path, "--out", out) == 2, "a missing source that is asked for is still an error"
    # --report-only: the report from the stored rows alone (rows copied in from elsewhere count), nothing loaded.
    (out / "report.md").unlink()
    monkeypatch.setattr("archzoo.bench.suite.load", lambda *a, **k: pytest.fail("--report-only loaded a model"))
    assert _bench(path, "--out", out, "--report-only") == 0
    again = json.loads((out / "results.json").read_text())
    assert [r["name"] for r in again["rows"]] == [r["name"] for r in res["rows"]]
    md = (out / "report.md").read_text()
    assert "## Distillation: converted (before) -> trained (after)" in md
    assert "- report rebuilt from the stored rows by `archzoo bench" in md and "--report-only`" in md, md[:600]
    assert "report rebuilt from the stored rows" in (out / "report.html").read_text()
    assert _bench(path, "--out", tmp_path / "empty", "--report-only") == 2


def test_shape_of_drops_values_not_shapes():
    """Overrides that restate the base, or set only RoPE values, leave the shape; a size override does not."""
    from archzoo.bench.suite import shape_of

    base = archzoo.load_config("configs/models/mla.yaml").to_dict()
    same = {**base, "norm_eps": 1e-6, "layers": [{"at": [0], "mixer": {"type": "mla", "rope_theta": 5e5}}]}
    other = {**base, "layers": [{"at": [1], "mixer": {"kv_lora_rank": 16}}]}
    shape = shape_of(archzoo.load_config(base))
    assert shape_of(archzoo.load_config(same)) == shape
    assert shape_of(archzoo.load_config(other)) != shape
    assert "rope_theta" not in str(shape) and "kv_lora_rank" in str(shape)


def test_stored_rows_without_shape_hashes_match_by_what_was_measured():
    """Rows stored before shape hashes: a config hash that differs (a converted MLA's RoPE pairs) still takes the
    speeds of the row of the same name when parameters, weight bytes and cache bytes all agree; not otherwise."""
    from archzoo.bench.suite import _merge_speeds

    def row(**kw):
        base = {"name": "mla", "parameters": 10, "weight_bytes": 20, "cache_bytes": {"4096": 30}}
        return {**base, "provenance": {"config_hash": "converted"}, **kw}

    speeds = {"path": "speeds", "settings": {"decode": {}}, "rows": [
        {**row(), "provenance": {"config_hash": "yaml"}, "decode_tokens_per_s": 5.0}]}  # fmt: skip
    same, other = row(), row(parameters=11)
    _merge_speeds({"settings": {}}, [same, other], speeds)
    assert same["decode_tokens_per_s"] == 5.0 and "decode_note" not in same
    assert same["decode_match"] == "'mla' by name, parameters and cache bytes"
    assert "decode_tokens_per_s" not in other and "another config" in other["decode_note"]
    new = row(provenance={"config_hash": "converted", "shape_hash": "s"})  # rows scored since: their hash decides
    _merge_speeds({"settings": {}}, [new], speeds)
    assert "decode_tokens_per_s" not in new


def test_convert_from_a_distill_run_yaml(tmp_path):
    """init: convert of a distill run YAML: its student's config, converter options and teacher layers."""
    from archzoo.bench.suite import ModelSpec, resolve_model

    run = tmp_path / "distill.yaml"
    run.write_text(yaml.safe_dump({"teacher": "x", "student": {
        "config": str(ROOT / "configs" / "models" / "gqa.yaml"), "init": "convert", "teacher_layers": [0, 0, 2, 3],
        "convert": {"seed": 3}}}))  # fmt: skip
    res = resolve_model(ModelSpec(name="g", source=str(run), init="convert"), "models.0")
    assert res.kind == "converted" and res.cfg.n_layers == 4
    assert res.convert_options == {"seed": 3, "layers": [0, 0, 2, 3]}
    res = resolve_model(ModelSpec(name="g", source=str(run), init="convert", layers=[3, 2, 1, 0]), "models.0")
    assert res.convert_options["layers"] == [3, 2, 1, 0], "the suite's layers win over the run's"
    with pytest.raises(Exception, match="layers is for init: convert"):
        ModelSpec(name="g", source=str(run), layers=[0])


def test_two_runs_of_one_config_keep_their_own_before_rows():
    """Two runs of one student config (two recipes: mqa and mqa-b64) each pair with their own converted row, and
    neither converted row is charted (on 2026-12-05 the first one was: paired by config hash alone, the second
    converted row took the place of the first)."""
    from archzoo.bench.report import before_after, charted

    def row(name, kind, h):
        return {"name": name, "kind": kind, "init": "convert" if kind == "converted" else "weights",
                "provenance": {"config_hash": h}}  # fmt: skip

    rows = [row("teacher", "teacher", "t"), row("mqa (converted)", "converted", "h"), row("mqa", "run", "h"),
            row("mqa-b64 (converted)", "converted", "h"), row("mqa-b64", "run", "h"),
            row("alone (converted)", "converted", "x"), row("cla2", "run", "c")]  # fmt: skip
    pairs = {after["name"]: before["name"] for before, after in before_after(rows)}
    assert pairs == {"mqa": "mqa (converted)", "mqa-b64": "mqa-b64 (converted)"}
    assert [r["name"] for r in charted(rows)] == ["teacher", "mqa", "mqa-b64", "alone (converted)", "cla2"]
