"""The Pareto frontier of the benchmark report: which models nothing beats on cost and quality."""

from __future__ import annotations

from collections.abc import Callable, Sequence


def pareto(points: Sequence[tuple[str, float, float]], higher_is_better: bool = False) -> list[str]:
    """Names of the non-dominated points of (name, cost, quality); lower cost is better, quality per the flag.

    A point is dominated when another is at least as good in both and strictly better in one.
    """
    sign = -1.0 if higher_is_better else 1.0
    pts = [(n, x, sign * y) for n, x, y in points]
    return [
        n for n, x, y in pts if not any(x2 <= x and y2 <= y and (x2 < x or y2 < y) for n2, x2, y2 in pts if n2 != n)
    ]


def metrics(rows: list[dict]) -> list[tuple[str, Callable[[dict], float | None], bool]]:
    """Every quality metric of the rows as (key, getter, higher_is_better): ppl/<set>, kl/<set>, mqar/<set>/<pairs>."""
    if not rows:
        return []
    ref = rows[0]
    out: list[tuple[str, Callable[[dict], float | None], bool]] = []
    for s in ref["ppl"]:
        out.append((f"ppl/{s}", lambda r, s=s: r["ppl"].get(s), False))
    for s in ref["kl"]:
        out.append((f"kl/{s}", lambda r, s=s: r["kl"].get(s), False))
    for s, by_pairs in ref["mqar"].items():
        for n in by_pairs:
            out.append((f"mqar/{s}/{n}", lambda r, s=s, n=n: r["mqar"].get(s, {}).get(n), True))
    return out


def frontiers(rows: list[dict]) -> dict[str, list[str]]:
    """The frontier (names, by cache bytes per token) of every quality metric."""
    out = {}
    for key, get, higher in metrics(rows):
        pts = [(r["name"], r["cache_bytes_per_token"], get(r)) for r in rows if get(r) is not None]
        out[key] = pareto(pts, higher)
    return out
