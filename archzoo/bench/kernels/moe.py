"""Issue 19's MoE layer, grouped-GEMM dispatch and per-expert loop, against a dense SwiGLU of the same active FLOPs,
forward and forward+backward (without a GPU at tiny shapes)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ...generation import allow_recompiles
from ..common import OpCounter
from ._common import _error, _fwd_fwdbwd, _interleaved, _ratio, _rel

MOE_TARGET = 1.3  # issue 19: grouped ms / dense ms at most this, forward and forward+backward
# Dense bf16 tensor-core peak (SXM, no sparsity) by a part of the device's name; bf16_peak_fraction is left out
# for devices not listed here.
BF16_PEAK_FLOPS = {"H100": 989e12, "H200": 989e12}


def _bf16_peak(device: str) -> float | None:
    if device != "cuda":
        return None
    name = torch.cuda.get_device_name()
    return next((v for k, v in BF16_PEAK_FLOPS.items() if k in name), None)


def bench_moe(rounds: int, device: str = "cuda", n_tokens: int = 4096, d_model: int = 576, d_ff: int = 1536,
              n_experts: int = 8, top_k: int = 2) -> dict:  # fmt: skip
    """The MoE layer (``layers/moe.py``; MoEConfig's defaults otherwise: capacity factor 1.25, in train mode, so
    capacity limits act as in training) on ``n_tokens`` tokens, bf16, forward (no grad) and forward+backward
    (``out.backward(dout)``; the balance and z losses are not backpropagated), with its grouped-GEMM dispatch
    and with its per-expert loop (``archzoo.layers.moe.DISPATCH`` set to "grouped" / "loop" around each call and
    restored; ``MoE.last_dispatch`` recorded), against a dense SwiGLU of hidden ``top_k * d_ff`` (one SwiGLU
    with the active FLOPs of the top_k experts, not top_k SwiGLUs). Each row: ``over_dense_fwd`` /
    ``_fwdbwd`` = its ms / the dense ms (issue 19: grouped <= 1.3), and ``bf16_peak_fraction_*``: the dense
    layer's FLOPs (2 x 3 GEMMs x tokens x d_model x top_k * d_ff forward, 3x that forward+backward; the MoE's
    router and dropped assignments not counted) / time / the device's dense bf16 peak. Without the DISPATCH
    switch in ``layers/moe.py`` the loop (the layer's only path) runs and grouped is 'unavailable'.

    Also in the eager rows: ``aten_ops_fwd`` / ``_fwdbwd``, the ATen ops one call dispatches (eagerly ~10-20 us
    of host time each, most of them a kernel launch: the grouped layer is launch-bound at this size). On CUDA: the
    grouped layer and the dense one compiled (``*_compiled``, fullgraph=True, so a graph break fails the row instead
    of running eager Python between graphs; ``over_dense_compiled_*``) and compiled with mode="reduce-overhead"
    (``*_cudagraphs``: CUDA graphs, the host's launch cost gone; ``over_dense_cudagraphs_*``), and ``host_syncs`` in
    the two eager MoE rows: what torch's sync debug mode reports over one forward+backward ("none" for grouped; the
    loop reads the experts' loads on the host). Also on CUDA: the grouped layer eager, compiled and in CUDA graphs
    again with the counting sort (``archzoo_grouped_count*``, ``archzoo.layers.moe.ROUTE="count"``; the other
    compiled and graphed rows take the stable sort, which ``ROUTE="auto"`` takes only eagerly), with gate and up as
    one grouped GEMM too (``archzoo_grouped_count_gu_*``, ``GATE_UP="fused"``); the capacity-padded dispatch
    (``archzoo_padded`` everywhere, ``archzoo_padded_count_*`` compiled and graphed on CUDA: ``DISPATCH="padded"``,
    each expert's kept rows in a slab of ``capacity`` rows, one ``torch.bmm`` per projection); and in the compiled
    rows ``kernels_fwdbwd``: torch.profiler's count of one forward+backward's kernels (device us, launches, the top
    kernels by device time; its error instead, should the profiler fail), which says where the time over the dense
    layer's goes."""
    from ...layers import moe as moe_mod
    from ...layers.mlp import SwiGLU
    from ...layers.moe import MoE, MoEConfig

    torch.manual_seed(0)
    layer = MoE.from_config(MoEConfig(n_experts=n_experts, top_k=top_k, d_ff=d_ff), d_model)
    layer = layer.to(device=device, dtype=torch.bfloat16).train()
    dense = SwiGLU(d_model, top_k * d_ff).to(device=device, dtype=torch.bfloat16).train()
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(n_tokens, d_model, device=device, generator=g).to(torch.bfloat16).requires_grad_()
    dout = torch.randn(n_tokens, d_model, device=device, generator=g).to(torch.bfloat16)
    has_switch = hasattr(moe_mod, "DISPATCH")

    no_switch = "unavailable (archzoo.layers.moe has no DISPATCH switch yet)"
    dname = f"dense_swiglu_{top_k * d_ff}"
    impls: dict[str, object] = {
        "archzoo_grouped": _dispatched(moe_mod, layer, x, "grouped") if has_switch else no_switch,
        "archzoo_loop": _dispatched(moe_mod, layer, x, "loop") if has_switch else (lambda: layer(x)),
        dname: lambda: dense(x),
    }
    if "padded" in getattr(moe_mod, "DISPATCHES", ()):  # capacity-padded slabs, one bmm per projection
        impls["archzoo_padded"] = _dispatched(moe_mod, layer, x, "padded")
    if "fused" in getattr(moe_mod, "DISPATCHES", ()):  # the layer with its experts through moe_grouped_experts
        impls["archzoo_fused"] = _dispatched(moe_mod, layer, x, "fused")
    # The routed experts fused in Triton (archzoo.kernels.moe_grouped_experts; forward only, no backward yet, so its
    # forward+backward is reported as an error), routed as the layer routes; dropless (no capacity), so it does the
    # layer's eval-mode work: every assignment, where the train-mode rows above drop those over capacity.
    fused = _fused_experts(layer, x)
    impls["archzoo_fused_experts"] = fused
    # The same with the routing and the plan's count in one launch (archzoo.kernels.moe_route), whose counts spare
    # the plan its count launch
    routed = _fused_experts(layer, x, routed=True)
    impls["archzoo_fused_routed"] = routed
    leaves = [x, *layer.parameters(), *dense.parameters()]
    if torch.device(device).type == "cuda":
        graphed_fused = torch.compile(fused, mode="reduce-overhead", fullgraph=True)
        impls["archzoo_fused_experts_cudagraphs"] = _graph_step(graphed_fused, leaves)
        graphed_routed = torch.compile(routed, mode="reduce-overhead", fullgraph=True)
        impls["archzoo_fused_routed_cudagraphs"] = _graph_step(graphed_routed, leaves)
    if has_switch and torch.device(device).type == "cuda":
        # Every (DISPATCH, ROUTE, GATE_UP, grad mode) the rows below run is one more compiled entry of MoE.forward;
        # past dynamo's default 8 the rest failed with FailOnRecompileLimitHit (fullgraph=True; H100, 2026-12-06).
        allow_recompiles()
        # As training with speed.compile runs it: the layer compiled whole (routing, sort, capacity, losses fused
        # into few kernels; fullgraph=True, so a graph break is an error in the row, not eager Python between
        # graphs), beside the dense SwiGLU compiled the same way.
        compiled_layer, compiled_dense = torch.compile(layer, fullgraph=True), torch.compile(dense, fullgraph=True)
        # the compiled and graphed rows take the stable sort (ROUTE="auto" would count there), the *_count rows count
        impls["archzoo_grouped_compiled"] = _dispatched(moe_mod, compiled_layer, x, "grouped", route="sort")
        impls[f"{dname}_compiled"] = lambda: compiled_dense(x)
        # Both again in CUDA graphs (mode="reduce-overhead"): one replay per graph, so launches cost the host nothing.
        # Each call starts a new step (cudagraph_mark_step_begin) and drops the leaves' gradients first, as
        # zero_grad(set_to_none=True) does, so no gradient from an earlier replay is alive when the graph reruns.
        graphed_layer = torch.compile(layer, mode="reduce-overhead", fullgraph=True)
        graphed_dense = torch.compile(dense, mode="reduce-overhead", fullgraph=True)
        impls["archzoo_grouped_cudagraphs"] = _graph_step(
            _dispatched(moe_mod, graphed_layer, x, "grouped", route="sort"), leaves
        )
        impls[f"{dname}_cudagraphs"] = _graph_step(lambda: graphed_dense(x), leaves)
        # The counting sort (ROUTE="count") beside the stable torch.sort: eager, compiled and in graphs.
        impls["archzoo_grouped_count"] = _dispatched(moe_mod, layer, x, "grouped", route="count")
        for name, fn in (("compiled", compiled_layer), ("cudagraphs", graphed_layer)):
            call = _dispatched(moe_mod, fn, x, "grouped", route="count")
            impls[f"archzoo_grouped_count_{name}"] = _graph_step(call, leaves) if name == "cudagraphs" else call
            # and gate and up as one grouped GEMM of N = 2 d_ff (GATE_UP="fused"), beside the count rows
            call = _dispatched(moe_mod, fn, x, "grouped", route="count", gate_up="fused")
            impls[f"archzoo_grouped_count_gu_{name}"] = _graph_step(call, leaves) if name == "cudagraphs" else call
            # and the capacity-padded slabs (DISPATCH="padded": one torch.bmm per projection, no grouped GEMM)
            call = _dispatched(moe_mod, fn, x, "padded", route="count")
            impls[f"archzoo_padded_count_{name}"] = _graph_step(call, leaves) if name == "cudagraphs" else call
            if "fused" in moe_mod.DISPATCHES:  # and the experts in Triton (DISPATCH="fused")
                call = _dispatched(moe_mod, fn, x, "fused", route="count")
                impls[f"archzoo_fused_count_{name}"] = _graph_step(call, leaves) if name == "cudagraphs" else call
    dispatch: dict[str, object] = {}
    for name in ("archzoo_grouped", "archzoo_loop", "archzoo_padded", "archzoo_fused"):  # the path each took
        if name not in impls:
            continue
        fn = impls[name]
        if isinstance(fn, str):
            continue
        try:
            with torch.no_grad():
                fn()
        except Exception:  # _fwd_fwdbwd reports it
            continue
        if not has_switch:
            dispatch[name] = "loop (the layer's only path)"
        else:
            dispatch[name] = getattr(layer, "last_dispatch", "unknown (MoE has no last_dispatch attribute yet)")
    whole = None
    if device == "cuda":  # forward, and forward + backward, each one CUDA graph: no host time in either. First, in a
        # process nothing else has run in yet: after the rows below, every capture failed on an H100 ("operation
        # failed due to a previous error during capture", twenty-sixth session), the same capture alone passing.
        # The layer itself last (its DISPATCH "grouped" and "fused", eager Python captured once; no host sync in
        # either): which dispatch is fastest by device time, the layer's default to pick (twenty-sixth session: the
        # reduce-overhead rows of both were host-bound, their host ms equal to their ms).
        names = (dname, "archzoo_fused_experts", "archzoo_fused_routed", "archzoo_grouped", "archzoo_fused")
        whole = _whole_graphs({n: impls[n] for n in names if callable(impls.get(n))}, leaves, dout, rounds, dname)
    res, outs = _fwd_fwdbwd(impls, leaves, dout, rounds, device)
    for name in ("archzoo_grouped", "archzoo_loop", dname):
        if res[name].get("status") == "ok":
            res[name].update(_aten_ops(impls[name], dout, leaves))
            if device == "cuda" and name != dname:
                res[name]["host_syncs"] = _host_syncs(impls[name], dout, leaves)
    flops = 2 * 3 * n_tokens * d_model * top_k * d_ff
    peak = _bf16_peak(device)
    for name, row in res.items():
        if name in dispatch:
            row["last_dispatch"] = dispatch[name]
        for mode, f in (("fwd", flops), ("fwdbwd", 3 * flops)):
            row[f"over_dense_{mode}"] = _ratio(row, res[dname], f"{mode}_ms")
            for kind in ("compiled", "cudagraphs"):  # compiled against compiled, graphs against graphs
                if name.endswith(f"_{kind}") and f"{dname}_{kind}" in res:
                    row[f"over_dense_{kind}_{mode}"] = _ratio(row, res[f"{dname}_{kind}"], f"{mode}_ms")
            if peak and row.get("status") == "ok" and f"{mode}_ms" in row:
                row[f"bf16_peak_fraction_{mode}"] = f / (row[f"{mode}_ms"] / 1e3) / peak
    if device == "cuda":  # where the compiled layers' device time goes, kernel by kernel
        for name in ("archzoo_grouped_compiled", "archzoo_grouped_count_compiled", "archzoo_grouped_count_gu_compiled",
                     "archzoo_padded_count_compiled", "archzoo_fused_count_compiled", f"{dname}_compiled",
                     "archzoo_fused_experts_cudagraphs", "archzoo_fused_routed_cudagraphs",
                     f"{dname}_cudagraphs"):  # fmt: skip
            if res.get(name, {}).get("status") == "ok":
                try:  # a profiler failure is the row's note, not the end of the op's other rows
                    res[name]["kernels_fwdbwd"] = _kernel_profile(impls[name], dout, leaves)
                except Exception as e:
                    res[name]["kernels_fwdbwd"] = {"error": _error(e)}
    for name in ("archzoo_grouped", "archzoo_padded", "archzoo_fused"):
        if name in outs and "archzoo_loop" in outs:
            res[name]["rel_err_vs_loop"] = _rel(outs[name].float(), outs["archzoo_loop"].float())
    with torch.no_grad():  # the statistics of an eager call (a CUDA graph's outputs are overwritten by its next replay)
        impls["archzoo_loop"]()
    stats = layer.last_stats
    return {
        "shape": dict(tokens=n_tokens, d_model=d_model, d_ff=d_ff, n_experts=n_experts, top_k=top_k, dtype="bfloat16"),
        "capacity": dict(
            mode="train (capacity limits act, as in training)",
            factor=layer.capacity_factor,
            per_expert=layer.capacity(n_tokens),
            drop_fraction=float(stats["drop_fraction"]) if stats else None,
        ),  # fmt: skip
        "dense_reference": f"one SwiGLU({d_model}, {top_k * d_ff}): top_k x d_ff hidden, the active FLOPs of "
        f"{top_k} experts of d_ff {d_ff}",
        "target": f"archzoo_grouped ms / dense ms <= {MOE_TARGET}, forward and forward+backward",
        "dispatch_switch": has_switch,
        "bf16_peak_flops": peak,
        "rows": {n_tokens: res},
        "whole_graph": whole,
    }


def _whole_graphs(impls: dict[str, Callable[[], torch.Tensor]], leaves: list[torch.Tensor], gout: torch.Tensor,
                  rounds: int, dense: str) -> dict:  # fmt: skip
    """Each of ``impls`` (eager callables) captured whole in a ``torch.cuda.CUDAGraph``: its forward (no grad) in
    one, its forward + backward (``torch.autograd.grad`` of every leaf that takes a gradient) in another; the
    replays timed interleaved as the rows are -> {name: {status, fwd_ms, fwdbwd_ms, rounds, over_dense_fwd /
    _fwdbwd}}.

    Why: at this size the dense SwiGLU's forward + backward is bound by the host, eagerly and in the
    reduce-overhead rows alike (its host ms there equal its ms, which ranged 0.35-0.86 ms from run to run on one
    H100 against a device time of 0.33 ms, torch.profiler). A replay of one graph issues no host work between the
    kernels, so these rows are the device's time on either side, the fair ratio for issue 19's target."""
    params = [t for t in leaves if t.requires_grad]
    out: dict[str, dict] = {}
    calls: dict[tuple[str, str], tuple] = {}
    for name, fn in impls.items():

        def fwd(fn=fn) -> torch.Tensor:
            with torch.no_grad():
                return fn()

        def fb(fn=fn) -> tuple:
            return torch.autograd.grad(fn(), params, gout, allow_unused=True)

        try:
            for mode, body in (("fwd", fwd), ("fwdbwd", fb)):
                side = torch.cuda.Stream()
                side.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(side):  # warm-up off the capture: compiles, autotunes, autograd's first run
                    for _ in range(3):
                        body()
                torch.cuda.current_stream().wait_stream(side)
                graph = torch.cuda.CUDAGraph()
                # Captured on the warm-up's stream, so that nothing (cuBLAS's workspace for a stream, say) is first
                # made during the capture; thread-local, so that the autograd engine's worker thread, which runs the
                # backward's kernels on this stream, is not held to the capturing thread's rules. With the defaults
                # (torch's own capture stream, global mode) all three captures failed on an H100 (twenty-sixth
                # session: "operation failed due to a previous error during capture").
                with torch.cuda.graph(graph, stream=side, capture_error_mode="thread_local"):
                    kept = body()  # noqa: F841 (the graph's outputs stay alive with it)
                calls[name, mode] = (lambda graph=graph, kept=kept: graph.replay(), None)
            out[name] = {"status": "ok"}
        except Exception as e:  # a capture that fails is the row's status, not the end of the bench
            out[name] = {"status": _error(e)}
            calls.pop((name, "fwd"), None)
            calls.pop((name, "fwdbwd"), None)
        torch.cuda.synchronize()
    for (name, mode), t in _interleaved(calls, rounds).items():
        out[name].update({f"{mode}_ms": t["ms"], f"{mode}_rounds_ms": t["rounds_ms"]})
    for row in out.values():
        for mode in ("fwd", "fwdbwd"):
            if dense in out:
                row[f"over_dense_{mode}"] = _ratio(row, out[dense], f"{mode}_ms")
    return out


def _fused_experts(layer, x: torch.Tensor, routed: bool = False) -> Callable[[], torch.Tensor]:
    """x -> the layer's routing (router, softmax, top-k, renormalisation, as MoE.forward) and its routed experts through
    ``moe_grouped_experts`` (shared experts, if any, added as the layer adds them). ``routed``: the routing through
    ``moe_route`` (one launch, with the plan's counts)."""
    from ...kernels import moe_grouped_experts, moe_route
    from ...kernels.moe_step import route

    def call() -> torch.Tensor:
        counts = None
        if routed:
            top_w, top_e, counts = moe_route(x, layer.router.weight, layer.router.bias, layer.top_k,
                                             layer.norm_topk_prob)  # fmt: skip
        else:
            logits = layer.router(x).float()
            _, top_p, top_e = route(logits, layer.top_k, layer.norm_topk_prob, layer.top_k <= 4)
            top_w = top_p.to(x.dtype)
        out = moe_grouped_experts(x, layer.gate_proj.weight, layer.up_proj.weight, layer.down_proj.weight, top_e,
                                  top_w, counts=counts)  # fmt: skip
        for shared in layer.shared_experts:
            out = out + shared(x)
        return out

    return call


def _dispatched(
    moe_mod,
    layer: torch.nn.Module,
    x: torch.Tensor,
    mode: str,
    route: str | None = None,
    gate_up: str | None = None,
) -> Callable[[], torch.Tensor]:
    """-> call(): ``layer(x)`` with ``archzoo.layers.moe.DISPATCH`` set to ``mode`` (and ``ROUTE`` to ``route``,
    ``GATE_UP`` to ``gate_up``, when given) around it and restored. A compiled layer guards on all three, so each
    setting has its own graph."""
    switches = {"DISPATCH": mode, "ROUTE": route, "GATE_UP": gate_up}

    def call() -> torch.Tensor:
        old = {k: getattr(moe_mod, k, None) for k, v in switches.items() if v is not None}
        for k in old:
            setattr(moe_mod, k, switches[k])
        try:
            return layer(x)
        finally:
            for k, v in old.items():
                setattr(moe_mod, k, v)

    return call


def _graph_step(fn: Callable[[], torch.Tensor], leaves: list[torch.Tensor]) -> Callable[[], torch.Tensor]:
    """-> call(): a CUDA-graph step of ``fn`` (compiled with mode="reduce-overhead"): the leaves' gradients dropped,
    a new cudagraph step begun, then ``fn()``."""

    def call() -> torch.Tensor:
        for t in leaves:
            t.grad = None
        torch.compiler.cudagraph_mark_step_begin()
        return fn()

    return call


def _kernel_profile(fn: Callable[[], torch.Tensor], gout: torch.Tensor, leaves: list[torch.Tensor], calls: int = 10,
                    top: int = 12) -> dict:  # fmt: skip
    """``fn().backward(gout)`` ``calls`` times under torch.profiler (CUDA kernels only) -> the device time per call
    (``device_us``), the kernels launched per call, and the ``top`` kernels by device time: name (cut to 90
    characters), us per call, launches per call."""
    from torch.profiler import ProfilerActivity, profile

    fn().backward(gout)  # warm: compiled, autotuned
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            for t in leaves:
                t.grad = None
            fn().backward(gout)
        torch.cuda.synchronize()
    for t in leaves:
        t.grad = None
    kernels = [e for e in prof.key_averages() if e.device_type == torch.autograd.DeviceType.CUDA]
    kernels.sort(key=lambda e: -e.self_device_time_total)
    return {
        "device_us": round(sum(e.self_device_time_total for e in kernels) / calls, 1),
        "launches": round(sum(e.count for e in kernels) / calls, 1),
        "top": [
            (e.key[:90], round(e.self_device_time_total / calls, 1), round(e.count / calls, 1)) for e in kernels[:top]
        ],
    }


def _aten_ops(fn: Callable[[], torch.Tensor], gout: torch.Tensor, leaves: list[torch.Tensor]) -> dict[str, int]:
    """-> aten_ops_fwd (one ``fn()`` without gradients) and aten_ops_fwdbwd (``fn().backward(gout)``)."""
    with torch.no_grad(), OpCounter() as fwd:
        fn()
    with OpCounter() as fb:
        fn().backward(gout)
    for t in leaves:
        t.grad = None
    return {"aten_ops_fwd": fwd.n, "aten_ops_fwdbwd": fb.n}


def _host_syncs(fn: Callable[[], torch.Tensor], gout: torch.Tensor, leaves: list[torch.Tensor]) -> str:
    """What ``torch.cuda.set_sync_debug_mode("error")`` reports over one ``fn().backward(gout)``: "none", or the
    error of the first call that synchronised with the host."""
    torch.cuda.synchronize()
    mode = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        fn().backward(gout)
        return "none"
    except RuntimeError as e:
        return _error(e)
    finally:
        torch.cuda.set_sync_debug_mode(mode)
        for t in leaves:
            t.grad = None
