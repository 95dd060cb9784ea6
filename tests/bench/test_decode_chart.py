"""decode.png: tokens/s against cache bytes per token from bench decode rows (no GPU, synthetic rows)."""

from __future__ import annotations

import json

import pytest

from archzoo.bench import decode_chart as DC

PNG = b"\x89PNG\r\n\x1a\n"


def _row(model, B, P, tps, cache, implementation="archzoo", **kw):
    return dict(model=f"configs/students/{model}.yaml", source="yaml", implementation=implementation, batch_size=B,
                prompt_len=P, new_tokens=8, tokens_per_s=tps, cache_bytes=cache, **kw)  # fmt: skip


ROWS = [
    _row("teacher", 2, 16, 100.0, 9000),
    _row("mqa", 2, 16, 150.0, 3000),
    _row("based", 2, 16, 120.0, 500),
    _row("slow", 2, 16, 90.0, 6000),
    _row("teacher", 1, 16, 50.0, 4500),
    _row("mqa", 1, 16, 55.0, 1500),
    _row("teacher", 2, 16, 300.0, 9000, num_draft_tokens=4),  # speculative: not a point
    _row("mqa", 2, 16, None, 3000, error="boom"),  # failed: not a point
]


def test_points_frontier_and_panels(tmp_path, monkeypatch):
    seen = []
    real = DC.panels_chart

    def spy(path, panels, *a, **kw):
        seen.extend({p.name: (p.x, p.y, p.teacher, p.frontier) for p in pts} for _, _, pts in panels)
        return real(path, panels, *a, **kw)

    monkeypatch.setattr(DC, "panels_chart", spy)
    out = DC.decode_chart(tmp_path / "d.png", {"dtype": "bf16", "device": "cpu"}, ROWS)
    assert out.read_bytes()[:8] == PNG
    big, small = seen  # the largest batch first
    assert set(big) == {"teacher", "mqa", "based", "slow"}
    assert big["mqa"] == (3000 / (2 * 24), 150.0, False, True)  # bytes over batch x (prompt + new)
    assert big["teacher"][2] and not big["teacher"][3]  # the teacher, beaten by mqa (smaller and faster)
    assert big["based"][3] and not big["slow"][3]
    assert set(small) == {"teacher", "mqa"}


def test_peers_are_drawn_off_the_frontier(tmp_path, monkeypatch):
    """--baseline hf rows: a hollow point per peer, named "model (implementation)", never on the frontier, even
    where it would beat an archzoo row; a peer alone in a cell draws no panel (nothing of archzoo's to compare)."""
    seen = []
    real = DC.panels_chart

    def spy(path, panels, *a, **kw):
        seen.extend({p.name: p for p in pts} for _, _, pts in panels)
        return real(path, panels, *a, **kw)

    monkeypatch.setattr(DC, "panels_chart", spy)
    peers = [
        _row("teacher", 2, 16, 30.0, 9000, implementation="hf-static"),
        _row("teacher", 2, 16, 999.0, 100, implementation="hf-dynamic"),  # faster and smaller: still no frontier
        _row("teacher", 8, 16, 5.0, 9000, implementation="hf-static"),  # no archzoo row in this cell
    ]
    out = DC.decode_chart(tmp_path / "d.png", {"dtype": "bf16", "device": "cpu"}, ROWS + peers)
    assert out.read_bytes()[:8] == PNG
    big = seen[0]
    assert len(seen) == 2, "no panel for the peer-only cell"
    p = big["teacher (hf-static)"]
    assert p.peer and not p.frontier and not p.teacher and (p.x, p.y) == (9000 / (2 * 24), 30.0)
    assert big["teacher (hf-dynamic)"].peer and not big["teacher (hf-dynamic)"].frontier
    assert big["based"].frontier and big["mqa"].frontier, "the frontier is archzoo's rows alone"


def test_cells_and_skip(tmp_path):
    assert DC.decode_chart(tmp_path / "a.png", {}, ROWS, cells=[(1, 16)], skip=["mqa"]).is_file()
    assert DC.decode_chart(tmp_path / "b.png", {}, ROWS, cells=[(64, 4096)]) is None  # no such cell
    assert DC.decode_chart(tmp_path / "c.png", {}, [r for r in ROWS if r.get("error")]) is None
    assert not (tmp_path / "b.png").exists() and not (tmp_path / "c.png").exists()


def test_cli(tmp_path, capsys):
    src = tmp_path / "decode.json"
    src.write_text(json.dumps({"dtype": "bf16", "device": "cpu", "rows": ROWS}))
    assert DC.main([str(src), str(tmp_path / "o.png"), "--cells", "2x16,1x16", "--skip", "slow"]) == 0
    assert (tmp_path / "o.png").read_bytes()[:8] == PNG
    with pytest.raises(SystemExit) as e:
        DC.main([str(src), str(tmp_path / "x.png"), "--cells", "2by16"])
    assert e.value.code == 2 and "BATCHxPROMPT" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        DC.main([str(tmp_path / "missing.json"), str(tmp_path / "x.png")])
    assert e.value.code == 2 and "no such file" in capsys.readouterr().err


def test_several_projection_forms_draw_each_model_at_its_fastest(tmp_path, monkeypatch):
    """A run with --decode-linear cublas,auto (implementations "archzoo" and "archzoo-auto"): each model once, at
    its faster form, named with the form where that is not plain "archzoo"; the y axis leaves room above it."""
    rows = [
        _row("jamba", 1, 16, 1001.0, 900),
        _row("jamba", 1, 16, 1487.0, 900, implementation="archzoo-auto"),
        _row("mamba", 1, 16, 1800.0, 700),
        _row("mamba", 1, 16, 985.0, 700, implementation="archzoo-auto"),
    ]
    seen, ylims = [], []
    real = DC.panels_chart

    def spy(path, panels, *a, **kw):
        seen.extend({p.name: p.y for p in pts} for _, _, pts in panels)
        return real(path, panels, *a, **kw)

    from archzoo.bench import charts

    real_scatter = charts.scatter

    def scatter_spy(ax, pts, *a, **kw):
        real_scatter(ax, pts, *a, **kw)
        ylims.append(ax)

    monkeypatch.setattr(DC, "panels_chart", spy)
    monkeypatch.setattr(charts, "scatter", scatter_spy)
    assert DC.decode_chart(tmp_path / "d.png", {}, rows).read_bytes().startswith(PNG)
    assert seen == [{"jamba (auto)": 1487.0, "mamba": 1800.0}]
    (ax,) = ylims
    assert ax.get_ylim()[0] == 0 and ax.get_ylim()[1] >= 1800.0 * 1.1 - 1e-6
