"""``decode.md``: the Markdown report of ``archzoo bench decode`` (a summary table, then one row per
measurement, then the formulas)."""

from __future__ import annotations

from pathlib import Path

SPECULATIVE = "speculative"  # the implementation name of --draft rows
# the suffix a row's implementation name takes for its ``--decode-linear`` form (archzoo, archzoo-gemv, ...)
LINEAR_SUFFIX = {
    "cublas": "",
    "kernel": "-gemv",
    "kernel-pdl": "-gemv-pdl",
    "kernel-pdl-l2": "-gemv-pdl-l2",
    "kernel-pdl-m16": "-gemv-pdl-m16",
    "kernel-pdl-l2-m16": "-gemv-pdl-l2-m16",
    "auto": "-auto",
    "auto-qkv": "-auto-qkv",
}
SPECULATIVE_STATS = (
    "acceptance_rate",
    "row_acceptance_rate",
    "accepted_per_verify",
    "tokens_per_verify",
    "verify_steps",
)
FORMULAS = {
    "tokens_per_s": "batch_size * new_tokens / decode_s",
    "ms_per_token": "decode_s / new_tokens * 1000 (one decode step of the whole batch)",
    "prefill_ms": "prefill_s * 1000 (the prompt's forward pass, first token's logits)",
    "acceptance_rate": "speculative rows: draft tokens kept / draft tokens proposed (k per verify step)",
    "accepted_per_verify": (
        "speculative rows: draft tokens kept per verify step, averaged over the rows (each row keeps its own; "
        "a target that replays after a rollback keeps the batch's minimum)"
    ),
    "tokens_per_verify": "speculative rows: accepted_per_verify + 1 (the target's own token)",
    "speedup": "speculative rows: tokens_per_s / tokens_per_s of the archzoo row of the same shape",
    "round_ms": "speculative rows: decode_s * 1000 / verify_steps (one round: k+1 draft steps, the verify, the rest)",
    "draft_ms_per_step": "speculative rows: ms_per_token of the draft decoding alone at the same shape and form",
    "round_rest_ms": (
        "speculative rows: round_ms - (k+1) * draft_ms_per_step - ms_per_token of the target alone: what the "
        "(B, k+1) verify costs beyond one target step, plus acceptance, rollback and snapshots"
    ),
    "greedy_rows_differing": (
        "speculative rows: rows whose greedy tokens differ from the target alone on the same prompts (0 in exact "
        "arithmetic; in bf16 a near-tie can flip where the (B, k+1) verify rounds unlike the one-token step); "
        "greedy_first_difference gives each such row's first differing token"
    ),
    "cache_bytes": "archzoo.cache_bytes(cfg, batch_size, prompt_len + new_tokens, dtype): the analytic cache size "
    "(the HF rows hold the same K/V)",
    "weight_bytes": "sum of parameter bytes, a tied embedding / head counted once",
    "step_bytes": "weight_bytes + archzoo.cache.cache_read_bytes(cfg, batch_size, prompt_len + new_tokens // 2, "
    "dtype): what one decode step must read at the mean length (attention reads its K/V up to the current position; a "
    "bounded state, sliding window or recurrent, reads its fixed size; a CLA member reads its leader's K/V again, "
    "so shared K/V counts once per reading layer; every weight is counted, also all MoE experts and the whole "
    "embedding, so the figure is an upper bound for MoE at small batch and for an untied embedding)",
    "hbm_fraction": "step_bytes / (decode_s / new_tokens) / bandwidth.bytes_per_s",
    "bandwidth.bytes_per_s": "bytes read + written by a device-to-device copy (dst.copy_(src)) / its time, "
    "best of several rounds (CUDA events on a GPU, perf_counter on the CPU)",
    "compile_s": "seconds the warm-up call(s) spent compiling / capturing: generate's own figure for archzoo rows, "
    "warm-up wall time minus the median timed call's for hf-static",
    "peak_memory_bytes": "torch.cuda.max_memory_allocated over the row (reset before its warm-up); null on the CPU",
}


def _fmt_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError


def _fmt(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


MD_COLUMNS = (
    "model",
    "impl",
    "backend",
    "batch",
    "prompt",
    "new",
    "tokens/s",
    "ms/step",
    "prefill ms",
    "cache",
    "weights",
    "peak memory",
    "bandwidth",
    "compile s",
    "note",
)


def markdown(meta: dict, rows: list[dict]) -> str:
    """One table row per measurement, the command and the run's setting above it."""
    bw = meta.get("bandwidth", {}).get("bytes_per_s")
    lines = [
        "# archzoo bench decode",
        "",
        f"    {meta['command']}",
        "",
        f"{meta['device']}; torch {meta['torch']}, triton {meta.get('triton') or '-'}, "
        f"transformers {meta.get('transformers') or '-'}; {meta['dtype']}; {meta['date']}.",
        f"Measured bandwidth: {_fmt(bw and bw / 1e9, ',.0f')} GB/s ({meta.get('bandwidth', {}).get('method', '-')}).",
        f"{meta['new_tokens']} new tokens per row, greedy, no EOS; {meta['warmup']} warm-up and {meta['repeat']} "
        "timed call(s), the median reported.",
        "",
        "## Summary: tokens/s (fraction of the measured bandwidth)",
        "",
        *summary_table(meta, rows),
        "",
        "## Every measurement",
        "",
        "| " + " | ".join(MD_COLUMNS) + " |",
        "|" + "|".join("---" if c in ("model", "impl", "backend", "note") else "--:" for c in MD_COLUMNS) + "|",
    ]
    for r in rows:
        note = r.get("note") or ""
        if r.get("skipped"):
            note = f"skipped: {r['skipped']}"
        elif r.get("error"):
            note = f"error: {r['error']}"
        elif r["implementation"] == SPECULATIVE and r.get("acceptance_rate") is not None:
            spec = f"k={r['num_draft_tokens']}, acceptance {r['acceptance_rate']:.2f}, "
            spec += f"{r['tokens_per_verify']:.2f} tokens/verify"
            spec += f", {r['speedup']:.2f}x" if r.get("speedup") else ""
            if r.get("round_ms") is not None and r.get("draft_ms_per_step") is not None:
                spec += f", round {r['round_ms']:.3f} ms = {r['num_draft_tokens'] + 1} x {r['draft_ms_per_step']:.3f}"
                spec += " draft" + (f" + target + {r['round_rest_ms']:.3f}" if r.get("round_rest_ms") else "")
            if r.get("draft_step_note"):
                spec += f", round not split: {r['draft_step_note']}"
            if r.get("greedy_rows_differing") is not None:
                spec += f", greedy rows differing {r['greedy_rows_differing']}/{r['batch_size']}"
            note = f"{spec}; {note}" if note else spec
        cells = [
            r["model"],
            _impl(r),
            r.get("backend") or "-",
            str(r["batch_size"]),
            str(r["prompt_len"]),
            str(r["new_tokens"]),
            _fmt(r.get("tokens_per_s"), ",.0f"),
            _fmt(r.get("ms_per_token"), ".3f"),
            _fmt(r.get("prefill_ms"), ".1f"),
            _fmt_bytes(r.get("cache_bytes")),
            _fmt_bytes(r.get("weight_bytes")),
            _fmt_bytes(r.get("peak_memory_bytes")),
            _fmt(r.get("hbm_fraction") and 100 * r["hbm_fraction"], ".1f") + ("%" if r.get("hbm_fraction") else ""),
            _fmt(r.get("compile_s"), ".1f"),
            note.replace("|", "/"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Formulas:", ""]
    lines += [f"- `{k}` = {v}" for k, v in meta.get("formulas", FORMULAS).items()]
    return "\n".join(lines) + "\n"


def _linear_suffix(row: dict) -> str:
    """A speculative row's attention and projections as the plain rows name theirs (``-sdpa`` where the verify and
    the draft's steps ran masked SDPA; ``-gemv``, ``-auto``; nothing for the decode kernel and cuBLAS)."""
    attention = "-sdpa" if row.get("decode_attention") == "sdpa" else ""
    return attention + LINEAR_SUFFIX.get(row.get("decode_linear") or "cublas", "")


def _impl(row: dict) -> str:
    """The implementation as the tables show it: a speculative row with its draft length, a row compiled with
    inductor options with them."""
    k = row.get("num_draft_tokens")
    name = row["implementation"] if k is None else f"{row['implementation']}{_linear_suffix(row)} k={k}"
    opts = row.get("inductor_options")
    return name if not opts else name + " [" + ",".join(f"{a}={b}" for a, b in opts.items()) + "]"


def _short_names(models: list[str]) -> dict[str, str]:
    """``configs/students/mla.yaml`` -> ``mla`` where the short names stay distinct, else the argument."""
    short = {m: Path(m).stem if Path(m).suffix in (".yaml", ".yml", ".gguf") else Path(m).name or m for m in models}
    return short if len(set(short.values())) == len(short) else {m: m for m in models}


def summary_table(meta: dict, rows: list[dict]) -> list[str]:
    """One line per model x implementation, one column per (batch size, prompt length): 'tokens/s (HBM %)'."""
    combos = [(b, p) for b in meta["batch_sizes"] for p in meta["prompt_lens"]]
    keys = list(dict.fromkeys((r["model"], _impl(r)) for r in rows))
    names = _short_names(list(dict.fromkeys(m for m, _ in keys)))
    cells = {(r["model"], _impl(r), r["batch_size"], r["prompt_len"]): r for r in rows}
    lines = [
        "| model | impl | " + " | ".join(f"B={b} P={p}" for b, p in combos) + " |",
        "|---|---|" + "--:|" * len(combos),
    ]
    for model, impl in keys:
        out = []
        for b, p in combos:
            r = cells.get((model, impl, b, p))
            if r is None:
                out.append("")
            elif r.get("skipped") or r.get("error"):
                out.append("skipped" if r.get("skipped") else "error")
            elif r.get("tokens_per_s") is None:
                out.append("-")
            else:
                out.append(f"{r['tokens_per_s']:,.0f} ({100 * r['hbm_fraction']:.0f}%)")
        lines.append(f"| {names[model]} | {impl} | " + " | ".join(out) + " |")
    return lines
