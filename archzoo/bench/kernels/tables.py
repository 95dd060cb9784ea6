"""The printed report: the forward / forward+backward table (_table), the one-call rows (_print_ms_rows), and the
tables of la, based and moe (_print_issue19)."""

from __future__ import annotations

from .linear import LA_TARGET
from .moe import MOE_TARGET


def _fmt_ms(r: dict, key: str) -> str:
    if r.get("status") != "ok":
        return r["status"].split(" (")[0]
    if key not in r:  # this mode did not run (a peer without a backward, say): its own status, else "-"
        return r.get(f"{key.removesuffix('_ms')}_status", "-").split(" (")[0]
    return f"{r[key]:.3f}"


def _pair(r: dict, a: str, b: str, fmt: str) -> str:
    """``r[a] / r[b]`` as "x / y" with fmt, "-" for a missing or None value; "-" for a row not ok."""
    if r.get("status") != "ok":
        return "-"
    return " / ".join(format(r[k], fmt) if r.get(k) is not None else "-" for k in (a, b))


def _table(title: str, rows: dict[int, dict], ours: str = "archzoo") -> str:
    head = (
        "| l | impl | fwd ms | fwd+bwd ms | fwd x | fwd+bwd x | fwd+bwd x per round | peak MiB fwd / fwd+bwd "
        "| host ms fwd / fwd+bwd |"
    )
    lines = [f"\n## {title}", head, "|---|---|---|---|---|---|---|---|---|"]
    for L, res in rows.items():
        mine = res.get(ours, {})
        for name, r in res.items():
            both = r.get("status") == "ok" and mine.get("status") == "ok"

            def ratio(k: str, r: dict = r, mine: dict = mine, both: bool = both) -> str:
                return f"{r[k] / mine[k]:.2f}" if both and k in r and k in mine else "-"

            per_round = "-"
            mine_rounds = mine.get("fwdbwd_rounds_ms") or []
            if both and r.get("fwdbwd_rounds_ms") and len(r["fwdbwd_rounds_ms"]) == len(mine_rounds):
                x = [p / m for p, m in zip(r["fwdbwd_rounds_ms"], mine_rounds, strict=True)]
                per_round = f"{min(x):.2f}-{max(x):.2f}"
            peak = _pair(r, "fwd_peak_mib", "fwdbwd_peak_mib", ".0f")
            host = _pair(r, "fwd_host_ms", "fwdbwd_host_ms", ".3f")
            lines.append(
                f"| {L} | {name} | {_fmt_ms(r, 'fwd_ms')} | {_fmt_ms(r, 'fwdbwd_ms')} | {ratio('fwd_ms')} "
                f"| {ratio('fwdbwd_ms')} | {per_round} | {peak} | {host} |"
            )
    return "\n".join(lines)


def _print_ms_rows(title: str, res: dict, ours_key: str) -> None:
    """One table of ``{impl: {status, ms, hbm_fraction}}``: ms, the ratio to ``ours_key`` and the bandwidth."""
    ours = res[ours_key]
    print(f"\n## {title}; x = impl ms / {ours_key} ms")
    for k, r in res.items():
        if k == "shape":
            continue
        ok = r.get("status") == "ok"
        x = f" x{r['ms'] / ours['ms']:.2f}" if ok and ours.get("status") == "ok" else ""
        hbm = f" {r['hbm_fraction']:.0%} of copy bandwidth" if ok and "hbm_fraction" in r else ""
        print(f"| {k} | {r['ms']:.3f} ms{x}{hbm} |" if ok else f"| {k} | {r.get('status')} |")


def _print_issue19(results: dict) -> None:
    """The tables of la, based and moe, where they ran."""
    if any(k in results for k in ("linear_attention", "based", "moe")) and "shape" not in results:
        print(f"\ndevice: {results['device']}; torch {results['torch']}; triton {results['triton']}")
    if results.get("tiny"):
        print("tiny shapes (a smoke run: the times say only that each call ran)")
    la = results.get("linear_attention")
    for norm in ("false", "true") if la else ():
        print(_table(f"linear_attention normalize={norm.title()} {la['shape']}; x = impl ms / archzoo ms "
                     f"(fla / archzoo >= {LA_TARGET} is issue 19's target); fla: {la['fla'].split(' (')[0]}",
                     la[f"normalize_{norm}"]))  # fmt: skip
        _print_backends(la[f"normalize_{norm}"])
    based = results.get("based")
    if based:
        print(_table(f"BASED {based['shape']}; x = impl ms / archzoo ms (target fla / archzoo >= {LA_TARGET}); "
                     f"fla: {based['fla'].split(' (')[0]}", based["rows"]))  # fmt: skip
        _print_backends(based["rows"])
    moe = results.get("moe")
    if moe:
        print(_table(f"MoE {moe['shape']}, capacity {moe['capacity']}; x = impl ms / dense ms (target: grouped <= "
                     f"{MOE_TARGET}); dense = {moe['dense_reference']}", moe["rows"],
                     ours=next(k for k in next(iter(moe["rows"].values())) if k.startswith("dense"))))  # fmt: skip
        if moe.get("whole_graph"):
            print(
                "\nOne CUDA graph a call (forward; forward + backward captured whole): no host time on either side; "
                "x = impl ms / dense ms"
            )
            print("| impl | fwd ms | fwd+bwd ms | fwd x | fwd+bwd x |\n|---|---|---|---|---|")
            for name, r in moe["whole_graph"].items():
                x = _pair(r, "over_dense_fwd", "over_dense_fwdbwd", ".2f").split(" / ")
                print(f"| {name} | {_fmt_ms(r, 'fwd_ms')} | {_fmt_ms(r, 'fwdbwd_ms')} | {x[0]} | {x[-1]} |")
        for name, r in next(iter(moe["rows"].values())).items():
            if "last_dispatch" in r:
                print(f"{name}: dispatch ran: {r['last_dispatch']}")
            if "aten_ops_fwd" in r:
                syncs = f"; host syncs: {r['host_syncs']}" if "host_syncs" in r else ""
                print(f"{name}: ATen ops fwd {r['aten_ops_fwd']}, fwd+bwd {r['aten_ops_fwdbwd']}{syncs}")


def _print_backends(rows: dict) -> None:
    for L, res in rows.items():
        r = res.get("archzoo", {})
        fla = ", ".join(f"{m} {r[f'fla_over_ours_{m}']:.2f}x" for m in ("fwd", "fwdbwd")
                        if r.get(f"fla_over_ours_{m}") is not None)  # fmt: skip
        print(f"T={L}: archzoo backend {r.get('backend')}" + (f"; fla / archzoo {fla}" if fla else ""))
