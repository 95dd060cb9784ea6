"""The Pareto report's files: ``results.json``, ``report.md``, ``report.html`` and the PNG charts.

``results.json`` (``schema_version`` 1): the run's settings, device and versions at the top level,
``rows`` (one per model, teacher first, each with ``on_frontier`` per quality metric), ``frontier``
(metric -> names of the non-dominated models) and ``missing`` (suite models with no current row).
Quality metrics are ``ppl/<set>`` and ``kl/<set>`` (lower is better) and ``mqar/<set>/<pairs>``
(higher is better); the cost is ``cache_bytes_per_token`` (lower is better).
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

from .charts import cache_chart, cache_speed_chart, fmt_bytes, mqar_chart, position_chart, speed_chart
from .common import atomic_write
from .pareto import frontiers

METRIC_HELP = {
    "ppl": "perplexity (lower is better)",
    "kl": "KL(teacher || model), nats per token (lower is better)",
    "mqar": "MQAR accuracy (higher is better)",
}


def _slug(s: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in s)


def write_report(out: Path, meta: dict, rows: list[dict], order: list[str]) -> dict:
    """Every output file from the stored rows; returns the results.json content."""
    names = [r["name"] for r in rows]
    rows = sorted(rows, key=lambda r: order.index(r["name"]))
    fronts = frontiers(charted(rows))
    for r in rows:
        r["on_frontier"] = {k: r["name"] in v for k, v in fronts.items()}
    results = {
        **meta,
        "rows": rows,
        "frontier": fronts,
        "missing": [n for n in order if n not in names],
        "charts": [],
    }
    charts = make_charts(out, results) if rows else []
    results["charts"] = [c.name for c in charts]
    for old in _previous_charts(out):  # a chart the report no longer draws would be left behind, stale
        if old not in results["charts"]:
            (out / old).unlink(missing_ok=True)
    atomic_write(out / "results.json", json.dumps(results, indent=2) + "\n")
    atomic_write(out / "report.md", markdown(results))
    atomic_write(out / "report.html", html_page(results, out))
    return results


def _previous_charts(out: Path) -> list[str]:
    """The chart files the last report in ``out`` listed (none when there is no readable one)."""
    try:
        names = json.loads((out / "results.json").read_text()).get("charts", [])
    except (OSError, ValueError, AttributeError):
        return []
    return [n for n in names if isinstance(n, str) and n.endswith(".png") and "/" not in n]


def charted(rows: list[dict]) -> list[dict]:
    """The rows the frontiers and charts are over: all but the converted, untrained rows whose trained student is in
    the report too (each is that student's "before", in the before -> after table; two runs of one student, such
    as two recipes, share it). A converted row without its trained student (a suite of converted models alone:
    what conversion keeps) is a point like any other."""
    trained = {r["provenance"].get("config_hash") for r in rows if r["kind"] in ("run", "checkpoint")}
    return [r for r in rows if not (r.get("init") == "convert" and r["provenance"].get("config_hash") in trained)]


def before_after(rows: list[dict]) -> list[tuple[dict, dict]]:
    """(converted row, trained row) pairs: each trained student (a run or saved folder) with the converted row of
    the same model config, its starting point: the one named "<name> (converted)" where the suite has it (two
    runs of one config each keep their own), else the first of that config."""
    converted = [r for r in rows if r.get("init") == "convert"]
    by_name = {r["name"]: r for r in converted}
    by_hash: dict = {}
    for r in converted:
        by_hash.setdefault(r["provenance"].get("config_hash"), r)
    pairs = []
    for r in rows:
        if r["kind"] not in ("run", "checkpoint"):
            continue
        b = by_name.get(f"{r['name']} (converted)") or by_hash.get(r["provenance"].get("config_hash"))
        if b is not None:
            pairs.append((b, r))
    return pairs


def speed_cells(res: dict) -> list[str]:
    """The decode grid cells the cache-against-speed chart shows: the suite's primary cell (batch x prompt) and,
    where the grid has batch 1, its shortest prompt (where the weights, not the cache, bound the step)."""
    grid = next((list(r["decode_grid"]) for r in res["rows"] if r.get("decode_grid")), [])
    ones = [g for g in grid[1:] if g.startswith("B=1,")]
    return grid[:1] + sorted(ones, key=lambda g: int(g.split("P=")[1]))[:1]


def make_charts(out: Path, res: dict) -> list[Path]:
    rows, fronts, s = charted(res["rows"]), res["frontier"], res["settings"]
    ctx, dtype = s["cache_context"], res["dtype"]
    paths = []
    cells = speed_cells(res)
    if cells:
        device = (res.get("decode_from") or {}).get("device") or res.get("device", "")  # where the speeds are from
        p = cache_speed_chart(out / "cache_vs_speed.png", rows, cells, ctx, dtype, device)
        paths += [p] if p is not None else []
    if not s.get("report_quality", True):
        return paths
    text_sets = list(rows[0]["ppl"])
    for t in text_sets:
        paths.append(
            cache_chart(
                out / f"cache_vs_ppl_{_slug(t)}.png",
                rows,
                lambda r, t=t: r["ppl"].get(t),
                fronts[f"ppl/{t}"],
                f"Perplexity on {t} against cache size",
                f"perplexity on {t} (lower is better)",
                ctx,
                dtype,
            )
        )
        paths.append(
            cache_chart(
                out / f"cache_vs_kl_{_slug(t)}.png",
                rows,
                lambda r, t=t: r["kl"].get(t),
                fronts[f"kl/{t}"],
                f"KL(teacher || model) on {t} against cache size",
                "KL(teacher || model), nats/token (lower is better)",
                ctx,
                dtype,
                y_log=False,
            )
        )
    for t in text_sets:
        if any(len((r.get("by_position") or {}).get(t, [])) > 1 for r in rows if not r["teacher"]):
            paths.append(position_chart(out / f"kl_by_position_{_slug(t)}.png", rows, t))
    for m in rows[0]["mqar"]:
        paths.append(mqar_chart(out / f"cache_vs_mqar_{_slug(m)}.png", rows, m, fronts, ctx, dtype))
    if text_sets and s.get("decode") and any(r.get("decode_tokens_per_s") for r in rows):
        paths.append(speed_chart(out / f"speed_vs_ppl_{_slug(text_sets[0])}.png", rows, text_sets[0], s["decode"]))
    return paths


# ------------------------------------------------------------------------------ tables


def _f(x, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def tables(res: dict) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows of cells) for every table of the report; a cell marked '*' is on the frontier."""
    rows, s = res["rows"], res["settings"]
    if not rows:
        return []
    ctx, d = s["cache_context"], s.get("decode")
    lengths = list(rows[0]["cache_bytes"])
    head = ["model", "params", f"cache/token @{ctx:,}", *(f"cache @{int(n):,}" for n in lengths)]
    hbm = bool(d) and any(hbm_fraction(r, d) is not None for r in rows)  # rows measured before it: no column
    if d:
        head += [f"decode tok/s (B={d['batch_size']}, P={d['prompt_len']})", "x teacher"]
        head += ["HBM"] * hbm + ["prefill tok/s", "peak memory"]
    base = next((r.get("decode_tokens_per_s") for r in rows if r["teacher"]), None)
    grid = next((list(r["decode_grid"])[1:] for r in rows if r.get("decode_grid")), []) if d else []
    head += [f"decode tok/s ({g.replace(',', ', ')})" for g in grid]
    sp = s.get("speculative")
    if sp:
        head += [f"draft acceptance (k={sp['num_draft_tokens']})"]
    main = []
    for r in rows:
        main.append(
            [
                r["name"] + (" ★" if r["teacher"] else ""),
                f"{r['parameters'] / 1e6:.2f}M",
                fmt_bytes(r["cache_bytes_per_token"]),
                *(fmt_bytes(r["cache_bytes"][n]) for n in lengths),
                *(
                    [
                        _f(r.get("decode_tokens_per_s"), ",.0f"),
                        _f(r["decode_tokens_per_s"] / base if base and r.get("decode_tokens_per_s") else None, ".2f"),
                        *([_f(hbm_fraction(r, d), ".0%")] if hbm else []),
                        _f(r.get("prefill_tokens_per_s"), ",.0f"),
                        fmt_bytes(r["peak_memory_bytes"]) if r.get("peak_memory_bytes") is not None else "-",
                    ]
                    if d
                    else []
                ),
                *(_f((r.get("decode_grid") or {}).get(g), ",.0f") for g in grid),
                *([_f(r.get("draft_acceptance_rate"), ".1%")] if sp else []),
            ]
        )
    out = [("Cache size and speed (★ = the teacher)", head, main)]
    if s.get("report_quality", True):  # false: random weights, whose quality is noise
        out += quality_tables(rows, lengths)
    p_head = ["model", "source", "kind", "config hash", "run folder", "tokens trained", "measured in"]
    p_rows = [
        [
            r["name"],
            r["source"],
            r["kind"],
            r["provenance"].get("config_hash") or "-",
            r["provenance"].get("run_dir") or "-",
            _f(r["provenance"].get("tokens_trained"), ","),
            f"{r['seconds']:.1f} s",
        ]
        for r in rows
    ]
    out.append(("Provenance", p_head, p_rows))
    return out


def hbm_fraction(row: dict, decode: dict) -> float | None:
    """The fraction of the measured copy bandwidth one decode step reads at in the primary cell: the step's bytes
    (every weight, each layer's cache to the mean length) x steps per second / bandwidth; None for rows measured
    before the suite recorded them."""
    cell = f"B={decode['batch_size']},P={decode['prompt_len']}"
    step, bw, tok_s = (
        (row.get("decode_step_bytes") or {}).get(cell),
        row.get("decode_bandwidth"),
        row.get("decode_tokens_per_s"),
    )
    if not (step and bw and tok_s):
        return None
    return step * tok_s / decode["batch_size"] / bw


def quality_tables(rows: list[dict], lengths: list[str]) -> list[tuple]:
    """The quality table (perplexity, KL, MQAR; '*' on the frontier), KL by position, before -> after."""
    out = []
    q_head, q_rows = ["model", "cache/token"], [[r["name"], fmt_bytes(r["cache_bytes_per_token"])] for r in rows]
    for t in rows[0]["ppl"]:
        q_head += [f"ppl {t}", f"KL {t}"]
        for cells, r in zip(q_rows, rows, strict=True):
            cells.append(_f(r["ppl"][t], ".3f") + (" *" if r["on_frontier"][f"ppl/{t}"] else ""))
            cells.append(_f(r["kl"][t], ".4f") + (" *" if r["on_frontier"][f"kl/{t}"] else ""))
    for m, by in rows[0]["mqar"].items():
        for n in by:
            q_head.append(f"MQAR {m} {n} pairs")
            for cells, r in zip(q_rows, rows, strict=True):
                cells.append(_f(r["mqar"][m][n], ".2%") + (" *" if r["on_frontier"][f"mqar/{m}/{n}"] else ""))
    out.append(("Quality (* = on the Pareto frontier of cache bytes per token and that metric)", q_head, q_rows))
    out += position_tables(rows)
    pairs = before_after(rows)
    if pairs:
        out.append(before_after_table(pairs, rows, lengths))
    return out


def position_tables(rows: list[dict]) -> list[tuple]:
    """Per text set, KL(teacher || model) over each range of positions in the scored blocks (``by_position``;
    rows measured before it was recorded show '-'), with the perplexity in the last range: a student trained on
    shorter blocks than the report scores drifts from the teacher further into the block. Left out where the
    blocks give one range only."""
    out = []
    sets = {t: b for r in rows for t, b in (r.get("by_position") or {}).items() if len(b) > 1}
    for t, buckets in sets.items():
        ranges = [(b["start"], b["end"]) for b in buckets]
        head = ["model", *(f"KL @ {a:,}-{e:,}" for a, e in ranges), f"ppl @ {ranges[-1][0]:,}-{ranges[-1][1]:,}"]
        body = []
        for r in rows:
            got = {(b["start"], b["end"]): b for b in (r.get("by_position") or {}).get(t, [])}
            cells = [r["name"] + (" ★" if r["teacher"] else "")]
            cells += [_f(got[k]["kl"], ".4f") if k in got else "-" for k in ranges]
            cells.append(_f(got[ranges[-1]]["ppl"], ".3f") if ranges[-1] in got else "-")
            body.append(cells)
        out.append((f"KL by position in the block: {t} (tokens from a to b of each block)", head, body))
    return out


def before_after_table(pairs: list[tuple[dict, dict]], rows: list[dict], lengths: list[str]) -> tuple:
    """Distillation: each student converted (before) -> trained (after), with the teacher's figure beside."""
    teacher = next((r for r in rows if r["teacher"]), None)
    big = lengths[-1]
    head = ["model", "params", f"cache @{int(big):,}", "tokens trained", "training time"]
    texts, mqar = list(rows[0]["ppl"]), list(rows[0]["mqar"])
    for t in texts:
        head += [f"ppl {t}: before -> after (/ teacher)", f"KL {t}: before -> after"]
    head += [f"MQAR {m}: before -> after (teacher), mean over pairs" for m in mqar]

    def mean(r: dict | None, m: str) -> float | None:
        return sum(r["mqar"][m].values()) / len(r["mqar"][m]) if r is not None and r["mqar"].get(m) else None

    body = []
    for b, a in pairs:
        secs = a["provenance"].get("train_seconds")
        cells = [
            a["name"],
            f"{a['parameters'] / 1e6:.2f}M",
            fmt_bytes(a["cache_bytes"][big]),
            _f(a["provenance"].get("tokens_trained"), ","),
            "-" if secs is None else f"{secs / 60:.1f} min",
        ]
        for t in texts:
            ratio = a["ppl"][t] / teacher["ppl"][t] if teacher and teacher["ppl"].get(t) else None
            cells.append(f"{_f(b['ppl'][t], '.2f')} -> {_f(a['ppl'][t], '.2f')} ({_f(ratio, '.3f')}x)")
            cells.append(f"{_f(b['kl'][t], '.4f')} -> {_f(a['kl'][t], '.4f')}")
        for m in mqar:
            cells.append(f"{_f(mean(b, m), '.2%')} -> {_f(mean(a, m), '.2%')} ({_f(mean(teacher, m), '.2%')})")
        body.append(cells)
    return ("Distillation: converted (before) -> trained (after)", head, body)


def _setting_lines(res: dict) -> list[str]:
    s, v = res["settings"], res["versions"]
    d = s.get("decode")
    vers = ", ".join(f"{k} {val}" for k, val in v.items() if val)
    rebuilt = res.get("report_only")
    return [
        *(
            [
                f"- report rebuilt from the stored rows by `{rebuilt['command']}` ({rebuilt['date']}); the rows come "
                "from one or more measuring runs, each named in the Provenance table; the command and date below "
                "are the last measuring run's"
            ]
            if rebuilt
            else []
        ),
        f"- command: `{res['command']}`",
        f"- date: {res['date']}; device: {res['device']}, {res['dtype']}; {vers}",
        f"- teacher: {s['teacher']['name']} ({s['teacher']['source']})",
        f"- cache bytes per token: total cache bytes of one sequence at {s['cache_context']:,} tokens / "
        f"{s['cache_context']:,} (`model.new_cache(1, L).nbytes()`, equal to `archzoo.cache_bytes`)",
        *(
            [
                f"- decode: batch {d['batch_size']}, {d['prompt_len']:,}-token random prompts, {d['new_tokens']} new "
                f"tokens (greedy), warm-up {d['warmup']}, timed {d['repeat']}, compile {d['compile']}, projections "
                f"`{d.get('decode_linear', 'cublas')}`; tokens/s = batch x new tokens / decode seconds, prefill "
                "tokens/s = batch x prompt / prefill seconds"
            ]
            if d
            else ["- decode: not measured"]
        ),
        *(
            [
                f"- decode speeds from `{res['decode_from']['path']}` ({res['decode_from'].get('device')}, "
                f"{res['decode_from'].get('date')}): measured side by side there, by model name and config"
            ]
            if res.get("decode_from")
            else []
        ),
        *(
            (f"- evaluation set `{k}`: {desc}" for k, desc in res["eval_sets"].items())
            if s.get("report_quality", True)
            else ["- quality: not shown (`report_quality: false`: the models' weights are random; a speed run)"]
        ),
    ]


def markdown(res: dict) -> str:
    lines = [f"# Pareto report: {res['suite']}", "", *_setting_lines(res), ""]
    if res["missing"]:
        lines += [f"Not measured yet: {', '.join(res['missing'])}.", ""]
    for title, head, rows in tables(res):
        lines += [f"## {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
        lines.append("")
    if res["charts"]:
        lines += ["## Charts", ""]
        lines += [f"![{c}]({c})" for c in res["charts"]]
        lines.append("")
    return "\n".join(lines)


SORT_JS = """
document.querySelectorAll('table.sortable th').forEach((th, col) => th.addEventListener('click', () => {
  const body = th.closest('table').tBodies[0], rows = Array.from(body.rows);
  const key = r => { const t = r.cells[col].dataset.v ?? r.cells[col].textContent; const n = parseFloat(t);
                     return isNaN(n) ? t : n; };
  const dir = th.dataset.dir = th.dataset.dir === 'asc' ? 'desc' : 'asc';
  rows.sort((a, b) => { const x = key(a), y = key(b); const c = x < y ? -1 : x > y ? 1 : 0;
                        return dir === 'asc' ? c : -c; });
  rows.forEach(r => body.appendChild(r));
}));
"""

CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1150px; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border: 1px solid #ddd; padding: 0.3em 0.6em; text-align: right; }
th { background: #f3f3f3; cursor: pointer; user-select: none; }
th:hover { background: #e6eefa; } td:first-child, th:first-child { text-align: left; }
td.front { background: #e6eefa; font-weight: 600; }
img { max-width: 100%; border: 1px solid #eee; margin: 0.5em 0; }
code { background: #f5f5f5; padding: 0 0.2em; }
"""


def _sort_key(cell: str) -> str:
    """The number a cell sorts by: bytes with units in bytes, '1,234' as 1234; text as is."""
    c = cell.rstrip(" *").replace(",", "")
    units = {"B": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30}
    parts = c.split()
    try:
        if len(parts) == 2 and parts[1] in units:
            return repr(float(parts[0]) * units[parts[1]])
        if c.endswith("M"):
            return repr(float(c[:-1]) * 1e6)
        return repr(float(c))
    except ValueError:
        return c


def html_page(res: dict, out: Path) -> str:
    e = html.escape
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>Pareto report: {e(res['suite'])}</title><style>{CSS}</style></head><body>",
        f"<h1>Pareto report: {e(res['suite'])}</h1><ul>",
    ]
    for line in _setting_lines(res):
        text = e(line.removeprefix("- "))
        parts.append("<li>" + text.replace("`", "") + "</li>")
    parts.append("</ul><p>Click a column header to sort the table by it.</p>")
    if res["missing"]:
        parts.append(f"<p>Not measured yet: {e(', '.join(res['missing']))}.</p>")
    for title, head, rows in tables(res):
        parts.append(f"<h2>{e(title)}</h2><table class='sortable'><thead><tr>")
        parts += [f"<th>{e(h)}</th>" for h in head]
        parts.append("</tr></thead><tbody>")
        for row in rows:
            cells = []
            for c in row:
                cls = " class='front'" if c.endswith(" *") else ""
                cells.append(f"<td{cls} data-v='{e(_sort_key(c))}'>{e(c)}</td>")
            parts.append("<tr>" + "".join(cells) + "</tr>")
        parts.append("</tbody></table>")
    if res["charts"]:
        parts.append("<h2>Charts</h2>")
    for c in res["charts"]:
        data = base64.b64encode((out / c).read_bytes()).decode()
        parts.append(f"<figure><img alt='{e(c)}' src='data:image/png;base64,{data}'><figcaption>{e(c)}</figcaption>")
        parts.append("</figure>")
    parts.append(f"<script>{SORT_JS}</script></body></html>\n")
    return "".join(parts)
