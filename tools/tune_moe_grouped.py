"""Sweep ``archzoo.kernels.moe_grouped_experts``' tiles (issue 19's MoE shape: 4,096 tokens, d_model 576, d_ff 1,536,
8 experts, top-2, bf16) one kernel at a time, each timed in CUDA graphs beside the default, with the dense SwiGLU of
the same active FLOPs (hidden 3,072) in the same process: which tiles to put in ``CUDA_CONFIG`` (triton.py for the
forward's, backward.py for the backward's).

    python tools/tune_moe_grouped.py [--tokens 4096] [--out moe_grouped_tune.json]
    python tools/tune_moe_grouped.py --compile-only --shard 0/8   # fill Triton's cache in parallel first
    TRITON_INTERPRET=1 python tools/tune_moe_grouped.py --device cpu --quick   # checks this script only

Each row varies one kernel's tiles (``group``) from the defaults: the forward's groups (``BLOCK_M``, ``gate_up``,
``down``) are timed on the forward with ``save=True`` (what training runs), the backward's (``dh``, ``dx``, ``dwd``,
``dwgu``) on the backward alone from one saved forward. ``BLOCK_M`` changes the plan, so its rows time both. The
``persistent`` group (the gate-up kernel on a fixed grid walking tiles), the ``one_dot`` group (gate and up as one
operand of one tl.dot a K step), the ``hw_round`` group (the epilogues' roundings by conversion), the ``plan`` group
(assignments a plan program), the ``pdl`` group (programmatic dependent launch) and the default are also timed without
``save`` (``infer_ms``, ``infer_vs_default``: inference, prefill), and so is the ``sorted_dw`` group (the weight
gradients on sorted copies of x and dout: a backward switch, its forward the default's). The backward's switches
``dh_prefetch`` (dh's epilogue loads before its K loop), ``dh_split`` (dh's programs on part of a plan block) and
``streams`` (the down weight gradient, and dx, on a second stream), and ``bwd_combo`` (three backward tiles that won
alone, together) time the backward. ``--groups hw_round,pdl`` sweeps only those. Last, a kernel-by-kernel profile
of the default forward + backward (what each launch takes), and the dense peer.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _tuning import Rows, add_common_args, check_device  # noqa: E402  (this folder is on sys.path)

# Candidate tiles (rows of output x K step, warps, stages). Each group's list starts with its shipped default (checked
# at start); the GEMMs over d_model (gate|up, dh) and those producing d_model columns (down, dx) share their lists.
_OVER_D = [(64, 64, 8, 3), (128, 64, 8, 3), (64, 128, 8, 3), (128, 32, 8, 4), (64, 64, 4, 3), (128, 64, 4, 4),
           (64, 32, 4, 4), (128, 128, 8, 2), (32, 64, 4, 3), (64, 64, 8, 4)]  # fmt: skip
_TO_D = [(64, 64, 8, 3), (64, 128, 8, 3), (128, 64, 8, 3), (32, 64, 4, 4), (64, 64, 4, 3), (64, 128, 4, 3),
         (128, 128, 8, 2), (32, 128, 4, 3), (64, 32, 4, 4), (192, 64, 8, 3)]  # fmt: skip
_WEIGHTS = [(64, 128, 4, 3), (128, 64, 8, 3), (64, 64, 4, 3), (128, 128, 8, 3), (64, 128, 8, 3), (128, 128, 8, 2),
            (64, 64, 4, 4), (32, 128, 4, 3), (128, 64, 4, 3), (256, 64, 8, 3), (128, 32, 4, 4)]  # fmt: skip


def _first(default: tuple, tiles: list) -> list:
    return [default, *(t for t in tiles if t != default)]


GROUPS = {
    "gate_up": (("BLOCK_N", "BLOCK_K", "num_warps", "num_stages"), _OVER_D),
    "down": (("DOWN_BLOCK_N", "DOWN_BLOCK_K", "DOWN_WARPS", "DOWN_STAGES"), _TO_D),
    "dh": (("DH_BLOCK_N", "DH_BLOCK_K", "DH_WARPS", "DH_STAGES"), _first((64, 64, 8, 4), _OVER_D)),
    "dx": (("DX_BLOCK_N", "DX_BLOCK_K", "DX_WARPS", "DX_STAGES"), _first((128, 64, 8, 3), _TO_D)),
    "dwd": (("DWD_BLOCK_P", "DWD_BLOCK_Q", "DWD_WARPS", "DWD_STAGES"), _first((64, 128, 4, 3), _WEIGHTS)),
    "dwgu": (("DWGU_BLOCK_P", "DWGU_BLOCK_Q", "DWGU_WARPS", "DWGU_STAGES"), _first((128, 128, 8, 2), _WEIGHTS)),
    "BLOCK_M": (("BLOCK_M",), [(128,), (64,)]),
    # the gate-up kernel on a fixed grid of k programs an SM, the K loop flattened across tiles or not: the forward
    # timed with save (fwd_ms) and without (infer_ms), beside the default's
    "persistent": (("PERSISTENT", "FLATTEN"), [(0, 1), (1, 1), (2, 1), (1, 0)]),
    # the gate and up tiles as one operand, one tl.dot a K step (64 x 2 BLOCK_N x 16 MMAs; x's tile read once),
    # with and without save, beside the default's
    "one_dot": (
        ("ONE_DOT", "BLOCK_N", "num_warps", "num_stages"),
        [(0, 64, 8, 3), (1, 64, 8, 3), (1, 32, 8, 3), (1, 64, 4, 3), (1, 64, 8, 4), (1, 128, 8, 3)],
    ),
}
# the plan's assignments a program (its count and place launches: 9 programs each at 1,024, 36 at 256), every GEMM the
# same (its tiles do not change)
GROUPS["plan"] = (("PLAN_BLOCK",), [(512,), (1024,), (256,), (128,)])
# the weight gradients reading x's and dout's rows copied in sorted order (one launch) instead of gathering them
GROUPS["sorted_dw"] = (("SORTED_DW",), [(0,), (1,)])
# every launch of the forward / backward with programmatic dependent launch (``_pdl.py``)
GROUPS["pdl"] = (("PDL", "BWD_PDL"), [(0, 0), (1, 0), (0, 1), (1, 1)])
# the gate|up's and dh's epilogue roundings by conversion (one cvt each way) instead of by bits (five integer ops)
GROUPS["hw_round"] = (("HW_ROUND", "DH_HW_ROUND"), [(1, 0), (0, 0), (1, 1), (0, 1)])
# the backward tiles that won alone in two sweeps (dx 128 columns 0.961x, dwgu 128 x 128 in 2 stages 0.964x, dh 4
# stages 0.981x the backward; moe_grouped_tune_h100_2026-12-07h / j), together and in pairs
GROUPS["bwd_combo"] = (
    ("DX_BLOCK_N", "DWGU_BLOCK_Q", "DWGU_STAGES", "DH_STAGES"),
    [(128, 128, 2, 4), (64, 64, 3, 3), (128, 128, 2, 3), (128, 64, 3, 4), (64, 128, 2, 4)],
)
# dh's epilogue loads (g, u, the routing weights) issued before its K loop, alone and with 4 stages (bwd_combo's dh)
GROUPS["dh_prefetch"] = (("DH_PREFETCH", "DH_STAGES"), [(0, 4), (1, 4), (1, 3), (0, 3)])
# dh's programs on half a plan block's rows (the default since the twenty-sixth session), a whole block, a quarter,
# 4 warps (two programs an SM), the epilogue's loads before the K loop
GROUPS["dh_split"] = (
    ("DH_SPLIT", "DH_WARPS", "DH_STAGES", "DH_PREFETCH"),
    [(2, 8, 4, 0), (1, 8, 4, 0), (2, 4, 3, 0), (2, 4, 4, 0), (2, 8, 4, 1), (4, 4, 3, 0)],
)
# the backward's down weight gradient (and at 2, dx) on a second stream, beside dh (and the gate|up weight gradient)
GROUPS["streams"] = (("BWD_STREAMS",), [(2,), (0,), (1,)])
# on top of bwd_combo's tiles, the switches that won alone there: dh on half a block (0.93x), the second stream
# (0.95x), the sorted weight-gradient rows (0.99x); the first two together the default since (0.885x, H100)
GROUPS["stack"] = (
    ("DH_SPLIT", "DH_WARPS", "DH_STAGES", "BWD_STREAMS", "SORTED_DW"),
    [(2, 8, 4, 2, 0), (1, 8, 4, 0, 0), (2, 8, 4, 0, 0), (1, 8, 4, 2, 0), (2, 4, 3, 2, 0), (2, 8, 4, 2, 1)],
)  # fmt: skip
FORWARD_GROUPS = ("gate_up", "down", "BLOCK_M")
# also timed without save
INFER_GROUPS = ("default", "persistent", "one_dot", "hw_round", "plan", "pdl", "sorted_dw")


def configs(quick: bool, groups: str | None = None) -> list[tuple[str, dict]]:
    """("default", {}) then every group's candidates past its first (the default); ``groups``: a comma list of the
    groups to take (all if None)."""
    out = [("default", {})]
    for group, (keys, tuples) in GROUPS.items():
        if groups and group not in groups.split(","):
            continue
        for t in tuples[1 : 3 if quick else None]:
            out.append((group, dict(zip(keys, t, strict=True))))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(ap)
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--quick", action="store_true", help="two candidates a group (a smoke test)")
    ap.add_argument("--groups", default=None, help=f"comma list of groups to sweep (default all: {', '.join(GROUPS)})")
    a = ap.parse_args()
    check_device(a.device)
    import torch
    import torch.nn.functional as F_

    from archzoo.kernels.moe_grouped import backward as B
    from archzoo.kernels.moe_grouped import triton as T

    if a.groups and set(a.groups.split(",")) - set(GROUPS):
        raise SystemExit(f"--groups: unknown {sorted(set(a.groups.split(',')) - set(GROUPS))}; known: {list(GROUPS)}")
    conf = {**T.CUDA_CONFIG, **B.CUDA_CONFIG}
    for group, (keys, tuples) in GROUPS.items():  # the first candidate of a group is the shipped default
        if a.device == "cuda" and tuple(conf[k] for k in keys) != tuples[0]:
            print(f"note: {group}'s default is {tuple(conf[k] for k in keys)}, not {tuples[0]}")
    dev, dt = torch.device(a.device), torch.bfloat16 if a.device == "cuda" else torch.float32
    N, D, Fd, E, K = (a.tokens, 576, 1536, 8, 2) if not a.quick or a.device == "cuda" else (37, 24, 40, 4, 2)
    g = torch.Generator(device="cpu").manual_seed(0)

    def rnd(*shape, s=1.0):
        return (torch.randn(*shape, generator=g) * s).to(dev, dt)

    x, gate_w, up_w, down_w = rnd(N, D), rnd(E, Fd, D, s=D**-0.5), rnd(E, Fd, D, s=D**-0.5), rnd(E, D, Fd, s=Fd**-0.5)
    probs = torch.randn(N, E, generator=g).softmax(-1)
    top_p, top_e = probs.topk(K, dim=-1)
    top_w, top_e = (top_p / top_p.sum(-1, keepdim=True)).to(dev, dt), top_e.to(dev)
    dout = rnd(N, D)

    def bench(fn) -> float:
        if a.compile_only:
            fn()
            return 0.0
        if a.device != "cuda":
            fn()
            return float("nan")
        import triton.testing

        fn()  # compiled before the capture
        torch.cuda.synchronize()
        return triton.testing.do_bench_cudagraph(fn, rep=a.rep, return_mode="median")

    rows = Rows(a.out)
    shard, n_shards = (int(v) for v in a.shard.split("/"))
    base_fwd = base_bwd = base_inf = None
    for i, (group, over) in enumerate(configs(a.quick, a.groups)):
        if i % n_shards != shard and not (i == 0 and not a.compile_only):
            continue
        T.CONFIG_OVERRIDE.clear(), B.CONFIG_OVERRIDE.clear()
        for k, v in over.items():
            (T.CONFIG_OVERRIDE if k in T.CUDA_CONFIG else B.CONFIG_OVERRIDE)[k] = v
        try:
            saved = T.moe_grouped_experts(x, gate_w, up_w, down_w, top_e, top_w, save=True)
            fwd = bwd = inf = None
            if group in INFER_GROUPS:
                inf = bench(lambda: T.moe_grouped_experts(x, gate_w, up_w, down_w, top_e, top_w))
            if group in (*FORWARD_GROUPS, *INFER_GROUPS):
                fwd = bench(lambda: T.moe_grouped_experts(x, gate_w, up_w, down_w, top_e, top_w, save=True))
            if group not in (*FORWARD_GROUPS, "persistent", "one_dot") or group == "BLOCK_M":  # tma*: all three
                bwd = bench(lambda: B.moe_grouped_experts_backward(dout, x, gate_w, up_w, down_w, top_w, *saved[1:]))  # noqa: B023
        except Exception as e:  # a tile the compiler refuses (shared memory): its row says so, the sweep goes on
            rows.record(dict(group=group, config=over, error=f"{type(e).__name__}: {str(e)[:160]}"))
            continue
        if group == "default":
            base_fwd, base_bwd, base_inf = fwd, bwd, inf
        row = dict(group=group, config=over, fwd_ms=None if fwd is None else round(fwd, 4),
                   bwd_ms=None if bwd is None else round(bwd, 4))  # fmt: skip
        if inf is not None:
            row["infer_ms"] = round(inf, 4)
        if not a.compile_only:
            if fwd is not None and base_fwd:
                row["fwd_vs_default"] = round(fwd / base_fwd, 3)
            if bwd is not None and base_bwd:
                row["bwd_vs_default"] = round(bwd / base_bwd, 3)
            if inf is not None and base_inf:
                row["infer_vs_default"] = round(inf / base_inf, 3)
        rows.record(row)
    T.CONFIG_OVERRIDE.clear(), B.CONFIG_OVERRIDE.clear()
    if a.compile_only or a.device != "cuda":
        return

    # the peer: a dense SwiGLU of hidden K x d_ff, forward and forward + backward (eager; bench kernels has graphs)
    w1, w3 = (rnd(K * Fd, D, s=D**-0.5).requires_grad_() for _ in range(2))
    w2 = rnd(D, K * Fd, s=(K * Fd) ** -0.5).requires_grad_()
    xg = x.detach().clone().requires_grad_()

    def dense():
        return F_.linear(F_.silu(F_.linear(xg, w1)) * F_.linear(xg, w3), w2)

    import triton.testing

    with torch.no_grad():
        d_fwd = triton.testing.do_bench(dense, rep=a.rep, return_mode="median")
    d_fb = triton.testing.do_bench(lambda: dense().backward(dout), rep=a.rep, return_mode="median",
                                   grad_to_none=[xg, w1, w2, w3])  # fmt: skip
    rows.record(dict(group="dense_swiglu_eager", fwd_ms=round(d_fwd, 4), fwd_bwd_ms=round(d_fb, 4)))

    # what each launch of the default forward + backward takes
    from torch.profiler import ProfilerActivity, profile

    saved = T.moe_grouped_experts(x, gate_w, up_w, down_w, top_e, top_w, save=True)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(10):
            s = T.moe_grouped_experts(x, gate_w, up_w, down_w, top_e, top_w, save=True)
            B.moe_grouped_experts_backward(dout, x, gate_w, up_w, down_w, top_w, *s[1:])
        torch.cuda.synchronize()
    per = {}
    for ev in prof.key_averages():
        if ev.device_type.name == "CUDA" and ev.count:
            per[ev.key] = round(ev.device_time_total / 10 / 1000, 4)  # ms per forward + backward
    rows.record(dict(group="profile_default_ms", kernels=dict(sorted(per.items(), key=lambda kv: -kv[1]))))


if __name__ == "__main__":
    main()
