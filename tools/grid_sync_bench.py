"""What a grid-wide barrier costs inside one persistent Triton kernel, against what a kernel boundary costs in a
CUDA graph, with and without PDL: the number a persistent decode kernel (issue 18, item 4) stands on.

A persistent decode kernel runs a step's stages (per layer: Q|K|V, attention, O, gate|up, down) in one launch,
its programs meeting at a grid-wide barrier wherever a stage reads what the one before wrote: five a layer, 150 a
step of the teacher. Today each stage is a launch in a captured step, PDL overlapping a kernel's weight loads with
the tail of the one before (docs/decode.md: "What a persistent kernel would have to beat"). A persistent kernel
pays off only if its barrier costs less than the boundary it replaces, so this measures both, in one process:

- ``barrier``: one launch of P programs that meet ``n`` times. A stage's work is one value a program, read from
  where another program wrote it at the stage before (so a barrier that let a program through early would read a
  stale value: ``check`` says so). The barrier: every thread's stores done (``tl.debug_barrier``), an arrival
  (``atomic_add`` of 1, release, GPU scope) on a counter that only grows, then a wait until it reaches P x the
  barriers passed, polling with acquire atomics (``poll="atomic"``) or volatile loads then one acquire
  (``poll="load"``). A wait gives up after ``MAX_SPIN`` polls and sets a flag, so a grid whose programs are not all
  resident at once (more than the GPU holds) is reported, not hung.
- ``launches``: a CUDA graph of ``n`` launches of the same stage as its own kernel (P programs, each reading what
  another wrote at the launch before), plain or with PDL (``gdc_wait`` first, ``gdc_launch_dependents`` after it).

Per barrier or per launch: (time(n) - time(0)) / n over graph replays. ``python tools/grid_sync_bench.py
[--programs 33,66,132,264] [--syncs 600]``; GPU only (a CPU run checks the kernels under Triton's interpreter with
one program, which a barrier cannot stall: tests/tools/test_grid_sync_bench.py).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch
import triton
import triton.language as tl
from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait  # Triton 3.4+, as archzoo's PDL

MAX_SPIN = 1 << 20  # polls before a wait gives up (far beyond any barrier that can complete: about 1 s)


@triton.jit
def grid_arrive(counter_ptr):
    """This program's arrival at a grid-wide barrier: its threads' stores issued, then made visible (a release) with
    the counter's increment. Between ``grid_arrive`` and ``grid_wait`` a program may read what no program writes in
    the meantime (the weights), so those loads overlap the others' arrivals without delaying this one's fence."""
    tl.debug_barrier()  # this program's threads have issued their stores
    tl.atomic_add(counter_ptr, 1, sem="release", scope="gpu")  # ... and they are visible before the arrival


@triton.jit
def grid_wait(counter_ptr, target, flag_ptr, POLL_LOAD: tl.constexpr, MAX_SPIN: tl.constexpr):
    """Wait until every program of the grid has arrived ``target`` / num_programs times in all (the counter only
    grows, so no reset between barriers). Returns whether it did: a wait that polls MAX_SPIN times sets ``flag``
    and returns False, and its program stops (the others then give up at their next barrier: seconds, not a hang)."""
    spins = 0
    if POLL_LOAD:
        seen = tl.load(counter_ptr, volatile=True)
        while (seen < target) & (spins < MAX_SPIN):
            seen = tl.load(counter_ptr, volatile=True)
            spins += 1
        seen = tl.atomic_add(counter_ptr, 0, sem="acquire", scope="gpu")  # the others' stores, seen after this
    else:
        seen = tl.atomic_add(counter_ptr, 0, sem="acquire", scope="gpu")
        while (seen < target) & (spins < MAX_SPIN):
            seen = tl.atomic_add(counter_ptr, 0, sem="acquire", scope="gpu")
            spins += 1
    if seen < target:
        tl.store(flag_ptr, 1)
    tl.debug_barrier()
    return seen >= target


@triton.jit
def grid_sync(counter_ptr, target, flag_ptr, POLL_LOAD: tl.constexpr, MAX_SPIN: tl.constexpr):
    """A grid-wide barrier: ``grid_arrive`` then ``grid_wait`` (see there)."""
    grid_arrive(counter_ptr)
    return grid_wait(counter_ptr, target, flag_ptr, POLL_LOAD, MAX_SPIN)


@triton.jit
def _stage(buf_ptr, pid, nprog, s):
    """A stage's work: read the value the next program wrote at stage s - 1 (buffer s % 2), write s + pid + that
    value's low bit into this program's slot of the other buffer; ``check`` recomputes the last stage's values."""
    src = buf_ptr + (s % 2) * nprog + (pid + 1) % nprog
    v = tl.load(src, volatile=True)
    tl.store(buf_ptr + ((s + 1) % 2) * nprog + pid, s + pid + (v & 1))


@triton.jit
def _barrier_kernel(buf_ptr, counter_ptr, flag_ptr, n_syncs, POLL_LOAD: tl.constexpr, MAX_SPIN: tl.constexpr):
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    alive = pid >= 0
    for s in range(0, n_syncs):
        if alive:
            _stage(buf_ptr, pid, nprog, s)
            alive = grid_sync(counter_ptr, (s + 1) * nprog, flag_ptr, POLL_LOAD, MAX_SPIN)


@triton.jit
def _launch_kernel(buf_ptr, s, PDL: tl.constexpr):
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    if PDL:
        gdc_wait()  # the launch before has finished and its stores are visible
        gdc_launch_dependents()
    _stage(buf_ptr, pid, nprog, s)


def expected(nprog: int, n: int) -> torch.Tensor:
    """The buffer ``_stage`` leaves after n stages from zeros (both halves, int32), computed on the host."""
    buf = torch.zeros(2, nprog, dtype=torch.int64)
    for s in range(n):
        src = buf[s % 2]
        buf[(s + 1) % 2] = s + torch.arange(nprog) + (src.roll(-1) & 1)
    return buf.reshape(-1).to(torch.int32)


def run_barrier(
    nprog: int, n: int, poll_load: bool, device, max_spin: int = MAX_SPIN
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One launch of ``_barrier_kernel``: (buffer, counter, flag) after it."""
    buf = torch.zeros(2 * nprog, dtype=torch.int32, device=device)
    counter = torch.zeros(1, dtype=torch.int32, device=device)
    flag = torch.zeros(1, dtype=torch.int32, device=device)
    _barrier_kernel[(nprog,)](buf, counter, flag, n, POLL_LOAD=poll_load, MAX_SPIN=max_spin, num_warps=4)
    return buf, counter, flag


def run_launches(nprog: int, n: int, pdl: bool, device) -> torch.Tensor:
    """n launches of ``_launch_kernel``: the buffer after them."""
    buf = torch.zeros(2 * nprog, dtype=torch.int32, device=device)
    for s in range(n):
        _launch_kernel[(nprog,)](buf, s, PDL=pdl, num_warps=4, launch_pdl=pdl)
    return buf


def graph_ms(fn) -> float:
    """Median ms of ``fn`` replayed in a CUDA graph (``triton.testing.do_bench_cudagraph``: about 20 ms of calls
    unrolled in one graph, ten replays)."""
    import triton.testing

    return triton.testing.do_bench_cudagraph(fn, rep=20, return_mode="median")


def measure(nprog: int, n: int, device) -> dict:
    """us per barrier (two polls) and per launch (plain, PDL) at ``nprog`` programs, and whether each was right."""
    row = {"programs": nprog, "syncs": n}
    want = expected(nprog, n).to(device)
    for name, poll_load in (("barrier_atomic_poll", False), ("barrier_load_poll", True)):
        buf, counter, flag = run_barrier(nprog, n, poll_load, device)
        stalled = bool(flag.item())
        row[f"{name}_ok"] = bool(torch.equal(buf, want)) and int(counter.item()) == nprog * n and not stalled
        if stalled:  # not every program was resident: a persistent kernel cannot use this grid
            row[f"{name}_us"] = None
            continue
        per = [graph_ms(lambda k=k, pl=poll_load: run_barrier(nprog, k, pl, device)) for k in (0, n)]
        row[f"{name}_us"] = round((per[1] - per[0]) * 1e3 / n, 3)
    for name, pdl in (("launch", False), ("launch_pdl", True)):
        row[f"{name}_ok"] = bool(torch.equal(run_launches(nprog, n, pdl, device), want))
        per = [graph_ms(lambda k=k, p=pdl: run_launches(nprog, k, p, device)) for k in (1, n + 1)]
        row[f"{name}_us"] = round((per[1] - per[0]) * 1e3 / n, 3)
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--programs", default="", help="comma-separated program counts (default: SMs / 4, / 2, x1, x2)")
    p.add_argument("--syncs", type=int, default=600, help="barriers / launches a measurement (default 600)")
    p.add_argument("--out", default=None, help="also write the rows as JSON here")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("grid_sync_bench: needs a CUDA device (tests/tools/test_grid_sync_bench.py checks the kernels on CPU)")
        return 2
    dev = torch.device("cuda")
    sms = torch.cuda.get_device_properties(dev).multi_processor_count
    counts = [int(c) for c in args.programs.split(",") if c] or [max(1, sms // 4), max(1, sms // 2), sms, 2 * sms]
    name = torch.cuda.get_device_name(dev)
    print(f"device: {name} ({sms} SMs); torch {torch.__version__}; triton {triton.__version__}")
    print(
        "| programs | barrier, atomic poll (us) | barrier, load poll (us) | launch in a graph (us) | launch, PDL (us) "
        "| all right |"
    )
    print("|--:|--:|--:|--:|--:|---|")
    rows = []
    for c in counts:
        r = measure(c, args.syncs, dev)
        rows.append(r)
        ok = all(v for k, v in r.items() if k.endswith("_ok"))
        cells = [r[f"{k}_us"] if r[f"{k}_us"] is not None else "stalled" for k in
                 ("barrier_atomic_poll", "barrier_load_poll", "launch", "launch_pdl")]  # fmt: skip
        print(f"| {c} | {' | '.join(str(x) for x in cells)} | {'yes' if ok else 'NO'} |")
        sys.stdout.flush()
    if args.out:
        tmp = args.out + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(dev), "sms": sms, "rows": rows}, f, indent=1)
        os.replace(tmp, args.out)
    return 0 if all(all(v for k, v in r.items() if k.endswith("_ok")) for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
