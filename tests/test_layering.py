"""The library's imports point down (DESIGN.md, Layering), with no cycles at import time.

Walks every module of archzoo/ and train/ (installed as archzoo.train) with ``ast``. Each module has
a row; an import, at module level or inside a function, may only name a module of its own row or a
row below. A package's ``__init__`` that re-exports its submodules (``archzoo``, ``archzoo.data``,
``archzoo.kernels.<op>``) is its submodules' facade and is not checked against them.
"""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import ROOT

# Lowest row first; a module takes the row of the longest prefix that names it.
ROWS: list[tuple[str, ...]] = [
    ("archzoo.errors",),
    ("archzoo.kernels",),
    ("archzoo.layers",),
    ("archzoo.families",),
    ("archzoo.config",),
    (
        "archzoo.model",
        "archzoo.cache",
        "archzoo.sampling",
        "archzoo.generation",
        "archzoo.speculative",
        "archzoo.prefill",
        "archzoo.saving",
    ),
    (
        "archzoo.convert",
        "archzoo.hf",
        "archzoo.gguf_file",
        "archzoo.checkpoint",
        "archzoo.data",
        "archzoo.eval",
        "archzoo.teacher",
        "archzoo.fetch",
    ),
    ("archzoo.train", "archzoo.bench"),
    ("archzoo.cli", "archzoo.__main__", "*.cli"),
]
FACADE = "archzoo"  # the package itself re-exports the public interface from every row
# Same row, but neither may import the other: the trainer and the benchmarks share the library only.
APART = [("archzoo.train", "archzoo.bench")]


def _modules() -> dict[str, Path]:
    out = {}
    for base, pkg in ((ROOT / "archzoo", "archzoo"), (ROOT / "train", "archzoo.train")):
        for path in base.rglob("*.py"):
            parts = list(path.relative_to(base).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join([pkg, *parts])] = path
    return out


def _row(module: str) -> int:
    if module == FACADE:
        return len(ROWS)
    best, row = -1, None
    for i, names in enumerate(ROWS):
        for name in names:
            if name.startswith("*.") and module.endswith(name[1:]):
                return i
            if (module == name or module.startswith(name + ".")) and len(name) > best:
                best, row = len(name), i
    assert row is not None, f"{module} has no row in the layering table of this test: add it"
    return row


def _imports(module: str, path: Path, known: set[str]) -> list[tuple[str, bool]]:
    """(imported archzoo module, at module level?) for every import in ``path``."""
    tree = ast.parse(path.read_text())
    is_pkg = path.name == "__init__.py"
    pkg = module if is_pkg else module.rsplit(".", 1)[0]
    top_level = {id(n) for n in tree.body}
    for n in tree.body:  # imports under a module-level if / try still run at import time
        if isinstance(n, ast.If | ast.Try):
            top_level |= {id(c) for c in ast.walk(n)}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [f"{target}.{a.name}" for a in node.names]
            targets = [n for n in names if n in known] or [target]
        elif isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            continue
        out += [(t, id(node) in top_level) for t in targets if t.startswith("archzoo")]
    return out


def _graph():
    mods = _modules()
    return mods, {m: _imports(m, p, set(mods)) for m, p in mods.items()}


def _is_facade(src: str, dst: str) -> bool:
    return dst == "archzoo" or src.startswith(dst + ".") or (dst.startswith(src + ".") and src.count(".") <= 2)


def test_imports_point_down():
    mods, graph = _graph()
    bad = []
    for src, edges in graph.items():
        for dst, _ in edges:
            if dst not in mods or _is_facade(src, dst):
                continue
            if _row(dst) > _row(src):
                bad.append(f"{src} (row {_row(src)}) imports {dst} (row {_row(dst)})")
            for a, b in APART:
                if (src.startswith(a) and dst.startswith(b)) or (src.startswith(b) and dst.startswith(a)):
                    bad.append(f"{src} imports {dst}: the trainer and the benchmarks stay apart")
    assert not bad, "imports pointing up:\n" + "\n".join(sorted(bad))


def test_library_never_imports_the_cli_or_the_trainer():
    mods, graph = _graph()
    bad = [
        f"{src} imports {dst}"
        for src, edges in graph.items()
        for dst, _ in edges
        if _row(src) < _row("archzoo.train") and (dst.startswith("archzoo.cli") or dst.startswith("archzoo.train"))
    ]
    assert not bad, "\n".join(bad)


def test_no_import_cycles_at_import_time():
    mods, graph = _graph()
    edges = {m: sorted({d for d, top in graph[m] if top and d in mods and d != m}) for m in mods}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in edges[m]:
            if state.get(d) == 1:
                cycle = stack[stack.index(d) :] + [d]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(mods):
        if m not in state:
            visit(m)


def test_the_walker_sees_an_upward_import(tmp_path):
    """The checks above are only as good as the walker: it must report a planted violation."""
    path = tmp_path / "fake.py"
    path.write_text("def f():\n    from archzoo.cli import main\n")
    edges = _imports("archzoo.layers.fake", path, set(_modules()))
    assert edges == [("archzoo.cli", False)]
    assert _row("archzoo.cli") > _row("archzoo.layers.fake")
