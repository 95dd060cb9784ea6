"""``decode_spec.png``: what a draft buys, from the speculative rows of ``archzoo bench decode --draft``.

One panel per (batch size, prompt length) of the run, at most four: for each ``--decode-linear`` form, a bar for
the target decoding alone and one per draft length k, in tokens/s, with the target alone as a dashed line. Each
speculative bar says its speed-up over that line, the acceptance rate and the tokens a verify step emits; where
the row has them, the bar is split into where a round's time goes (the k+1 draft steps, one target step and the
rest: the verify beyond a one-token step, acceptance and rollback), so a draft that does not pay shows why. A k
whose row of a panel was skipped or failed (out of memory at batch 64 x 4k, say) keeps its place, with the reason
written where its bar would stand.

``decode.png`` (tokens/s against cache bytes) says nothing here: a speculative run has one target and one cache.
"""

from __future__ import annotations

from pathlib import Path

from .charts import plt, save
from .decode_report import SPECULATIVE

MAX_PANELS = 4
FORM_NAMES = {
    "cublas": "cuBLAS",
    "kernel": "GEMV",
    "kernel-pdl": "GEMV + PDL",
    "kernel-pdl-l2": "GEMV + PDL + L2 prefetch",
    "kernel-pdl-m16": "GEMV + PDL, 16-row tiles",
    "kernel-pdl-l2-m16": "GEMV + PDL + L2 prefetch, 16-row tiles",
    "auto": "auto",
    "auto-qkv": "auto-qkv",
}
PARTS = (("draft steps", "#9ecae1"), ("target step", "#3182bd"), ("verify extra + bookkeeping", "#fdae6b"))


def _measured(row: dict) -> bool:
    return bool(row.get("tokens_per_s")) and not row.get("error") and not row.get("skipped")


def spec_chart(path: str | Path, meta: dict, rows: list[dict]) -> Path | None:
    """Write the chart to ``path``; None (nothing written) when no speculative row measured a speed."""
    spec = [r for r in rows if r.get("implementation") == SPECULATIVE and _measured(r)]
    if not spec:
        return None
    target = spec[0]["model"]
    plain = {
        (r["batch_size"], r["prompt_len"], _form(r)): r
        for r in rows
        if r["model"] == target
        and r.get("implementation", "").startswith("archzoo")
        and not r.get("inductor_options")
        and _measured(r)
    }
    cells = sorted({(r["batch_size"], r["prompt_len"]) for r in spec}, key=lambda c: (c[0], c[1]))[:MAX_PANELS]
    forms = list(dict.fromkeys(_form(r) for r in spec))
    unmeasured = [r for r in rows if r.get("implementation") == SPECULATIVE and not _measured(r)
                  and (r["batch_size"], r["prompt_len"]) in cells and r.get("num_draft_tokens")]  # fmt: skip
    ks = sorted({r["num_draft_tokens"] for r in spec + unmeasured})
    fig, axes = plt.subplots(1, len(cells), figsize=(6.2 * len(cells), 4.6), squeeze=False)
    width = 0.8 / len(forms)
    for ax, (B, P) in zip(axes[0], cells, strict=True):
        top = 0.0
        for i, form in enumerate(forms):
            base = plain.get((B, P, form))
            x0 = i * width - 0.4 + width / 2
            name = _form_name(form)
            if base is not None:
                ax.bar(x0, base["tokens_per_s"], width * 0.9, color="#636363", label=None)
                ax.axhline(base["tokens_per_s"], color="#636363", ls="--", lw=0.8)
                ax.annotate(f"{name}\n{base['tokens_per_s']:,.0f}", (x0, base["tokens_per_s"]), ha="center",
                            va="bottom", fontsize=7.5)  # fmt: skip
                top = max(top, base["tokens_per_s"])
            for j, k in enumerate(ks, start=1):
                r = next((s for s in spec if (s["batch_size"], s["prompt_len"], s["num_draft_tokens"]) == (B, P, k)
                          and _form(s) == form), None)  # fmt: skip
                if r is None:
                    miss = next((u for u in unmeasured if (u["batch_size"], u["prompt_len"], u["num_draft_tokens"])
                                 == (B, P, k) and _form(u) == form), None)  # fmt: skip
                    if miss is not None:  # where its bar would stand, why it has none
                        ax.annotate(_why(miss), (j + x0, 0), xytext=(0, 4), textcoords="offset points", ha="center",
                                    va="bottom", rotation=90, fontsize=8, color="#b2182b")  # fmt: skip
                    continue
                x, tps = j + x0, r["tokens_per_s"]
                top = max(top, tps)
                parts = _parts(r, base)
                if parts:  # the bar split by where a round's time goes, in proportion
                    bottom = 0.0
                    for (_, color), share in zip(PARTS, parts, strict=True):
                        ax.bar(x, tps * share, width * 0.9, bottom=bottom, color=color)
                        bottom += tps * share
                else:
                    ax.bar(x, tps, width * 0.9, color=PARTS[0][1])
                if r.get("speedup"):
                    ax.annotate(f"{r['speedup']:.2f}x", (x, tps), ha="center", va="bottom", fontsize=7.5)
        ticks = ["alone"]
        for k in ks:  # acceptance is the draft's and the text's, about the same under either form: the first's
            r = next((s for s in spec if (s["batch_size"], s["prompt_len"], s["num_draft_tokens"]) == (B, P, k)), None)
            if r is None:
                ticks.append(f"k = {k}\nnot measured")
                continue
            ticks.append(f"k = {k}\nacceptance {r.get('acceptance_rate') or 0:.2f}\n"
                         f"{r.get('tokens_per_verify') or 0:.2f} tokens/verify")  # fmt: skip
        ax.set_xticks(range(len(ks) + 1), ticks, fontsize=8)
        ax.set_xlim(-0.6, len(ks) + 0.6)  # a k without a bar keeps its place
        ax.set_ylim(0, top * 1.35 if top else 1)
        ax.set_ylabel("decode tokens/s (higher is better)")
        ax.set_title(f"batch {B}, {P:,}-token prompts, {spec[0]['new_tokens']} new tokens", fontsize=10, loc="left")
        ax.grid(axis="y", alpha=0.3)
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for _, c in PARTS] + [plt.Rectangle((0, 0), 1, 1, color="#636363")]
    labels = [f"round time: {label}" for label, _ in PARTS] + ["target alone"]
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=8.5, frameon=False, bbox_to_anchor=(0.5, -0.04))
    bars = " | ".join(_form_name(f) for f in forms)
    draft = Path(str(spec[0].get("draft", "")))
    draft_name = draft.parent.name if draft.name == "student" else draft.name  # a distill run's student folder
    fig.suptitle(f"Speculative decoding: {Path(target).name} verifying draft {draft_name} ({meta.get('device', '')}; "
                 f"prompts: {meta.get('prompts', 'random')})\nbars in each group: projections {bars}; "
                 "on each bar its speed-up over the target alone", fontsize=10, x=0.01, ha="left")  # fmt: skip
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    return save(fig, Path(path))


def _why(row: dict) -> str:
    """A skipped or failed row's reason, short enough to stand in a bar's place."""
    text = str(row.get("skipped") or row.get("error") or "not measured")
    text = text.removeprefix("skipped: ")
    return text if len(text) <= 40 else text[:37] + "..."


def _form(row: dict) -> tuple[str, str]:
    """(projections, attention) a row ran under."""
    return row.get("decode_linear") or "cublas", row.get("decode_attention") or "kernel"


def _form_name(form: tuple[str, str]) -> str:
    lin, att = form
    return FORM_NAMES.get(lin, lin) + (" + SDPA" if att == "sdpa" else "")


def _parts(row: dict, base: dict | None) -> tuple[float, float, float] | None:
    """Shares of a round's time: (k+1) draft steps, one target step, the rest; None without the decomposition."""
    round_ms, draft_ms = row.get("round_ms"), row.get("draft_ms_per_step")
    if not round_ms or draft_ms is None or base is None or not base.get("ms_per_token"):
        return None
    d = (row["num_draft_tokens"] + 1) * draft_ms
    t = base["ms_per_token"]
    rest = max(round_ms - d - t, 0.0)
    total = d + t + rest
    return d / total, t / total, rest / total
