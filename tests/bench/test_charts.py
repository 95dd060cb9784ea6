"""The Pareto charts' drawing (archzoo/bench/charts.py): what a reader sees where points coincide."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from archzoo.bench.charts import Point, scatter  # noqa: E402


def test_frontier_markers_draw_over_dominated_ones_at_the_same_point():
    """Two students at one cache size and nearly one perplexity (MQA and its 512-token-block run, 2026-12-05): the
    frontier's filled marker must be the one seen, not the dominated one's hollow marker over it."""
    fig, ax = plt.subplots()
    pts = [
        Point("teacher", 23040, 9.4, True, True),
        Point("mqa", 7680, 11.32, False, True),
        Point("mqa-b64", 7680, 11.36, False, False),
    ]
    scatter(ax, pts, "cache", "ppl")
    z = {c.get_label(): c.get_zorder() for c in ax.collections}
    plt.close(fig)
    assert z["on the frontier"] > z["dominated"], z
    assert z["teacher"] > z["dominated"], z


def _students(draft_ppl: float) -> list[Point]:
    return [
        Point("teacher", 23040, 9.41, True, True),
        Point("swa", 6240, 9.27, False, True),
        Point("based", 2520, 11.89, False, True),
        Point("mla", 9600, 10.36, False, False),
        Point("mqa", 7680, 11.32, False, False),
        Point("s4", 8400, 12.48, False, False),
        Point("draft-8l", 6144, draft_ppl, False, False),
    ]


def test_a_student_far_above_the_rest_is_drawn_at_the_edge_with_its_value():
    """The distillation report of 2026-12-05: the 8-layer draft at 34 against students at 9.3-12.5 squeezed them
    into the chart's bottom tenth. It is moved to just above the others, marked, its value in its label."""
    from archzoo.bench.charts import clip_far_above

    out = {p.name: p for p in clip_far_above(_students(34.24))}
    clipped = [p for p in out.values() if p.clipped]
    assert [p.name for p in clipped] == ["draft-8l (34.2, off scale)"]
    assert 12.48 < clipped[0].y < 13.0
    assert out["swa"].y == 9.27 and not out["swa"].clipped  # the others unchanged


def test_nothing_is_clipped_when_no_value_stands_apart_nor_the_frontier_or_teacher():
    from archzoo.bench.charts import clip_far_above

    assert not any(p.clipped for p in clip_far_above(_students(13.0)))
    pts = _students(13.0)
    pts[2] = Point("based", 2520, 80.0, False, True)  # on the frontier: the smallest cache, kept where it is
    assert not any(p.clipped for p in clip_far_above(pts))
