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
