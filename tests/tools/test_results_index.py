"""docs/results/README.md indexes every run file the tools and benchmarks left there, and every
``docs/results/...`` path that the docs, the README or the code name exists."""

from __future__ import annotations

import re

from conftest import ROOT

RESULTS = ROOT / "docs" / "results"


def _suite_dir(p):
    """The Pareto-suite output folder (it holds results.json) that ``p`` lies in, or None: such a folder (rows,
    report, charts) is indexed as a whole, by its path."""
    for d in p.parents:
        if d == RESULTS:
            return None
        if (d / "results.json").is_file():
            return d
    return None


def test_index_names_every_results_file():
    index = (RESULTS / "README.md").read_text()
    files = [p for p in RESULTS.rglob("*") if p.is_file() and p.name != "README.md"]
    assert files
    suites = {d for p in files if (d := _suite_dir(p)) is not None}
    unindexed = [str(d.relative_to(RESULTS)) for d in suites if f"`{d.relative_to(RESULTS)}/`" not in index]
    assert not unindexed, f"docs/results/README.md does not name these suite folders: {unindexed}"
    files = [p for p in files if _suite_dir(p) is None]
    missing = [str(p.relative_to(RESULTS)) for p in files if f"`{p.name}`" not in index]
    assert not missing, f"docs/results/README.md does not index: {missing}"
    for p in files:  # each file sits in the folder of the topic whose table names it
        section = index.split(f"(`{p.parent.name}/`)", 1)
        assert len(section) == 2, f"no index table for the folder {p.parent.name}/"
        assert f"`{p.name}`" in section[1].split("\n## ", 1)[0], f"{p.name} is not in the {p.parent.name}/ table"


def test_cited_results_paths_exist():
    sources = [ROOT / "README.md", *(ROOT / "docs").glob("*.md"), *(ROOT / "archzoo").rglob("*.py")]
    sources += [*(ROOT / "tools").rglob("*.py"), *(ROOT / "tools").rglob("*.sh")]
    bad = []
    for src in sources:
        for path in re.findall(r"docs/results/[\w./{},-]+\.(?:json|csv|md|log)", src.read_text()):
            m = re.search(r"\{([^}]*)\}", path)  # distill_{mla,mamba}_metrics.csv
            names = [path[: m.start()] + alt + path[m.end() :] for alt in m.group(1).split(",")] if m else [path]
            bad += [f"{src.relative_to(ROOT)}: {n}" for n in names if not (ROOT / n).is_file()]
    assert not bad, "paths that name no file:\n" + "\n".join(bad)
