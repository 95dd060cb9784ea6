"""tools/README.md names every script in tools/, and only the tools that measure the launcher import
private archzoo modules or names (the README says which, and why)."""

from __future__ import annotations

import ast

from conftest import ROOT

TOOLS = ROOT / "tools"
# Tools that time the kernels' launch and dispatch themselves; the README lists them under "Internals".
IMPORT_INTERNALS = {"host_overhead.py", "scan_host_parts.py", "decode_profile.py"}  # tools/README.md says why


def _scripts() -> list[str]:
    files = (p for p in TOOLS.rglob("*") if p.suffix in (".py", ".sh") and "__pycache__" not in p.parts)
    return sorted(str(p.relative_to(TOOLS)) for p in files)


def test_readme_names_every_script():
    readme = (TOOLS / "README.md").read_text()
    scripts = _scripts()
    assert "tune_ssm_kernels.py" in scripts and "device/setup.sh" in scripts
    missing = [s for s in scripts if f"`{s}`" not in readme]
    assert not missing, f"tools/README.md does not describe: {missing}"


def _private_imports(path) -> list[str]:
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("archzoo"):
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names if a.name.startswith("archzoo")]
        else:
            continue
        out += [n for n in names if any(part.startswith("_") for part in n.split("."))]
    return out


def test_only_the_launcher_tools_import_internals():
    found = {p.name: _private_imports(p) for p in TOOLS.glob("*.py")}
    bad = {name: imps for name, imps in found.items() if imps and name not in IMPORT_INTERNALS}
    assert not bad, f"tools importing private archzoo names (use public ones, or list them in the README): {bad}"
    assert all(found.get(name) for name in IMPORT_INTERNALS), "the allow-list names tools that import internals"
    readme = (TOOLS / "README.md").read_text().split("Internals:", 1)[1]
    assert all(f"`{name}`" in readme for name in IMPORT_INTERNALS)
