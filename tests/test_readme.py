"""The README's commands and cache table stay true."""

from __future__ import annotations

import re

from archzoo.cli import _fmt_bytes, inspect_config

from conftest import ROOT

README = (ROOT / "README.md").read_text()


def _bash_blocks(text: str) -> list[str]:
    return re.findall(r"```bash\n(.*?)\n```", text, flags=re.S)


def test_quickstart_has_two_commands_and_ci_runs_the_test_one():
    quick = README.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    blocks = _bash_blocks(quick)
    assert len(blocks) == 2, "the Quickstart is exactly two commands"
    test_cmd = blocks[1].strip()
    assert "pytest" in test_cmd
    assert test_cmd in (ROOT / ".ci" / "run").read_text(), ".ci/run must run the README's test command"


def test_cache_table_matches_inspect():
    table = README.split("<!-- inspect-table -->", 1)[1].split("<!-- /inspect-table -->", 1)[0]
    rows = [line.strip("|").split("|") for line in table.strip().splitlines()[2:]]
    assert rows, "README cache table is empty"
    for cells in rows:
        name, params, pattern, per_token, at4k, at32k = (c.strip() for c in cells)
        r = inspect_config(ROOT / "configs" / "models" / f"{name}.yaml", [4096, 32768])
        assert f"{r['parameters'] / 1e6:.2f}M" == params, name
        assert r["layer_pattern"] == pattern, name
        assert _fmt_bytes(r["cache_bytes_per_token"]) == per_token, name
        assert _fmt_bytes(r["cache_bytes"]["4096"]) == at4k, name
        assert _fmt_bytes(r["cache_bytes"]["32768"]) == at32k, name


def test_python_example_runs(tmp_path, monkeypatch):
    code = re.search(r"```python\n(.*?)```", README, flags=re.S).group(1)
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})
    assert (tmp_path / "ckpt" / "model.safetensors").is_file()
