from __future__ import annotations

import json
import shutil
import subprocess
import sys

from archzoo.cli import _fmt_bytes, main

from conftest import MODEL_CONFIGS


def test_inspect_table(capsys, monkeypatch, tmp_path):
    """At 80 columns, with a config at a 150-character folder and from a cwd that deep, every file name
    is in the table whole, and so is every number; the table fits the terminal."""
    deep = tmp_path / ("x" * 150)
    deep.mkdir()
    copy = deep / "gqa-copy.yaml"
    shutil.copy(next(p for p in MODEL_CONFIGS if p.stem == "gqa"), copy)
    configs = [*MODEL_CONFIGS, copy]
    monkeypatch.setenv("COLUMNS", "80")
    for cwd in (tmp_path, deep):
        monkeypatch.chdir(cwd)
        assert main(["inspect", *map(str, configs)]) == 0
        out = capsys.readouterr().out
        assert max(len(line) for line in out.splitlines()) <= 80, "wider than the terminal"
        assert "@4k" in out and "@32k" in out
        for p in configs:
            assert p.name in out, f"{p.name} is not in the table (cwd {len(str(cwd))} characters long)"
            assert main(["inspect", str(p), "--json"]) == 0
            r = json.loads(capsys.readouterr().out)
            cells = [f"{r['parameters'] / 1e6:.2f}M", *(_fmt_bytes(r["cache_bytes"][n]) for n in ("4096", "32768"))]
            for cell in cells:
                assert f" {cell} " in out, f"{p.name}: {cell} is cut"


def test_inspect_json(capsys):
    gqa = next(p for p in MODEL_CONFIGS if p.stem == "gqa")
    assert main(["inspect", str(gqa), "--json", "--lengths", "4096,32768"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["cache_bytes"]["4096"] == 2 * 4 * 4096 * 2 * 32 * 2
    assert data["layer_pattern"] == "A A A A"


def test_user_error_exits_2_with_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "vocab_size: 8\nd_model: 16\nn_layers: 2\nmixer: {type: attention, n_heads: 4, n_kv_heads: 3}\n"
        "ffn: {type: swiglu, d_ff: 8}\n"
    )
    for args, expect in [
        ([str(bad)], f"error: {bad}: mixer.n_kv_heads: n_kv_heads=3 must divide n_heads=4"),
        ([str(tmp_path / "missing.yaml")], f"error: {tmp_path / 'missing.yaml'}: no such file"),
    ]:
        r = subprocess.run([sys.executable, "-m", "archzoo", "inspect", *args], capture_output=True, text=True)
        assert r.returncode == 2
        assert r.stderr.strip() == expect
        assert "Traceback" not in r.stderr
