from __future__ import annotations

import json
import subprocess
import sys

from archzoo.cli import main

from conftest import MODEL_CONFIGS


def test_inspect_table(capsys):
    assert main(["inspect", *map(str, MODEL_CONFIGS)]) == 0
    out = capsys.readouterr().out
    for p in MODEL_CONFIGS:
        assert p.name in out
    assert "cache @4k" in out and "cache @32k" in out


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
