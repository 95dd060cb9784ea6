"""PNG charts of the Pareto report (matplotlib, Agg): cache bytes per token against quality and speed.

Each chart has one point per model, the teacher as a red star, the points on the Pareto frontier
filled and the frontier drawn as a step line (the best quality reachable at each cost), and every
point labelled with its display name. Labels are placed by a small greedy search over offsets
around each point that avoids the labels already placed, the markers and the axes' edges; points
closer than a few pixels share one label ("gqa / moe").
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter  # noqa: E402

FRONTIER_COLOR = "#1f5fa8"
DOMINATED_COLOR = "#8a8a8a"
TEACHER_COLOR = "#c62828"
PEER_COLOR = "#6a3d9a"


def fmt_bytes(n: float) -> str:
    """2048 -> '2 KiB', 1536 -> '1.5 KiB', 300 -> '300 B'."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" or float(n).is_integer() else f"{n:.3g} {unit}"
        n /= 1024
    raise AssertionError


def fmt_count(n: float) -> str:
    if n >= 1e6:
        return f"{n / 1e6:.3g}M"
    if n >= 1e3:
        return f"{n / 1e3:.3g}k"
    return f"{n:.3g}"


@dataclass
class Point:
    name: str
    x: float
    y: float
    teacher: bool
    frontier: bool
    clipped: bool = False  # drawn at the top edge: its value is far above the others' (``clip_far_above``)
    peer: bool = False  # another implementation of a model (Hugging Face generate, say): a reference, off the frontier


def _staircase(ax, pts: list[Point], x_higher_better: bool, xlim: tuple[float, float]) -> None:
    front = sorted((p for p in pts if p.frontier), key=lambda p: p.x)
    if not front:
        return
    xs, ys = [p.x for p in front], [p.y for p in front]
    if x_higher_better:  # best quality at speed >= x: the level of a point extends left to the previous one
        xs, ys = [xlim[0], *xs], [ys[0], *ys]
        where = "pre"
    else:  # best quality at cost <= x: the level of a point extends right to the next one
        xs, ys = [*xs, xlim[1]], [*ys, ys[-1]]
        where = "post"
    ax.step(xs, ys, where=where, color=FRONTIER_COLOR, lw=1.8, alpha=0.75, zorder=2, label="Pareto frontier")


def _clusters(ax, pts: list[Point], px: float = 6.0) -> list[list[Point]]:
    """Points closer than ``px`` pixels on screen share one label."""
    disp = ax.transData.transform([(p.x, p.y) for p in pts])
    groups: list[list[int]] = []
    for i, (x, y) in enumerate(disp):
        for g in groups:
            gx, gy = disp[g[0]]
            if math.hypot(x - gx, y - gy) < px:
                g.append(i)
                break
        else:
            groups.append([i])
    return [[pts[i] for i in g] for g in groups]


def _overlap(a, b) -> float:
    w = min(a.x1, b.x1) - max(a.x0, b.x0)
    h = min(a.y1, b.y1) - max(a.y0, b.y0)
    return max(w, 0) * max(h, 0)


def place_labels(ax, pts: list[Point], fontsize: float = 8.5) -> list:
    """Annotate every point (clusters once), avoiding other labels, markers and the axes' edges."""
    from matplotlib.transforms import Bbox

    fig = ax.figure
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    disp = ax.transData.transform([(p.x, p.y) for p in pts])
    r = 6 * fig.dpi / 72  # marker half-size in pixels
    taken = [Bbox.from_extents(x - r, y - r, x + r, y + r) for x, y in disp]
    base = [(7, 5, "left", "bottom"), (7, -5, "left", "top"), (-7, 5, "right", "bottom"), (-7, -5, "right", "top")]
    base += [(0, 9, "center", "bottom"), (0, -9, "center", "top")]
    base += [(10, 0, "left", "center"), (-10, 0, "right", "center")]
    cands = [(dx * k, dy * k, ha, va) for k in (1, 2.2, 3.6, 5.2) for dx, dy, ha, va in base]
    texts = []
    groups = sorted(_clusters(ax, pts), key=lambda g: (not any(p.teacher for p in g), -len(g), g[0].x))
    for group in groups:
        anchor = group[0]
        label = " / ".join(p.name for p in group)
        weight = "bold" if any(p.teacher for p in group) else "normal"
        best, best_cost = None, math.inf
        for i, (dx, dy, ha, va) in enumerate(cands):
            t = ax.annotate(
                label,
                (anchor.x, anchor.y),
                xytext=(dx, dy),
                textcoords="offset points",
                ha=ha,
                va=va,
                fontsize=fontsize,
                fontweight=weight,
                zorder=5,
            )
            bb = t.get_window_extent(renderer).expanded(1.04, 1.1)
            outside = max(frame.x0 - bb.x0, 0) + max(bb.x1 - frame.x1, 0)
            outside += max(frame.y0 - bb.y0, 0) + max(bb.y1 - frame.y1, 0)
            cost = sum(_overlap(bb, o) for o in taken) + 1e6 * outside + i * 0.5
            t.remove()
            if cost < best_cost:
                best, best_cost = (dx, dy, ha, va, bb), cost
            if cost <= i * 0.5:
                break
        dx, dy, ha, va, bb = best
        far = math.hypot(dx, dy) > 12
        t = ax.annotate(
            label,
            (anchor.x, anchor.y),
            xytext=(dx, dy),
            textcoords="offset points",
            ha=ha,
            va=va,
            fontsize=fontsize,
            fontweight=weight,
            zorder=5,
            color=TEACHER_COLOR if weight == "bold" else "#222222",
            arrowprops=dict(arrowstyle="-", color="#999999", lw=0.6, shrinkA=0, shrinkB=4) if far else None,
            bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="none", alpha=0.75),
        )
        taken.append(bb)
        texts.append(t)
    return texts


def _log_bytes_axis(ax, label: str, xlim: tuple[float, float]) -> None:
    ax.set_xscale("log", base=2)
    doublings = math.log2(xlim[1] / xlim[0])
    narrow = ax.get_position().width * ax.figure.get_figwidth() < 6
    base = 4 if narrow and doublings > 7 else 2  # every other power of two where ticks would touch
    ax.xaxis.set_major_locator(LogLocator(base=base, numticks=12))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: fmt_bytes(v)))
    if doublings < 2:  # one power of two or none in range: label quarter steps between them too
        ax.xaxis.set_minor_locator(LogLocator(base=2, subs=(1.25, 1.5, 1.75), numticks=12))
        ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: fmt_bytes(v)))
    else:
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel(label)


def _padded(values: Sequence[float], log: bool, pad: float) -> tuple[float, float]:
    lo, hi = min(values), max(values)
    if log:
        lo, hi = math.log2(lo), math.log2(hi)
        span = max(hi - lo, 1.0)
        return 2 ** (lo - pad * span), 2 ** (hi + pad * span)
    span = (hi - lo) or max(abs(hi) * 0.1, 1e-3)
    return lo - pad * span, hi + pad * span


def scatter(
    ax,
    pts: list[Point],
    xlabel: str,
    ylabel: str,
    x_bytes: bool = True,
    x_higher_better: bool = False,
    y_log: bool | None = None,
    ylim: tuple[float, float] | None = None,
) -> None:
    """One panel: points, frontier, labels, axes. ``pts`` carry their frontier membership."""
    if not pts:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
        return
    xs, ys = [p.x for p in pts], [p.y for p in pts]
    xlim = _padded(xs, True, 0.12)
    if x_bytes:
        _log_bytes_axis(ax, xlabel, xlim)
    else:
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: fmt_count(v)))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel(xlabel)
    if y_log is None:
        y_log = min(ys) > 0 and max(ys) / min(ys) > 20
    if y_log:
        ax.set_yscale("log")
    ax.set_xlim(*xlim)
    ax.set_ylim(*(ylim or _padded(ys, y_log, 0.12)))
    ax.set_ylabel(ylabel)
    ax.grid(True, which="major", color="#e4e4e4", lw=0.8)
    ax.set_axisbelow(True)
    _staircase(ax, pts, x_higher_better, xlim)
    # the frontier's markers above the dominated ones: two models at one point (a student and its variant at the
    # same cache size) show the frontier's filled marker, not a hollow one over it
    for kind, sel, style in (
        (
            "on the frontier",
            lambda p: p.frontier and not p.teacher,
            dict(c=FRONTIER_COLOR, s=46, marker="o", zorder=4.5),
        ),
        (
            "dominated",
            lambda p: not p.frontier and not p.teacher and not p.clipped and not p.peer,
            dict(facecolors="white", edgecolors=DOMINATED_COLOR, s=46, marker="o", linewidths=1.4, zorder=4),
        ),
        ("teacher", lambda p: p.teacher and not p.peer, dict(c=TEACHER_COLOR, s=150, marker="*", zorder=4.6)),
        (
            "peer (another implementation)",
            lambda p: p.peer,
            dict(facecolors="white", edgecolors=PEER_COLOR, s=50, marker="D", linewidths=1.4, zorder=4.4),
        ),
        (
            "off the scale (value in its label)",
            lambda p: p.clipped,
            dict(facecolors="white", edgecolors=DOMINATED_COLOR, s=52, marker="^", linewidths=1.4, zorder=4),
        ),
    ):
        sub = [p for p in pts if sel(p)]
        if sub:
            ax.scatter([p.x for p in sub], [p.y for p in sub], label=kind, **style)
    place_labels(ax, pts)


def legend_below(ax) -> None:
    """The legend under the axes, where it cannot cover a point."""
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=4, fontsize=8.5, frameon=False)


def save(fig, path: Path) -> Path:
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


CLIP_SPREAD = 3.0  # a chart's scale ends at min + CLIP_SPREAD x (75th percentile - min) of its values


def clip_far_above(pts: list[Point], spread: float = CLIP_SPREAD) -> list[Point]:
    """For a lower-is-better chart: points far above the rest (dominated ones only, never the teacher or the
    frontier) moved to just above the highest kept one and marked ``clipped``, their value in their label.
    Why: one untrained or badly-trained model at 15x the teacher's perplexity squeezed every other student into
    the bottom tenth of the chart, where the differences the chart is for (1.0x against 1.2x) could not be read."""
    ys = sorted(p.y for p in pts)
    if len(ys) < 4:
        return pts
    lo, q3 = ys[0], ys[(3 * (len(ys) - 1)) // 4]
    cut = lo + spread * (q3 - lo)
    far = [p for p in pts if p.y > cut and not p.frontier and not p.teacher]
    if not far:
        return pts
    kept = [p for p in pts if p not in far]
    top = max(p.y for p in kept)
    edge = top + 0.1 * ((top - min(p.y for p in kept)) or abs(top) or 1.0)
    moved = [Point(f"{p.name} ({p.y:.3g}, off scale)", p.x, edge, False, False, clipped=True) for p in far]
    return kept + moved


def cache_chart(
    path: Path,
    rows: list[dict],
    get: Callable[[dict], float | None],
    frontier: Sequence[str],
    title: str,
    ylabel: str,
    cache_context: int,
    dtype: str,
    y_log: bool | None = None,
) -> Path:
    """Cache bytes per token (log x) against one quality metric, frontier drawn."""
    pts = [Point(r["name"], r["cache_bytes_per_token"], get(r), r["teacher"], r["name"] in frontier) for r in rows]
    pts = clip_far_above([p for p in pts if p.y is not None and p.x > 0])
    fig, ax = plt.subplots(figsize=(8.4, 5.6))
    xlabel = f"KV-cache / state bytes per token at {cache_context:,} tokens ({dtype}, batch 1, log scale)"
    scatter(ax, pts, xlabel, ylabel, y_log=False if any(p.clipped for p in pts) else y_log)
    ax.set_title(title, fontsize=12, loc="left")
    legend_below(ax)
    return save(fig, path)


def mqar_chart(
    path: Path, rows: list[dict], name: str, fronts: dict[str, list[str]], cache_context: int, dtype: str
) -> Path:
    """MQAR accuracy against cache bytes per token, one panel per number of key-value pairs."""
    pairs = list(rows[0]["mqar"][name]) if rows else []
    fig, axes = plt.subplots(1, max(len(pairs), 1), figsize=(5.2 * max(len(pairs), 1), 4.8), sharey=True, squeeze=False)
    for ax, n in zip(axes[0], pairs, strict=False):
        front = fronts.get(f"mqar/{name}/{n}", [])
        pts = [
            Point(r["name"], r["cache_bytes_per_token"], r["mqar"][name][n], r["teacher"], r["name"] in front)
            for r in rows
        ]
        xlabel = f"cache bytes per token at {cache_context:,} ({dtype}, log)"
        scatter(ax, pts, xlabel, "", y_log=False, ylim=(-0.04, 1.04))
        ax.set_title(f"{n} key-value pairs", fontsize=10)
    axes[0][0].set_ylabel("MQAR accuracy (higher is better)")
    legend_below(axes[0][0])
    fig.suptitle(f"Associative recall ({name}) against cache size", fontsize=12, x=0.01, ha="left")
    fig.tight_layout()
    return save(fig, path)


def position_chart(path: Path, rows: list[dict], text_set: str) -> Path:
    """KL(teacher || model) over each range of positions in the scored blocks (``by_position``), one line per model:
    a student that matches its teacher early in a block and drifts further on (trained on shorter blocks, or
    missing what carries position at long range) rises to the right."""
    fig, ax = plt.subplots(figsize=(8.4, 5.2))
    ranges: list[tuple[int, int]] = []
    lines = [
        (r["name"], r["by_position"][text_set])
        for r in rows
        if not r["teacher"] and (r.get("by_position") or {}).get(text_set)
    ]
    for _, buckets in lines:
        for b in buckets:
            if (b["start"], b["end"]) not in ranges:
                ranges.append((b["start"], b["end"]))
    ranges.sort()
    colors = plt.get_cmap("tab10").colors  # dark enough for text; past ten lines the dash style changes
    ends = []
    for i, (name, buckets) in enumerate(lines):
        got = {(b["start"], b["end"]): b["kl"] for b in buckets}
        xs = [j for j, k in enumerate(ranges) if k in got]
        ys = [got[ranges[j]] for j in xs]
        color = colors[i % len(colors)]
        style = ("-", "--", ":")[i // len(colors) % 3]
        ax.plot(xs, ys, marker="o", ms=4, lw=1.6, ls=style, color=color, label=name)
        ends.append((ys[-1], xs[-1], name, color))
    top = max([y for y, *_ in ends], default=1.0)
    ax.set_xticks(range(len(ranges)), [f"{a:,}-{b:,}" for a, b in ranges])
    ax.set_xlim(-0.2, len(ranges) - 0.35)
    ax.set_ylim(0, top * 1.1 if top > 0 else 1.0)
    _end_labels(ax, ends)
    ax.set_xlabel("positions in the block (tokens from the block's start)")
    ax.set_ylabel("KL(teacher || model), nats/token (lower is better)")
    ax.grid(True, alpha=0.3)
    ax.set_title(f"KL to the teacher by position in the block ({text_set})", fontsize=12, loc="left")
    legend_below(ax)
    return save(fig, path)


def _end_labels(ax, ends: list[tuple[float, int, str, str]], gap_px: float = 12.5) -> None:
    """Each line's name right of its last point, pushed apart vertically (in pixels) where they would overlap, with
    a thin leader to the point when moved."""
    to_px, to_data = ax.transData, ax.transData.inverted()
    placed: list[float] = []
    for y, x, name, color in sorted(ends):
        px = to_px.transform((x, y))
        py = max(px[1], placed[-1] + gap_px) if placed else px[1]
        placed.append(py)
        ty = to_data.transform((px[0], py))[1]
        ax.annotate(name, (x, y), xytext=(x + 0.08, ty), fontsize=8, va="center", color=color,
                    arrowprops=dict(arrowstyle="-", lw=0.5, color=color) if py - px[1] > 2 else None)  # fmt: skip


def panels_chart(path: Path, panels: list[tuple[str, str, list[Point]]], ylabel: str, title: str) -> Path:
    """Decode tokens/s (linear y from 0) against cache bytes per token (log x), one panel per (panel title, x-axis
    label, points), two a row, one legend below and ``title`` above; labels are placed after the layout settles."""
    ncol = min(len(panels), 2)
    nrow = (len(panels) + 1) // 2
    fig, axes = plt.subplots(nrow, ncol, figsize=(7.6 * ncol, 5.4 * nrow), squeeze=False)
    placed = []
    for ax, (sub, xlabel, pts) in zip(axes.flat, panels, strict=False):
        scatter(ax, pts, xlabel, ylabel, y_log=False)
        # from 0, with room above the fastest point: points of close speeds padded by their own spread alone sat on
        # the top edge (a batch-1 panel of five models at 985-1,001 tokens/s topped out at 1,003)
        ax.set_ylim(0, max([ax.get_ylim()[1]] + [p.y * 1.1 for p in pts]))
        ax.set_title(sub, fontsize=11, loc="left")
        placed.append((ax, pts))
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=9, frameon=False, bbox_to_anchor=(0.5, -0.02))
    fig.suptitle(title, fontsize=12, x=0.01, ha="left")
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    for ax, pts in placed:  # the layout moved the axes: place the labels again in their final pixels
        for t in list(ax.texts):
            t.remove()
        place_labels(ax, pts)
    return save(fig, Path(path))


def cache_speed_chart(
    path: Path, rows: list[dict], cells: Sequence[str], cache_context: int, dtype: str, device: str
) -> Path | None:
    """The suite's decode tokens/s at each grid cell ("B=64,P=4096") against cache bytes per token, one panel a
    cell; the frontier is a smaller cache and a higher speed. None (nothing written) when no cell has a speed."""
    from .pareto import pareto

    panels = []
    for cell in cells:
        got = [(r, (r.get("decode_grid") or {}).get(cell)) for r in rows]
        got = [(r, v) for r, v in got if v and r["cache_bytes_per_token"] > 0]
        if not got:
            continue
        front = set(pareto([(r["name"], r["cache_bytes_per_token"], v) for r, v in got], higher_is_better=True))
        pts = [Point(r["name"], r["cache_bytes_per_token"], v, r["teacher"], r["name"] in front) for r, v in got]
        b, p = (part.split("=")[1] for part in cell.split(","))
        xlabel = f"KV-cache / state bytes per token at {cache_context:,} tokens ({dtype}, log scale)"
        panels.append((f"batch {b}, {int(p):,}-token prompts", xlabel, pts))
    if not panels:
        return None
    title = f"Decode speed against cache size ({device})"
    return panels_chart(path, panels, "decode tokens/s (higher is better)", title)


def speed_chart(path: Path, rows: list[dict], text_set: str, decode: dict) -> Path:
    """Decode tokens/s (log x) against perplexity; the frontier is faster and lower."""
    from .pareto import pareto

    pts0 = [(r["name"], r.get("decode_tokens_per_s"), r["ppl"].get(text_set), r["teacher"]) for r in rows]
    pts0 = [p for p in pts0 if p[1] and p[2] is not None]
    front = set(pareto([(n, -x, y) for n, x, y, _ in pts0]))
    pts = [Point(n, x, y, t, n in front) for n, x, y, t in pts0]
    fig, ax = plt.subplots(figsize=(8.4, 5.6))
    xlabel = (
        f"decode tokens/s (batch {decode['batch_size']}, {decode['prompt_len']:,}-token prompts, "
        f"{decode['new_tokens']} new tokens; log scale, higher is better)"
    )
    scatter(ax, pts, xlabel, f"perplexity on {text_set} (lower is better)", x_bytes=False, x_higher_better=True)
    ax.set_title(f"Decode speed against perplexity ({text_set})", fontsize=12, loc="left")
    legend_below(ax)
    return save(fig, path)
