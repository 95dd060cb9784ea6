"""A persistent decode kernel for a whole layer stack at batch 1, tried (issue 18, item 4): every layer of a
Llama-shaped decoder (RMSNorm, Q|K|V with RoPE and the K/V cache write, GQA attention over the cache, O with the
residual, RMSNorm, gate|up with SiLU x up, down with the residual) in one launch, five grid-wide barriers a layer
(``grid_sync_bench.grid_sync``), the teacher's shape by default (30 layers, d_model 576, 9 query / 3 KV heads of
64, d_ff 1,536). Beside it, in the same process: archzoo's own captured decode step of a model of that shape
(``generate(compile=True)``: 30 layers, the LM head and sampling) and the LM head alone (``decode_linear``), so
the stack's share of the step is known.

And the same kernel with each stage's weights loaded a stage ahead (``persistent_prefetch.py``), also in this run:
loaded before the barrier, after this program's arrival (``split_sync``), and that with the wait polling by
acquire atomics (``poll_load=False``), the form that beat archzoo's captured step (docs/decode.md).

Stages of layer l (programs take tasks pid, pid + P, ...; x (D,) the residual stream):

1. Q|K|V: each program computes x's rms itself, then row tiles of W_qkv (Q and K heads' rows in RoPE-pair order,
   [0, HD/2, 1, HD/2 + 1, ...], so that a tile holds whole pairs; V as it is): the product rounded, RoPE at
   position ``pos`` on Q / K rows, rounded; Q into a scratch vector, K / V into slot ``pos`` of layer l's caches
   (K in pair order: a dot product does not see an order both sides share).
2. attention: a task a query head: online softmax over positions 0 .. pos of its KV head, BLOCK_T at a time.
3. O: x[rows] += W_o[rows] @ o (``persistent_mlp_bench.residual_stage``).
4. gate|up with the norm, SiLU x up (``persistent_mlp_bench.gate_up_stage``).
5. down: x[rows] += W_d[rows] @ h.

A barrier after each: what a stage reads, the one before wrote. ``python tools/persistent_step_bench.py [--pos
255] [--programs 132,66]``; GPU only (tests/tools/test_persistent_step_bench.py checks the kernel against a
PyTorch reference under Triton's interpreter, one program).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import sys

import torch
import triton
import triton.language as tl

from archzoo.layers.rope import inverse_frequencies

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _persistent_stages import (  # noqa: E402
    _attention_stage,
    _qkv_stage,
    gate_up_stage,
    launch_stack,
    residual_stage,
    teacher_shape,
)
from grid_sync_bench import MAX_SPIN, graph_ms, grid_sync  # noqa: E402
from persistent_prefetch import run_prefetch  # noqa: E402


@triton.jit
def _step_stack_kernel(
    x_ptr, n1_ptr, wqkv_ptr, kc_ptr, vc_ptr, wo_ptr, n2_ptr, wgu_ptr, wd_ptr, q_ptr, o_ptr, h_ptr, cos_ptr, sin_ptr,
    counter_ptr, flag_ptr, n_layers, pos, T_max, eps, scale,
    D: tl.constexpr, H: tl.constexpr, HKV: tl.constexpr, HD: tl.constexpr, F: tl.constexpr, ROWS_QKV: tl.constexpr,
    ROWS_D: tl.constexpr, ROWS_GU: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_F: tl.constexpr, BLOCK_T: tl.constexpr,
    POLL_LOAD: tl.constexpr, MAX_SPIN: tl.constexpr,
):  # fmt: skip
    DT = x_ptr.dtype.element_ty
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    NQKV: tl.constexpr = (H + 2 * HKV) * HD
    alive = pid >= 0
    syncs = 0
    for layer in range(0, n_layers):
        kc = kc_ptr + layer * (HKV * T_max * HD)
        vc = vc_ptr + layer * (HKV * T_max * HD)
        if alive:
            _qkv_stage(x_ptr, n1_ptr + layer * D, wqkv_ptr + layer * (NQKV * D), q_ptr, kc, vc, cos_ptr, sin_ptr, pid,
                       nprog, pos, T_max, eps, DT, D, H, HKV, HD, ROWS_QKV, BLOCK_K)  # fmt: skip
            syncs += 1
            alive = grid_sync(counter_ptr, syncs * nprog, flag_ptr, POLL_LOAD, MAX_SPIN)
        if alive:
            _attention_stage(q_ptr, kc, vc, o_ptr, pid, nprog, pos, T_max, scale, DT, H, HKV, HD, BLOCK_T)
            syncs += 1
            alive = grid_sync(counter_ptr, syncs * nprog, flag_ptr, POLL_LOAD, MAX_SPIN)
        if alive:
            residual_stage(wo_ptr + layer * (D * H * HD), o_ptr, x_ptr, pid, nprog, DT, D, H * HD, ROWS_D, BLOCK_K)
            syncs += 1
            alive = grid_sync(counter_ptr, syncs * nprog, flag_ptr, POLL_LOAD, MAX_SPIN)
        if alive:
            gate_up_stage(x_ptr, n2_ptr + layer * D, wgu_ptr + layer * (2 * F * D), h_ptr, pid, nprog, eps, DT, D, F,
                          ROWS_GU, BLOCK_K)  # fmt: skip
            syncs += 1
            alive = grid_sync(counter_ptr, syncs * nprog, flag_ptr, POLL_LOAD, MAX_SPIN)
        if alive:
            residual_stage(wd_ptr + layer * (D * F), h_ptr, x_ptr, pid, nprog, DT, D, F, ROWS_D, BLOCK_F)
            syncs += 1
            alive = grid_sync(counter_ptr, syncs * nprog, flag_ptr, POLL_LOAD, MAX_SPIN)


def pair_order(hd: int) -> torch.Tensor:
    """A head's rows in RoPE-pair order: [0, hd/2, 1, hd/2 + 1, ...]."""
    return torch.stack([torch.arange(hd // 2), torch.arange(hd // 2) + hd // 2], dim=1).reshape(-1)


def make_stack(L, D, H, HKV, HD, F, T_max, pos, dtype, device, seed=0, theta: float = 100000.0) -> dict:
    """Random weights (Q|K|V in head order), caches filled at positions < pos, x, cos / sin at ``pos`` (RoPE of
    ``theta``, ``archzoo.layers.rope``'s frequencies)."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *shape, s=1.0: (torch.randn(*shape, generator=g) * s).to(dtype).to(device)  # noqa: E731
    inv = inverse_frequencies(HD, theta)
    ang = pos * inv
    return dict(
        x=r(D), n1=(1 + r(L, D, s=0.1).float()).to(dtype), n2=(1 + r(L, D, s=0.1).float()).to(dtype),
        wqkv=r(L, (H + 2 * HKV) * HD, D, s=D**-0.5), wo=r(L, D, H * HD, s=(H * HD) ** -0.5 / L**0.5),
        wgu=r(L, 2 * F, D, s=D**-0.5), wd=r(L, D, F, s=F**-0.5 / L**0.5),
        kc=r(L, HKV, T_max, HD), vc=r(L, HKV, T_max, HD), cos=ang.cos().to(device), sin=ang.sin().to(device),
    )  # fmt: skip


def prepare(st: dict, H: int, HKV: int) -> dict:
    """What the kernel reads besides ``make_stack``'s tensors, made once: Q|K|V's Q and K rows in pair order, the
    caches copied (K's columns in pair order)."""
    x, wqkv, kc = st["x"], st["wqkv"], st["kc"]
    NQKV = wqkv.shape[1]
    HD = NQKV // (H + 2 * HKV)
    po = pair_order(HD).to(x.device)
    rows = torch.arange(NQKV, device=x.device).view(-1, HD)
    rows[: H + HKV] = rows[: H + HKV][:, po]  # Q and K heads in pair order, V as it is
    inv = torch.empty_like(po)
    inv[po] = torch.arange(HD, device=x.device)
    return dict(wqkv=wqkv[:, rows.reshape(-1)].contiguous(), kc=kc[..., po].contiguous(), vc=st["vc"].clone(), inv=inv)


def run_prepared(st: dict, prep: dict, H: int, HKV: int, pos: int, eps: float, programs: int, rows_qkv: int = 16,
                 rows_d: int = 4, rows_gu: int = 32, block_k: int = 128, block_f: int = 512, block_t: int = 64,
                 num_warps: int = 8, max_spin: int = MAX_SPIN) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """One launch over the stack: (x after it, flag: 1 where a barrier gave up). The caches in ``prep`` take slot
    ``pos`` (the same values on every call from the same x, so a replayed graph measures the same work)."""
    L, NQKV, D = prep["wqkv"].shape
    HD = NQKV // (H + 2 * HKV)
    F, T_max = st["wd"].shape[2], prep["kc"].shape[2]
    if HD % rows_qkv or rows_qkv % 2 or (2 * F) % rows_gu or D % rows_d or H % HKV or not 0 <= pos < T_max:
        raise ValueError(f"step_stack: rows_qkv {rows_qkv} (even) must divide head_dim {HD}, rows_gu {rows_gu} 2F, "
                         f"rows_d {rows_d} D = {D}, HKV {HKV} H = {H}, and 0 <= pos {pos} < T_max {T_max}")  # fmt: skip
    consts = dict(ROWS_QKV=rows_qkv, ROWS_D=rows_d, ROWS_GU=rows_gu, BLOCK_K=block_k, BLOCK_F=block_f,
                  BLOCK_T=block_t, POLL_LOAD=True, MAX_SPIN=max_spin)  # fmt: skip
    return launch_stack(_step_stack_kernel, st, prep, H, HKV, pos, eps, programs, consts, num_warps)


def step_stack(st: dict, H: int, HKV: int, pos: int, eps: float, programs: int, **tiles):
    """``prepare`` then ``run_prepared``: (x, K cache in head order, V cache, flag)."""
    prep = prepare(st, H, HKV)
    out, flag = run_prepared(st, prep, H, HKV, pos, eps, programs, **tiles)
    return out, prep["kc"][..., prep["inv"]], prep["vc"], flag


def step_stack_reference(st: dict, H: int, HKV: int, pos: int, eps: float):
    """The same layer by layer in PyTorch (head order, rotate-half RoPE), with the kernels' roundings: (x, K cache,
    V cache)."""
    x, wqkv = st["x"], st["wqkv"]
    dt = x.dtype
    r = lambda v: v.to(dt).float()  # noqa: E731
    L, NQKV, D = wqkv.shape
    HD = NQKV // (H + 2 * HKV)
    kc, vc = st["kc"].clone(), st["vc"].clone()
    cos = torch.cat([st["cos"], st["cos"]]).float()
    sin = torch.cat([st["sin"], st["sin"]]).float()
    rope = lambda t: r(t * cos + torch.cat([-t[..., HD // 2 :], t[..., : HD // 2]], -1) * sin)  # noqa: E731
    x = x.float()
    for layer in range(L):
        xn = r(r(x * torch.rsqrt(x.pow(2).mean() + eps)) * st["n1"][layer].float())
        qkv = r(wqkv[layer].float() @ xn)
        q = rope(qkv[: H * HD].view(H, HD))
        k = rope(qkv[H * HD : (H + HKV) * HD].view(HKV, HD))
        kc[layer, :, pos] = k.to(dt)
        vc[layer, :, pos] = qkv[(H + HKV) * HD :].view(HKV, HD).to(dt)
        keys = kc[layer, :, : pos + 1].float().repeat_interleave(H // HKV, 0)  # (H, pos + 1, HD)
        vals = vc[layer, :, : pos + 1].float().repeat_interleave(H // HKV, 0)
        att = torch.softmax((keys @ q[:, :, None]).squeeze(-1) / math.sqrt(HD), dim=-1)  # (H, pos + 1)
        o = r((att[:, None, :] @ vals).reshape(-1))
        x = r(st["wo"][layer].float() @ o + x)
        xn = r(r(x * torch.rsqrt(x.pow(2).mean() + eps)) * st["n2"][layer].float())
        gu = st["wgu"][layer].float() @ xn
        g, u = r(gu[0::2]), r(gu[1::2])
        x = r(st["wd"][layer].float() @ r(r(g * torch.sigmoid(g)) * u) + x)
    return x.to(dt), kc, vc


def _model_step_ms(pos: int, device, batch: int = 1) -> tuple[float | None, float, str]:
    """archzoo's captured decode step at ``batch`` rows of a random-weight model of the teacher's shape, from
    ``generate`` (``decode_s`` over its ``decode_steps``, 64 new tokens after prompts of ``pos`` - 32), the final norm
    and LM head alone (``decode_linear`` in a graph, as the step runs them up to 16 rows), and what ran."""
    import archzoo

    cfg = os.path.join(
        os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "students", "teacher.yaml"
    )
    model = archzoo.build_model(cfg).to(device=device, dtype=torch.bfloat16).eval()
    prompt = torch.randint(0, model.cfg.vocab_size, (batch, max(1, pos - 32)), device=device)
    with torch.no_grad():
        model.generate(prompt, 64, compile=True)  # compiles and captures
        model.generate(prompt, 64, compile=True)
    st = model.last_generate_stats
    steps = st.get("decode_steps") or 0
    from archzoo.kernels import decode_linear

    x = torch.randn(batch, model.cfg.d_model, device=device, dtype=torch.bfloat16)
    head = graph_ms(lambda: decode_linear(x, model.lm_head.weight, model.norm.weight, model.norm.eps))
    return (st["decode_s"] * 1e3 / steps if steps else None), head, str(st.get("backend"))


def time_stack(launch, want: torch.Tensor, nbytes: int) -> dict:
    """One checked launch of a stack kernel (``launch() -> (x, flag)``) against the reference's x, then its time in a
    CUDA graph: ms, GB/s over ``nbytes``, max abs diff, stalled, and a line to print."""
    out, flag = launch()
    stalled = bool(flag.item())
    diff = (out.float() - want.float()).abs().max().item()
    ms = None if stalled else graph_ms(launch)
    gbs = None if ms is None else round(nbytes / (ms * 1e-3) / 1e9)
    shown = "stalled (a barrier gave up)" if stalled else f"{ms:.4f} ms for the stack, {gbs} GB/s"
    return dict(ms=ms, gb_per_s=gbs, max_abs_diff=diff, stalled=stalled, shown=f"{shown}, max abs diff {diff:.3g}")


def write_json(path: str | None, payload: dict) -> None:
    """``payload`` to ``path`` (nothing where None), atomically."""
    if path:
        with open(path + ".tmp", "w") as f:
            json.dump(payload, f, indent=1)
        os.replace(path + ".tmp", path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", type=int, default=None, help="default: the teacher's")
    p.add_argument("--pos", type=int, default=255, help="the new token's position (the cache holds pos before it)")
    p.add_argument("--programs", default="", help="comma-separated program counts (default: the SMs, and half)")
    p.add_argument("--no-model", action="store_true", help="skip archzoo's own step of the teacher's shape")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("persistent_step_bench: needs a CUDA device (tests/tools/test_persistent_step_bench.py: the CPU check)")
        return 2
    dev = torch.device("cuda")
    t = teacher_shape()
    L, D, H, HKV, HD, F, eps = args.layers or t["L"], t["D"], t["H"], t["HKV"], t["HD"], t["F"], t["eps"]
    st = make_stack(L, D, H, HKV, HD, F, args.pos + 1, args.pos, torch.bfloat16, dev, theta=t["theta"])
    want, _, _ = step_stack_reference(st, H, HKV, args.pos, eps)
    sms = torch.cuda.get_device_properties(dev).multi_processor_count
    weight_bytes = sum(st[k].numel() for k in ("wqkv", "wo", "wgu", "wd", "n1", "n2")) * 2
    kv_bytes = 2 * L * HKV * (args.pos + 1) * HD * 2
    name = torch.cuda.get_device_name(dev)
    print(f"device: {name} ({sms} SMs); {L} layers of the teacher's shape at position {args.pos}, bf16, batch 1; "
          f"weights {weight_bytes / 1e6:.0f} MB, K/V read {kv_bytes / 1e6:.1f} MB")  # fmt: skip
    rows = []
    prep = prepare(st, H, HKV)  # made once: the graphs below time the launch alone (slot pos: the same values)
    forms = (
        ("persistent", run_prepared),
        ("persistent, weights a stage ahead", run_prefetch),
        ("persistent, weights a stage ahead, arrive first", functools.partial(run_prefetch, split_sync=True)),
        (
            "persistent, weights a stage ahead, arrive first, atomic polls",
            functools.partial(run_prefetch, split_sync=True, poll_load=False),
        ),
    )
    for form, run in forms:
        for programs in [int(c) for c in args.programs.split(",") if c] or [sms, sms // 2]:
            launch = lambda p=programs, r=run: r(st, prep, H, HKV, args.pos, eps, p)  # noqa: E731
            rows.append(dict(form=form, programs=programs, **time_stack(launch, want, weight_bytes + kv_bytes)))
            print(f"{form}, {programs} programs: {rows[-1]['shown']}")
    if not args.no_model:
        ms, head, backend = _model_step_ms(args.pos, dev)
        rows.append(dict(form="archzoo step", ms=ms, head_ms=head, backend=backend))
        print(f"archzoo's decode step of the teacher's shape (stack + head + sampling, {backend}): {ms} ms; its final "
              f"norm and LM head alone {head:.4f} ms")  # fmt: skip
    write_json(args.out, {"device": name, "sms": sms, "pos": args.pos, "layers": L, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
