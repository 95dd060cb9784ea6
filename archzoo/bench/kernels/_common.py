"""The kernel benchmark's shared measuring: the timers (do_bench and the host time per call on a GPU, the wall
clock on the CPU), implementations interleaved over rounds, forward and forward+backward of a set of implementations
(_fwd_fwdbwd), and the relative error and ratios that go in the rows."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def _peak_mib(fn: Callable[[], object]) -> float:
    """The peak memory one call allocates beyond what exists already (MiB); the first call compiles / warms up."""
    fn()
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def _time(fn: Callable[[], object], grad_to_none: list[torch.Tensor] | None = None) -> tuple[float, float]:
    """-> (median ms by do_bench, host ms per call)."""
    import triton.testing

    ms = triton.testing.do_bench(fn, warmup=25, rep=ROUND_MS, grad_to_none=grad_to_none, return_mode="median")
    # Host time: the wall time of issuing one call while the GPU runs behind (no synchronisation inside the
    # loop); where it exceeds the GPU time the call is host-bound and do_bench's figure is this one.
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(20):
        for t in grad_to_none or ():
            t.grad = None
        fn()
    host = (time.perf_counter() - t0) / 20 * 1e3
    torch.cuda.synchronize()
    return ms, host


ROUNDS = 5  # --rounds
ROUND_MS = 200  # do_bench's measuring time per call and round


def _time_cpu(fn: Callable[[], object], grad_to_none: list[torch.Tensor] | None = None) -> tuple[float, float]:
    """-> (ms of one call by the wall clock, the same as host ms): the CPU smoke run's timer (tiny shapes, where a
    time says only that the call ran)."""
    for t in grad_to_none or ():
        t.grad = None
    t0 = time.perf_counter()
    fn()
    ms = (time.perf_counter() - t0) * 1e3
    return ms, ms


def _interleaved(calls: dict, rounds: int, device: str = "cuda") -> dict:
    """Time each of ``calls`` ({key: (fn, grad_to_none)}) in turn, ``rounds`` times over (a, b, a, b, ...).

    Why: where a call is bound by the host (the scan's forward+backward at l=1k, the conv's at short l), its
    time follows the machine's CPU, which drifts over seconds (clock, other tenants): two implementations
    timed one after the other can differ by that drift alone. Interleaved, drift reaches both alike; each
    key gets the median of its rounds, and the rounds themselves are kept."""
    per = {k: ([], []) for k in calls}
    for _ in range(rounds):
        for k, (fn, grads) in calls.items():
            ms, host = (_time if device == "cuda" else _time_cpu)(fn, grads)
            per[k][0].append(ms)
            per[k][1].append(host)
    return {
        k: {"ms": statistics.median(m), "host_ms": statistics.median(h), "rounds_ms": m} for k, (m, h) in per.items()
    }


def _rel(x: torch.Tensor, ref: torch.Tensor) -> float:
    x, ref = x.double(), ref.double()
    return ((x - ref).pow(2).mean().sqrt() / ref.pow(2).mean().sqrt()).item()


def _fold(res: dict, timed: dict) -> None:
    """Put _interleaved's {(impl, "fwd" | "fwdbwd"): timing} into res[impl] as fwd_ms, fwd_host_ms, fwd_rounds_ms..."""
    for (name, mode), t in timed.items():
        res[name].update({f"{mode}_ms": t["ms"], f"{mode}_host_ms": t["host_ms"], f"{mode}_rounds_ms": t["rounds_ms"]})


def _error(e: BaseException) -> str:
    first = str(e).splitlines()[0][:200] if str(e) else ""
    return f"error ({type(e).__name__}: {first})"


def _fwd_fwdbwd(impls: dict[str, object], leaves: list[torch.Tensor], gout: torch.Tensor, rounds: int,
                device: str) -> tuple[dict, dict]:  # fmt: skip
    """Forward (no grad) and forward+backward (``fn().backward(gout)``, the leaves' gradients reset before each
    call) of each of ``impls`` ({name: fn() -> output, or a status string}), timed interleaved.

    -> ({name: row}, {name: forward output}). A row: status, fwd_ms / fwdbwd_ms (+ host ms and the rounds, as
    _fold puts them) and, on a GPU, the peak extra MiB of one call. An implementation that fails is reported
    ("error (...)"), as is a backward that fails (``fwdbwd_status``, its forward still timed), never raised."""
    res: dict[str, dict] = {}
    outs: dict[str, torch.Tensor] = {}
    calls: dict[tuple[str, str], tuple] = {}
    for name, fn in impls.items():
        if isinstance(fn, str):
            res[name] = {"status": fn}
            continue

        def fwd(fn=fn) -> torch.Tensor:
            with torch.no_grad():
                return fn()

        def fb(fn=fn) -> None:
            fn().backward(gout)

        try:
            outs[name] = fwd()  # compile / warm up
        except Exception as e:  # a peer whose API differs in this version, out of memory: report it, go on
            res[name] = {"status": _error(e)}
            continue
        row = res[name] = {"status": "ok"}
        calls[name, "fwd"] = (fwd, None)
        try:
            fb()
            calls[name, "fwdbwd"] = (fb, leaves)
        except Exception as e:
            row["fwdbwd_status"] = _error(e)
        for t in leaves:
            t.grad = None
        if device == "cuda":
            row["fwd_peak_mib"] = _peak_mib(fwd)
            row["fwdbwd_peak_mib"] = _peak_mib(fb) if (name, "fwdbwd") in calls else None
            torch.cuda.empty_cache()
    _fold(res, _interleaved(calls, rounds, device))
    return res, outs


def _ratio(num: dict, den: dict, key: str) -> float | None:
    ok = num.get("status") == "ok" and den.get("status") == "ok" and key in num and key in den
    return num[key] / den[key] if ok else None
