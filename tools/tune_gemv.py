"""Sweep the decode GEMV's configuration (``archzoo.kernels.decode_linear.triton``'s ``CUDA_CONFIG``, applied
through ``CONFIG_OVERRIDE``) at the teacher's four projections with their decode-step epilogues, on one GPU, each
configuration against the default plan and cuBLAS (issue 18: the teacher's step at batch 16).

    for i in 0 1 2 3 4 5 6 7; do python tools/tune_gemv.py --rows 16,8 --compile-only --shard $i/8 & done; wait
    python tools/tune_gemv.py --rows 16,8 --out tune_gemv.json
    python tools/tune_gemv.py --dry-run [--quick]   # the grid and each configuration's plans; no GPU needed

Shapes: ``archzoo.bench.kernels``'s ``GEMV_SHAPES`` (the teacher's Q|K|V, O, gate|up, down), bf16, each with the
epilogue the decode step runs it with: Q|K|V with RoPE and the K/V cache write (``decode_qkv_rope``'s launch,
which never splits K), gate|up with SwiGLU, O and down with the residual add; the RMSNorm fused before Q|K|V and
gate|up. ``--shapes qkv`` adds Q|K|V as ``archzoo bench kernels --ops gemv`` times it (the norm only).

Timing is the kernel benchmark's (``bench_gemv``): inputs built as it builds them (seed 0, weights
randn / sqrt(K), ``GEMV_ROTATE_BYTES`` of weight copies cycled so each call reads its weight from HBM), each
implementation captured by its ``_capture_chain`` as one call per weight copy, ``GEMV_REPLAYS`` replays between
CUDA events, the graphs interleaved over ``--rounds`` rounds, the median kept; ms per call = time / (replays x
copies). The peer is its ``F.linear`` alone (cuBLAS; the norm and epilogue not counted). ``hbm_fraction``: weight
bytes / time / the copy bandwidth of ``measure_bandwidth``; ``x_vs_cublas``: cuBLAS ms / ms (> 1: faster).

The kernel is called through the Triton module's ``_run``, not the dispatcher: a configuration that does not
compile raises and is reported (the dispatcher would turn the kernel off for the rest of the process and run the
PyTorch form silently). Each configuration's output (and with RoPE the K/V caches it wrote) is checked against the
default plan's; beyond bf16 tolerance it is reported as wrong and not timed. Configurations that plan the same
launch for a shape (the plan: ``launch_plan``, and whether the split's sum is fixed up in the kernel and the L2
prefetch is on) are compiled and timed once and share the timing.

The grid (``build_grid``): tile x warps x split policy at FIXUP off and L2_PREFETCH on, and at the default tile and
warps every split policy x FIXUP x L2_PREFETCH. The launch has no ``num_stages`` knob (``_launch.launch`` passes
num_warps only, so Triton's default pipelining depth applies): it is not swept. Every swept key also governs other
row counts (BLOCK_N, MAX_BLOCK_K and MAX_TILE the element-wise path below DOT_MIN_M rows as well), so the summary
lists which plans at other row counts a suggested configuration would change.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import time
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from _tuning import Rows  # this folder is on sys.path

from archzoo.bench.kernels import decode as bench_decode
from archzoo.kernels.decode_linear import naive_decode_qkv_rope, torch_decode_linear
from archzoo.kernels.decode_linear import triton as gt

EPS = 1e-5
# name -> (GEMV_SHAPES entry, the decode step's epilogue): "rope" (decode_qkv_rope), "swiglu", "residual" or None
SHAPES = {
    "qkv_rope": ("qkv", "rope"),
    "o": ("o", "residual"),
    "gate_up": ("gate_up", "swiglu"),
    "down": ("down", "residual"),
    "qkv": ("qkv", None),  # as bench_gemv times it; not in the step (there Q|K|V takes RoPE): --shapes qkv
}
DEFAULT_SHAPES = ("qkv_rope", "o", "gate_up", "down")
HEADS, KV_HEADS, HEAD_DIM, SLOTS = 9, 3, 64, 256  # the teacher's attention (Q|K|V rows: (9 + 2 x 3) x 64 = 960)
SM_COUNT = 132  # --dry-run plans for an H100 / H200 (132 SMs) unless --sms says otherwise
OTHER_ROWS = (1, 4, 32, 64)  # row counts whose plans the summary checks a suggestion against (if not swept)

# The grid. Tiles: weight rows a program (BLOCK_N; the tl.dot path never goes below 16) and K a tile, as the
# keys that give them on the dot path at <= 16 rows; "bn16" is CUDA_CONFIG's own (BLOCK_K 512 there); "ew*" the
# element-wise path at these rows.
TILES = {
    "bn16": {},
    "bn16_bk64": dict(MAX_BLOCK_K=64),
    "bn16_bk128": dict(MAX_BLOCK_K=128),
    "bn16_bk256": dict(MAX_BLOCK_K=256),
    "bn16_bk1024": dict(MAX_TILE=16384),
    "bn32": dict(BLOCK_N=32, MIN_BLOCK_N=32),  # BLOCK_K 256 within MAX_TILE
    "bn32_bk64": dict(BLOCK_N=32, MIN_BLOCK_N=32, MAX_BLOCK_K=64),
    "bn32_bk128": dict(BLOCK_N=32, MIN_BLOCK_N=32, MAX_BLOCK_K=128),
    # The element-wise path (no tl.dot) up to 31 rows: never timed at 8-16 rows before the eighteenth session, when
    # the dot path's gate|up at 16 rows read its 3.5 MB at about 0.6 TB/s (6.0 us; 96 programs of 32 weight rows).
    # Element-wise, each weight is 16 FMAs at 16 rows (about 1 us of the SMs' FMA rate for gate|up); its
    # accumulator is (BLOCK_M, BLOCK_N, BLOCK_K), so BLOCK_N x BLOCK_K shrinks by BLOCK_M (MAX_TILE). sm_90: 116-121
    # registers at 16 rows, no spills (tools/sm90_compile.py --op gemv --config '{"DOT_MIN_M": 32}').
    "ew": dict(DOT_MIN_M=32),
    "ew_tile16k": dict(DOT_MIN_M=32, MAX_TILE=16384),
    "ew_bn8": dict(DOT_MIN_M=32, MIN_BLOCK_N=8),
}
WARPS = (2, 4, 8)
# Split-K policy: K split when the column blocks are fewer than SPLIT_BELOW_PER_SM per SM, into enough chunks for
# PROGRAMS_PER_SM programs per SM (at most MAX_SPLITS). At 16 rows: O 36 blocks -> 1 / 3 / 5 / 9 splits
# (nosplit, pps1, pps2, pps4), down 1 / 4 / 8 / 12, gate|up splits only under below2 (2), Q|K|V with RoPE never.
SPLITS = {
    "pps2": {},  # CUDA_CONFIG's (SPLIT_BELOW_PER_SM 1.0, PROGRAMS_PER_SM 2)
    "nosplit": dict(SPLIT_BELOW_PER_SM=0.0),
    "pps1": dict(PROGRAMS_PER_SM=1),
    "pps4": dict(PROGRAMS_PER_SM=4),
    "below2": dict(SPLIT_BELOW_PER_SM=2.0),
}
# with FIXUP, Q|K|V with RoPE splits K too (ROPE_SPLIT: its epilogue runs in the last split program)
SYNCS = {
    "fx0_l2": dict(FIXUP=False, L2_PREFETCH=True),
    "fx1_l2": dict(FIXUP=True, ROPE_SPLIT=True, L2_PREFETCH=True),
    "fx0": dict(FIXUP=False, L2_PREFETCH=False),
    "fx1": dict(FIXUP=True, ROPE_SPLIT=True, L2_PREFETCH=False),
}
# From WIDE_M rows on (32; the step at batch 64, where cuBLAS still wins: docs/decode.md) the tl.dot path's tile is
# set by WIDE_MIN_BLOCK_N (BLOCK_N at least that; 64 in CUDA_CONFIG) and MAX_TILE (BLOCK_K = MAX_TILE / BLOCK_N),
# and M_TILE splits x's rows into blocks (lost at 16 on an H200; 32 is not timed). Swept only when --rows has such
# a count, crossed with WIDE_WARPS and WIDE_SPLITS.
WIDE_TILES = {
    "wbn32": dict(WIDE_MIN_BLOCK_N=32),
    "wbn32_bk512": dict(WIDE_MIN_BLOCK_N=32, MAX_TILE=16384),
    "wbn64_bk256": dict(MAX_TILE=16384),
    "wbn128": dict(WIDE_MIN_BLOCK_N=128, BLOCK_N=128, MAX_TILE=16384),
    "wbn64_mt32": dict(M_TILE=32),
    "wbn32_mt32": dict(WIDE_MIN_BLOCK_N=32, M_TILE=32),
}
WIDE_WARPS = (4, 8)
WIDE_SPLITS = ("pps2", "nosplit", "pps1")
QUICK = dict(tiles=("bn16", "bn16_bk128"), warps=(4,), splits=("pps2", "nosplit"), syncs=("fx0_l2", "fx1_l2"))
RTOL, ATOL_OF_MAX = 2**-6, 2**-7  # bf16: |d| <= RTOL |ref| + ATOL_OF_MAX max|ref| element-wise, or wrong
EST_COMPILE_S = 0.6  # a compile on the H200 host (sm90_compile.py: 37 GEMV kernels in 39 s on 2 shared cores)


def _pruned(cfg: dict) -> dict:
    """The keys of ``cfg`` that differ from CUDA_CONFIG (the override a configuration needs)."""
    return {k: v for k, v in cfg.items() if gt.CUDA_CONFIG.get(k, object()) != v}


def build_grid(quick: bool = False, wide: bool = False) -> dict[str, dict]:
    """-> {name: CONFIG_OVERRIDE}, "default" ({}) and "flat" (EPILOGUE_PLANS off) first, then, each with
    EPILOGUE_PLANS off (one configuration for all four projections): tile x warps x split policy at CUDA_CONFIG's
    FIXUP and L2_PREFETCH, then at the default tile and warps every split policy x FIXUP x L2_PREFETCH; with
    ``wide`` (rows of WIDE_M or more swept, not with ``quick``) also WIDE_TILES x WIDE_WARPS x WIDE_SPLITS. Overrides
    hold only the keys that differ from CUDA_CONFIG; configurations equal to one before are left out."""
    tiles, warps, splits, syncs = (QUICK[k] for k in ("tiles", "warps", "splits", "syncs")) if quick else (
        tuple(TILES), WARPS, tuple(SPLITS), tuple(SYNCS))  # fmt: skip
    base_sync = _pruned(SYNCS["fx0_l2"])
    points = [(t, w, s, None) for t, w, s in itertools.product(tiles, warps, splits)]
    points += [("bn16", gt.CUDA_CONFIG["num_warps"], s, y) for s, y in itertools.product(splits, syncs)]
    if wide and not quick:
        points += [(t, w, s, None) for t, w, s in itertools.product(WIDE_TILES, WIDE_WARPS, WIDE_SPLITS)]
    # "default": CUDA_CONFIG as shipped, its per-epilogue plans included; "flat": without them (one configuration for
    # every projection, as each point of the grid is)
    # "ropesplit": the default with Q|K|V split along K (the other projections' plans unchanged); "normloop": the
    # default with the norm's K tiles in a loop (NORM_UNROLL 0, as before the twentieth session)
    grid: dict[str, dict] = {"default": {}, "flat": {"EPILOGUE_PLANS": False}, "ropesplit": {"ROPE_SPLIT": True},
                             "normloop": {"NORM_UNROLL": 0}}  # fmt: skip
    seen = {(), (("EPILOGUE_PLANS", False),), (("ROPE_SPLIT", True),), (("NORM_UNROLL", 0),)}
    for t, w, s, y in points:
        cfg = _pruned({**{**TILES, **WIDE_TILES}[t], "num_warps": w, **SPLITS[s], **(SYNCS[y] if y else base_sync),
                       "EPILOGUE_PLANS": False})  # fmt: skip
        key = tuple(sorted(cfg.items()))
        if key in seen:
            continue
        seen.add(key)
        grid[f"{t}_w{w}_{s}" + (f"_{y}" if y else "")] = cfg
    return grid


@contextmanager
def overridden(cfg: dict):
    """CONFIG_OVERRIDE = ``cfg`` inside (plans are keyed on it: no cache to clear), restored after."""
    saved = dict(gt.CONFIG_OVERRIDE)
    gt.CONFIG_OVERRIDE.clear()
    gt.CONFIG_OVERRIDE.update(cfg)
    try:
        yield
    finally:
        gt.CONFIG_OVERRIDE.clear()
        gt.CONFIG_OVERRIDE.update(saved)


def shape_of(name: str) -> tuple[int, int, bool, str | None]:
    """-> (N, K, norm, epilogue) of a SHAPES entry."""
    base, epi = SHAPES[name]
    N, K, norm = bench_decode.GEMV_SHAPES[base]
    return N, K, norm, epi


def plan_of(M: int, name: str, cfg: dict, device: torch.device, sms: int = SM_COUNT, pdl: bool = True) -> dict:
    """The launch ``cfg`` plans for shape ``name`` at M rows: ``launch_plan``'s, with ``fixup`` (split-K summed by
    the last split program), ``l2_prefetch`` and the number of launches. On CUDA as the kernel plans it; on the CPU
    (--dry-run) with CUDA_CONFIG and a GPU of ``sms`` SMs (the CPU's own plan would use the interpreter's config),
    with PDL as ``pdl`` says (on, as on an sm_90 GPU)."""
    N, K, _, epi = shape_of(name)
    full = {**gt.CUDA_CONFIG, **cfg}
    if device.type == "cuda":
        with overridden(cfg):
            lp = gt.launch_plan(M, N, K, device, epi == "swiglu", epi == "rope", epi == "residual")
        pdl = gt.pdl_enabled(device)
    else:
        missing = set(gt.INTERPRET_CONFIG) - set(gt.CUDA_CONFIG) - {"SM_COUNT"}
        if missing:  # every key the CPU's config has must come from CUDA_CONFIG, or the plan mixes the two
            raise RuntimeError(f"CUDA_CONFIG lacks {sorted(missing)}: the dry run cannot plan as on a GPU")
        with overridden({**full, "SM_COUNT": sms}):
            lp = gt.launch_plan(M, N, K, device, epi == "swiglu", epi == "rope", epi == "residual")
    split = lp["n_splits"] > 1  # lp["fixup"]: FIXUP's, and always for a split Q|K|V with RoPE
    return {**lp, "l2_prefetch": bool(pdl and lp["use_dot"] and full["L2_PREFETCH"]),
            "launches": 2 if split and not lp["fixup"] else 1}  # fmt: skip


def plan_str(p: dict) -> str:
    """A plan in one word group: tile, programs x splits, warps and flags."""
    s = f"{p['BLOCK_N']}x{p['BLOCK_K']} {p['n_blocks']}x{p['n_splits']}"
    s += f"x{p['m_blocks']} row blocks" if p.get("m_blocks", 1) > 1 else ""
    s += f" w{p['num_warps']}"
    if p["n_splits"] > 1:
        s += " fixup" if p["fixup"] else " +reduce"
    return s + (" l2" if p["l2_prefetch"] else "") + ("" if p["use_dot"] else " elementwise")


def plan_key(p: dict) -> tuple:
    return tuple(sorted(p.items()))


def check(outs: list[torch.Tensor], refs: list[torch.Tensor]) -> dict:
    """Outputs against the default plan's: max |d|, max |d| / max |ref|, and ok (finite, every element within
    RTOL |ref| + ATOL_OF_MAX max |ref|: a bf16 rounding or two, as a different sum order gives)."""
    d = torch.cat([(o.float() - r.float()).abs().flatten() for o, r in zip(outs, refs, strict=True)])
    ref = torch.cat([r.float().abs().flatten() for r in refs])
    top = ref.max().item() if ref.numel() else 0.0
    max_abs = d.max().item() if d.numel() else 0.0
    ok = bool(torch.isfinite(d).all()) and bool((d <= RTOL * ref + ATOL_OF_MAX * top).all())
    return {"max_abs_err": max_abs, "rel_err": max_abs / top if top else max_abs, "ok": ok}


class Case:
    """One shape at M rows on the GPU: inputs as bench_gemv builds them (plus the epilogue's), and the calls. (On
    the CPU, tests run it under Triton's interpreter at tiny shapes.)"""

    def __init__(self, name: str, M: int, copies: int | None = None, device: str = "cuda"):
        N, K, norm, epi = shape_of(name)
        self.name, self.M, self.N, self.K, self.epi = name, M, N, K, epi
        self.weight_bytes = N * K * 2
        g = torch.Generator(device=device).manual_seed(0)
        bf, dv = torch.bfloat16, dict(device=device)
        self.copies = copies or max(2, -(-bench_decode.GEMV_ROTATE_BYTES // self.weight_bytes))
        self.ws = [(torch.randn(N, K, **dv, generator=g) / K**0.5).to(bf) for _ in range(self.copies)]
        self.x = torch.randn(M, K, **dv, generator=g).to(bf)
        self.nw = (0.5 + torch.rand(K, **dv, generator=g)).to(bf) if norm else None
        self.res = torch.randn(M, N, **dv, generator=g).to(bf) if epi == "residual" else None
        self.rope = None
        if epi == "rope":
            D = HEAD_DIM
            pos = torch.arange(M, **dv, dtype=torch.long) + 128  # a step after 128-token prompts
            inv_freq = 1.0 / (10000.0 ** (torch.arange(0, D, 2, **dv, dtype=torch.float32) / D))
            kc, vc = (torch.zeros(M, KV_HEADS, SLOTS, D, **dv, dtype=bf) for _ in "kv")
            self.rope = gt.Rope(pos, inv_freq, kc, vc, HEADS * D, KV_HEADS * D, D)

    def reset(self) -> None:
        """Zero the K/V caches (RoPE), so that a check sees what the next call writes."""
        if self.rope is not None:
            self.rope.k_cache.zero_()
            self.rope.v_cache.zero_()

    def kernel(self, w: torch.Tensor) -> torch.Tensor:
        """The GEMV with the step's epilogue, under whatever CONFIG_OVERRIDE holds."""
        return gt._run(self.x, w, self.nw, EPS, self.res, self.epi == "swiglu", self.rope)

    def cublas(self, w: torch.Tensor) -> torch.Tensor:
        return F.linear(self.x, w)

    def outputs(self, out: torch.Tensor) -> list[torch.Tensor]:
        """What a call produced: its output, and with RoPE the K/V caches it wrote."""
        return [out.clone()] + ([self.rope.k_cache.clone(), self.rope.v_cache.clone()] if self.rope else [])

    def pytorch_rel_err(self, out: torch.Tensor) -> float:
        """RMS error of the default plan's output against the unfused PyTorch form (a check of the default)."""
        w = self.ws[0]
        if self.rope is not None:
            r = self.rope
            kc, vc = torch.zeros_like(r.k_cache), torch.zeros_like(r.v_cache)
            ref = naive_decode_qkv_rope(self.x, w, self.nw, EPS, r.positions, r.inv_freq, HEADS, KV_HEADS, HEAD_DIM,
                                        kc, vc)  # fmt: skip
        else:
            ref = torch_decode_linear(self.x, w, self.nw, EPS, self.res, self.epi == "swiglu")
        a, b = out.double(), ref.double()
        return ((a - b).pow(2).mean().sqrt() / b.pow(2).mean().sqrt().clamp_min(1e-30)).item()


def time_graphs(graphs: dict[str, tuple[torch.cuda.CUDAGraph, int]], rounds: int) -> dict[str, list[float]]:
    """bench_gemv's timing: each graph replayed once (warm), then GEMV_REPLAYS times between CUDA events, the
    graphs interleaved over ``rounds`` rounds -> {name: ms per call each round}."""
    per: dict[str, list[float]] = {name: [] for name in graphs}
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    for _ in range(rounds):
        for name, (graph, copies) in graphs.items():
            graph.replay()
            start.record()
            for _ in range(bench_decode.GEMV_REPLAYS):
                graph.replay()
            end.record()
            end.synchronize()
            per[name].append(start.elapsed_time(end) / (bench_decode.GEMV_REPLAYS * copies))
    return per


def _error(e: BaseException) -> str:
    first = str(e).splitlines()[0][:160] if str(e) else ""
    return f"error ({type(e).__name__}: {first})"


def sweep_case(case: Case, grid: dict[str, dict], rounds: int, bw: float, deadline: float) -> list[dict]:
    """Every configuration of ``grid`` at one case -> its rows (the default's and cuBLAS's first)."""
    dev = case.x.device
    plans = {name: plan_of(case.M, case.name, cfg, dev) for name, cfg in grid.items()}
    first: dict[tuple, str] = {}  # plan -> the first configuration that plans it (compiled and timed once)
    for name, p in plans.items():
        first.setdefault(plan_key(p), name)
    head = dict(shape=case.name, M=case.M, N=case.N, K=case.K, epilogue=case.epi, weight_bytes=case.weight_bytes,
                copies=case.copies)  # fmt: skip
    status: dict[str, dict] = {}
    graphs: dict[str, tuple] = {}
    with overridden({}):
        case.reset()
        out = case.kernel(case.ws[0])
        ref = case.outputs(out)
        try:
            status["default"] = {"status": "ok", "rel_err_vs_pytorch": case.pytorch_rel_err(out)}
        except Exception as e:  # the reference is a check of the default, not needed for the sweep
            status["default"] = {"status": "ok", "rel_err_vs_pytorch": _error(e)}
        graphs["default"] = (bench_decode._capture_chain(case.kernel, case.ws), case.copies)
    graphs["cublas_f_linear"] = (bench_decode._capture_chain(case.cublas, case.ws), case.copies)
    for name in dict.fromkeys(first.values()):
        if name == "default":
            continue
        if time.monotonic() > deadline:
            status[name] = {"status": "skipped (--budget-s spent)"}
            continue
        with overridden(grid[name]):
            try:
                case.reset()
                out = case.kernel(case.ws[0])
                if out.is_cuda:
                    torch.cuda.synchronize()
            except Exception as e:  # out of registers / shared memory at a point of the grid: report it, go on
                status[name] = {"status": _error(e)}
                continue
            err = check(case.outputs(out), ref)
            ok = err.pop("ok")
            status[name] = {"status": "ok" if ok else "wrong", **err}
            if ok:
                try:
                    graphs[name] = (bench_decode._capture_chain(case.kernel, case.ws), case.copies)
                except Exception as e:
                    status[name] = {"status": f"capture {_error(e)}", **err}
    ms = {name: statistics.median(t) for name, t in time_graphs(graphs, rounds).items()}
    del graphs
    if case.x.is_cuda:
        torch.cuda.empty_cache()
    cublas = ms["cublas_f_linear"]
    rows = [{**head, "config": "cublas_f_linear", "override": None, "plan": None, "status": "ok", "ms": cublas,
             "hbm_fraction": case.weight_bytes / (cublas / 1e3) / bw}]  # fmt: skip
    for name, p in plans.items():
        timed_as = first[plan_key(p)]
        row = {**head, "config": name, "override": grid[name], "plan": p, "plan_str": plan_str(p)}
        if timed_as != name:
            row["same_plan_as"] = timed_as
        row.update(status[timed_as])
        if timed_as in ms:
            t = ms[timed_as]
            row.update(ms=t, hbm_fraction=case.weight_bytes / (t / 1e3) / bw, x_vs_cublas=cublas / t,
                       x_vs_default=ms["default"] / t, cublas_ms=cublas, default_ms=ms["default"])  # fmt: skip
        rows.append(row)
    return rows


BEST_KEYS = ("config", "override", "plan_str", "ms", "default_ms", "cublas_ms", "x_vs_cublas", "x_vs_default",
             "hbm_fraction")  # fmt: skip


def summarize(rows: list[dict], tol: float = 0.01) -> dict:
    """The best configuration per (shape, M) among the timed rows, and a suggestion: the configuration that is
    within ``tol`` of the best on every (shape, M) (the one with the fewest overridden keys, then the least total
    ms), or else none, with the configuration of least total ms over the cases timed for all (what one
    CUDA_CONFIG would give the step, which runs each projection once a layer)."""
    timed = [r for r in rows if r.get("config") != "cublas_f_linear" and r.get("ms") is not None]
    cases = sorted({(r["shape"], r["M"]) for r in timed}, key=lambda c: (c[1], c[0]))
    by_case = {c: {r["config"]: r for r in timed if (r["shape"], r["M"]) == c} for c in cases}
    best = {}
    for c, rs in by_case.items():
        b = min(rs.values(), key=lambda r: (r["ms"], len(r["override"] or {})))
        best[c] = b
    winners = None
    for c, rs in by_case.items():
        w = {n for n, r in rs.items() if r["ms"] <= best[c]["ms"] * (1 + tol)}
        winners = w if winners is None else winners & w
    everywhere = [n for n in (set.intersection(*(set(rs) for rs in by_case.values())) if by_case else set())]
    total = {n: sum(by_case[c][n]["ms"] for c in cases) for n in everywhere}
    overrides = {r["config"]: r["override"] or {} for r in timed}
    pick = lambda names: min(names, key=lambda n: (len(overrides[n]), total.get(n, float("inf")), n))  # noqa: E731
    suggested = pick(winners) if winners else None
    least = min(total, key=lambda n: (total[n], len(overrides[n]))) if total else None
    return {
        "cases": [f"{s}_m{m}" for s, m in cases],
        "best": {f"{s}_m{m}": {k: b.get(k) for k in BEST_KEYS} for (s, m), b in best.items()},
        "tolerance": tol,
        "wins_everywhere": suggested,
        "suggested_override": overrides[suggested] if suggested else None,
        "least_total": least,
        "least_total_override": overrides[least] if least else None,
        "least_total_ms": total.get(least) if least else None,
        "default_total_ms": total.get("default"),
    }


def other_rows_changed(cfg: dict, shapes: list[str], swept: list[int], device: torch.device) -> list[str]:
    """Plans that ``cfg`` changes at the row counts not swept (OTHER_ROWS): what adopting it would also touch."""
    out = []
    for M in (m for m in OTHER_ROWS if m not in swept):
        for s in shapes:
            a, b = plan_of(M, s, {}, device), plan_of(M, s, cfg, device)
            if plan_key(a) != plan_key(b):
                out.append(f"{s} M={M}: {plan_str(a)} -> {plan_str(b)}")
    return out


def report(summary: dict, shapes: list[str], swept: list[int], device: torch.device) -> str:
    """The Markdown table of the best configuration per case against the default and cuBLAS, and the suggestion."""
    f = lambda v, p=4: "-" if v is None else f"{v:.{p}f}"  # noqa: E731
    lines = ["| case | default ms | best ms | best config | its plan | cuBLAS ms | best x_vs_cublas | default "
             "x_vs_cublas | best hbm_fraction |", "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for case, b in summary["best"].items():
        dflt = b["default_ms"]
        lines.append(f"| {case} | {f(dflt)} | {f(b['ms'])} | `{b['config']}` | {b['plan_str']} | {f(b['cublas_ms'])} "
                     f"| {f(b['x_vs_cublas'], 2)} | {f(b['cublas_ms'] / dflt if dflt else None, 2)} "
                     f"| {f(b['hbm_fraction'], 3)} |")  # fmt: skip
    name = summary["wins_everywhere"]
    if name:
        cfg = summary["suggested_override"]
        tail = " (the default already)" if not cfg else ""
        lines.append(f"\n`{name}` is within {summary['tolerance']:.0%} of the best on every case: suggested "
                     f"CUDA_CONFIG = {{**CUDA_CONFIG, **{cfg}}}{tail}")  # fmt: skip
    else:
        lines.append(f"\nNo configuration is within {summary['tolerance']:.0%} of the best on every case: per-case "
                     "best above.")  # fmt: skip
        name, cfg = summary["least_total"], summary["least_total_override"]
        if name:
            lines.append(f"Least summed ms over the cases (one CUDA_CONFIG for the step): `{name}` {cfg}, "
                         f"{f(summary['least_total_ms'])} ms against the default's "
                         f"{f(summary['default_total_ms'])}")  # fmt: skip
    if name and cfg:
        changed = other_rows_changed(cfg, shapes, swept, device)
        if changed:
            lines.append("It also changes the plans at rows not swept (time them, e.g. --rows 1,4, before adopting): "
                         + "; ".join(changed))  # fmt: skip
    return "\n".join(lines)


def estimate_s(counts: dict[tuple[str, int], int], rounds: int = 3, compiled: bool = True) -> float:
    """Rough seconds on an H200 for {(shape, M): distinct plans}: a compile each (unless --compile-only shards ran
    first) and ``rounds`` timings of GEMV_REPLAYS + 1 replays of a chain of calls of about 6 us."""
    secs = 0.0
    for (s, _), n in counts.items():
        N, K, _, _ = shape_of(s)
        copies = max(2, -(-bench_decode.GEMV_ROTATE_BYTES // (N * K * 2)))
        secs += n * ((EST_COMPILE_S if compiled else 0.05) + rounds * (bench_decode.GEMV_REPLAYS + 1) * copies * 6e-6)
    return secs


def estimate_line(grid: dict, counts: dict[tuple[str, int], int], rounds: int = 3) -> str:
    return (f"{len(grid)} configurations, {sum(counts.values())} distinct (shape, rows, plan) to compile and time: "
            f"about {estimate_s(counts, rounds):.0f} s on an H200 compiling here ({EST_COMPILE_S} s a compile), "
            f"{estimate_s(counts, rounds, False):.0f} s after --compile-only shards")  # fmt: skip


def dry_run(grid: dict[str, dict], shapes: list[str], rows_: list[int], sms: int) -> None:
    """Print the grid and the plan each configuration gives each shape (on the CPU, as a GPU of ``sms`` SMs with
    PDL would plan it), and the distinct plans to compile and time."""
    cpu = torch.device("cpu")
    counts: dict[tuple[str, int], int] = {}
    for M in rows_:
        print(f"\n## rows {M}: config | override | " + " | ".join(shapes))
        seen: dict[str, set] = {s: set() for s in shapes}
        for name, cfg in grid.items():
            ps = [plan_of(M, s, cfg, cpu, sms) for s in shapes]
            for s, p in zip(shapes, ps, strict=True):
                seen[s].add(plan_key(p))
            print(f"{name} | {cfg} | " + " | ".join(plan_str(p) for p in ps))
        counts.update({(s, M): len(seen[s]) for s in shapes})
        print(f"distinct plans at {M} rows: " + ", ".join(f"{s} {len(seen[s])}" for s in shapes))
    print("\n" + estimate_line(grid, counts))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", default="16", help="row counts (batch x tokens), comma-separated, e.g. 8,16")
    ap.add_argument("--shapes", default=",".join(DEFAULT_SHAPES), help=f"of {', '.join(SHAPES)}")
    ap.add_argument("--quick", action="store_true", help="a tiny grid (the script's check)")
    ap.add_argument("--dry-run", action="store_true", help="print the grid and each configuration's plans; no GPU")
    ap.add_argument("--sms", type=int, default=SM_COUNT, help="--dry-run: the GPU's SMs to plan for")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds (the median is kept)")
    ap.add_argument("--budget-s", type=float, default=230.0,
                    help="seconds for compiling and checking, shared among the cases; plans past a case's share are "
                    "skipped (reported)")  # fmt: skip
    ap.add_argument("--tol", type=float, default=0.01, help="within this fraction of the best counts as a win")
    ap.add_argument("--shard", default="0/1", help="I/K with --compile-only: every K-th plan from the I-th")
    ap.add_argument("--compile-only", action="store_true", help="launch each distinct plan once (fills Triton's cache)")
    ap.add_argument("--out", default=None, help="write every row as JSON here")
    args = ap.parse_args(argv)
    rows_ = [int(m) for m in args.rows.split(",")]
    shapes = args.shapes.split(",")
    bad = [s for s in shapes if s not in SHAPES] + [str(m) for m in rows_ if not 1 <= m <= gt.MAX_M]
    if bad:
        ap.error(f"unknown shapes or rows out of 1..{gt.MAX_M}: {bad}; shapes are {', '.join(SHAPES)}")
    if not args.dry_run and not torch.cuda.is_available():
        print("error: tune_gemv.py times CUDA graphs and needs a CUDA GPU (--dry-run lists the grid and plans without "
              "one)", file=sys.stderr)  # fmt: skip
        return 2
    grid = build_grid(args.quick, wide=max(rows_) >= gt.CUDA_CONFIG["WIDE_M"])
    keys = sorted({k for cfg in grid.values() for k in cfg})
    print(f"{len(grid)} configurations over {', '.join(keys)} at rows {rows_}, shapes {', '.join(shapes)}", flush=True)
    if args.dry_run:
        dry_run(grid, shapes, rows_, args.sms)
        return 0
    dev = torch.device("cuda", torch.cuda.current_device())
    counts = {(s, M): len({plan_key(plan_of(M, s, cfg, dev)) for cfg in grid.values()}) for M in rows_ for s in shapes}
    print(estimate_line(grid, counts, args.rounds), flush=True)
    if args.compile_only:
        shard, n_shards = map(int, args.shard.split("/"))
        j = 0
        for M in rows_:
            for s in shapes:
                case = Case(s, M, copies=1)
                firsts: dict[tuple, str] = {}
                for name, cfg in grid.items():
                    firsts.setdefault(plan_key(plan_of(M, s, cfg, dev)), name)
                for name in firsts.values():
                    if j % n_shards == shard:
                        t0 = time.perf_counter()
                        with overridden(grid[name]):
                            try:
                                case.kernel(case.ws[0])
                                torch.cuda.synchronize()
                                msg = "ok"
                            except Exception as e:  # the timing run reports it
                                msg = _error(e)
                        print(f"compiled {s} M={M} {name}: {msg} ({time.perf_counter() - t0:.1f} s)", flush=True)
                    j += 1
        return 0
    from archzoo.bench.common import measure_bandwidth

    bw = measure_bandwidth("cuda")
    out = Rows(args.out)
    import triton

    sms = torch.cuda.get_device_properties(dev).multi_processor_count
    out.record({"meta": True, "device": torch.cuda.get_device_name(dev), "sms": sms,
                "torch": torch.__version__, "triton": triton.__version__, "pdl": gt.pdl_enabled(dev),
                "bandwidth": bw, "cuda_config": gt.CUDA_CONFIG, "grid": grid, "rows": rows_, "shapes": shapes,
                "timing": f"bench_gemv's: CUDA graph of one call per weight copy "
                f"({bench_decode.GEMV_ROTATE_BYTES // 2**20} MiB of weights cycled), {bench_decode.GEMV_REPLAYS} "
                f"replays, CUDA events, median of {args.rounds} interleaved rounds"})  # fmt: skip
    end = time.monotonic() + args.budget_s
    cases = [(s, M) for M in rows_ for s in shapes]
    for i, (s, M) in enumerate(cases):
        t0 = time.perf_counter()
        deadline = time.monotonic() + (end - time.monotonic()) / (len(cases) - i)  # the budget left, shared
        for row in sweep_case(Case(s, M), grid, args.rounds, bw["bytes_per_s"], deadline):
            out.record(row)
        print(f"# {s} M={M}: {counts[s, M]} plans, {time.perf_counter() - t0:.0f} s", flush=True)
    summary = summarize(out.rows, args.tol)
    out.record({"summary": True, **summary})
    print(report(summary, shapes, rows_, dev))
    return 0


if __name__ == "__main__":
    sys.exit(main())
