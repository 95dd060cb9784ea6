"""``decode.png``: what a smaller cache buys in decode speed, from ``archzoo bench decode``'s rows.

One panel per (batch size, prompt length) of the run, at most four (the largest batch and prompt first,
where the cache matters most): x is the cache's bytes per token at that length (``cache_bytes`` over
batch x (prompt + new tokens), log scale), y the decode tokens/s of each model's fastest archzoo row (no
speculative or inductor-option variants). Where the run had several projection forms (``--decode-linear
cublas,auto``), a point whose row is not the plain "archzoo" form carries the form in its name, "jamba (auto)".
The frontier is the models that no other beats on both
(a smaller or equal cache and at least the speed). A model whose short name is ``teacher`` or that was
given as a teacher name / GGUF / HF folder is drawn as the teacher. The peers' rows (``--baseline hf``: Hugging
Face ``generate`` with its dynamic and static caches) are drawn beside them as hollow diamonds named
"model (implementation)", off the frontier: the reference a reader compares archzoo's speed with.

    python -m archzoo.bench.decode_chart DIR/decode.json OUT.png [--cells 64x4096,1x4096] [--skip draft-8l]
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

from .charts import Point, panels_chart
from .decode_report import _short_names
from .pareto import pareto

MAX_PANELS = 4


def _plain(row: dict) -> bool:
    """An archzoo row (any projection form: "archzoo", "archzoo-auto", ...; no speculative or inductor-option
    variant) that measured something."""
    return (
        (row.get("implementation") or "").startswith("archzoo")
        and row.get("num_draft_tokens") is None
        and not row.get("inductor_options")
        and bool(row.get("tokens_per_s"))
        and bool(row.get("cache_bytes"))
    )


def _fastest(rows: list[dict]) -> list[dict]:
    """Each (model, batch, prompt)'s fastest archzoo row, in the rows' order: a run with several projection forms
    (``--decode-linear cublas,auto``) draws each model once, at the best it reached (the table has every row)."""
    best: dict[tuple, dict] = {}
    for r in rows:
        key = (r["model"], r["batch_size"], r["prompt_len"])
        if key not in best or r["tokens_per_s"] > best[key]["tokens_per_s"]:
            best[key] = r
    return [r for r in rows if best[(r["model"], r["batch_size"], r["prompt_len"])] is r]


def _label(name: str, row: dict, forms: int) -> str:
    """The point's name; with the form ("auto" for "archzoo-auto") where the run had several."""
    impl = row["implementation"]
    return f"{name} ({impl.removeprefix('archzoo-')})" if forms > 1 and impl != "archzoo" else name


def _peer(row: dict) -> bool:
    """A peer's row (an implementation other than archzoo's, e.g. "hf-static") that measured something."""
    impl = row.get("implementation") or ""
    return not impl.startswith("archzoo") and bool(row.get("tokens_per_s")) and bool(row.get("cache_bytes"))


def _is_teacher(row: dict, short: str) -> bool:
    return short == "teacher" or row.get("source") == "teacher"  # a teacher name, GGUF or HF folder (resolve_source)


def decode_chart(
    path: str | Path,
    meta: dict,
    rows: list[dict],
    cells: Sequence[tuple[int, int]] | None = None,
    skip: Sequence[str] = (),
) -> Path | None:
    """Write the chart to ``path``; None (nothing written) when no row has a speed. ``cells``: the (batch size,
    prompt length) panels, in order (default: the run's, largest first, at most four); ``skip``: short model
    names to leave out (a draft of another size, say)."""
    peers = [r for r in rows if _peer(r)]
    rows = [r for r in rows if _plain(r)]
    forms = len({r["implementation"] for r in rows})
    rows = _fastest(rows)
    names = _short_names(list(dict.fromkeys(r["model"] for r in rows + peers)))
    rows = [r for r in rows if names[r["model"]] not in skip]
    peers = [r for r in peers if names[r["model"]] not in skip]
    have = {(r["batch_size"], r["prompt_len"]) for r in rows}
    if cells is None:
        cells = sorted(have, key=lambda c: (-c[0], -c[1]))[:MAX_PANELS]
    cells = [c for c in cells if c in have]
    if not cells:
        return None
    dtype = meta.get("dtype", "")
    panels = []
    for B, P in cells:
        sel = [r for r in rows if (r["batch_size"], r["prompt_len"]) == (B, P)]
        per_token = {names[r["model"]]: r["cache_bytes"] / (B * (P + r["new_tokens"])) for r in sel}
        speed = {names[r["model"]]: r["tokens_per_s"] for r in sel}
        front = set(pareto([(n, per_token[n], speed[n]) for n in speed], higher_is_better=True))
        pts = [Point(_label(n, r, forms), per_token[n], speed[n], _is_teacher(r, n), n in front) for n, r in
               ((names[r["model"]], r) for r in sel)]  # fmt: skip
        for r in peers:
            if (r["batch_size"], r["prompt_len"]) == (B, P):
                n = names[r["model"]]
                x = r["cache_bytes"] / (B * (P + r["new_tokens"]))
                pts.append(Point(f"{n} ({r['implementation']})", x, r["tokens_per_s"], False, False, peer=True))
        new = sel[0]["new_tokens"]
        xlabel = f"cache bytes per token at {P + new:,} tokens ({dtype}, log scale)"
        panels.append((f"batch {B}, {P:,}-token prompts, {new} new tokens", xlabel, pts))
    title = f"Decode speed against cache size ({meta.get('device', '')}, archzoo bench decode)"
    return panels_chart(Path(path), panels, "decode tokens/s (higher is better)", title)


def _cells(text: str) -> list[tuple[int, int]]:
    try:
        return [(int(b), int(p)) for b, p in (c.lower().split("x") for c in text.split(","))]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected BATCHxPROMPT[,...], e.g. 64x4096, got {text!r}") from None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m archzoo.bench.decode_chart", description=__doc__.split("\n\n")[0])
    ap.add_argument("decode_json", type=Path, help="a decode.json of archzoo bench decode")
    ap.add_argument("out", type=Path, help="the PNG to write")
    ap.add_argument("--cells", type=_cells, default=None, help="panels as BATCHxPROMPT, comma-separated")
    ap.add_argument("--skip", default="", help="short model names to leave out, comma-separated")
    args = ap.parse_args(argv)
    if not args.decode_json.is_file():
        ap.error(f"{args.decode_json}: no such file")
    data = json.loads(args.decode_json.read_text())
    out = decode_chart(args.out, data, data.get("rows", []), args.cells, [s for s in args.skip.split(",") if s])
    print(out or "no measured archzoo rows in those cells: nothing written")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
