"""Where a decode step's time goes on the GPU: the kernels one step of ``generate`` launches, their count and
GPU time, against the captured step's replay time. Not a benchmark of record (``archzoo bench decode`` is).

    python tools/decode_profile.py configs/students/teacher.yaml --batch 1 --prompt 128 --out prof.json
        [--decode-linear cublas,kernel]   # the projections through cuBLAS, or the decode GEMV and its epilogues
                                          # (kernel-pdl: launched with programmatic dependent launch)
        [--attention kernel,kernel-2launch]  # the attention kernel's splits merged in it, or by a second kernel
        [--attention kernel,kernel-long-splits]  # at least 4 tiles a split: a short cache, one split, no merge
        [--attention kernel,kernel-single]  # a buffer of up to 256 positions in one tile: one split, no merge
        [--attention kernel,kernel-fixup]  # the splits merged by the last split program (FIXUP), no second launch
        [--mla-fold on,off]               # MLA layers with W_uk / W_uv folded into their copies, or not
        [--mamba-step fused,unfused]      # Mamba layers' conv update .. state update as one kernel, or four
        [--mamba-fold on,off]             # Mamba layers' x_proj and dt_proj folded into one decode copy, or not
        [--update-pdl on,off]             # the conv / state update kernels launched with PDL, or not
        [--in-proj-conv on,off]           # Mamba's in_proj and conv update as one GEMV, or two kernels
                                          # (default: the library's, FUSED_STEP)
        [--moe-experts reductions,kernel,fused]  # a few tokens' MoE: compiled reductions, the experts in two kernels,
                                          # or the routing and the experts in two kernels
        [--s4-step kernel,compiled]       # S4D layers' norm .. GELU as one kernel (s4.FUSED_STEP), or compiled ops
        [--rope-write on,off]             # above the GEMV's rows: RoPE + cache write as one kernel after cuBLAS
        [--once on,off]                   # a step's positions and Mamba's A made once (layers.base.ONCE_A_STEP,
                                          # and the update ops' outputs not copied), or in every layer as before

It builds the model (random weights, bf16), lets ``generate`` compile and capture its step, then runs the
step's Python function (the compiled blocks, not the graph) under ``torch.profiler`` for ``--steps`` steps,
and times ``--steps`` graph replays. Kernels are grouped by name; the JSON has every group.

    python tools/decode_profile.py configs/students/teacher.yaml --draft configs/students/swa-w128.yaml \
        --num-draft-tokens 2 --batch 64 --prompt 4096 --decode-linear auto --out round.json

profiles a speculative round instead (``archzoo.speculative``): the target and the draft, both random, the
round captured as ``generate(draft=...)`` captures it, then ``--steps`` replays timed and ``--steps`` rounds
under the profiler. A round's work has static shapes, so random weights cost what trained ones do (only the
tokens differ); the kernel table says where a round's time goes beyond its k+1 draft steps and one target step
(``round_rest_ms`` of ``archzoo bench decode``).
"""

from __future__ import annotations

import argparse
import collections
import itertools
import json
import time

import torch
from torch.profiler import ProfilerActivity, profile

import archzoo


def profile_step(
    config: str,
    batch: int,
    prompt: int,
    steps: int,
    attention: str,
    linear: str = "cublas",
    fold: str = "on",
    mamba_step: str = "library",
    moe_experts: str | None = None,
    once: str = "on",
    mamba_fold: str = "on",
    update_pdl: str = "library",
    in_proj_conv: str = "library",
    s4_step: str = "library",
    rope_write: str = "off",
) -> dict:
    from archzoo.bench.decode import decode_linear_form
    from archzoo.layers import attention as attention_layer

    # kernel-2launch: the decode attention kernel with its splits merged by a second kernel, as before the fixup
    # (archzoo/kernels/decode_attention/triton.py), beside "kernel" in the same process; kernel-long-splits: at
    # least 4 tiles a split (MIN_SPLIT_TILES), so a short cache takes one split and no merge
    # kernel-single: a buffer of up to 256 positions in one split of one tile (SINGLE_MAX_T): no loop, no merge
    # kernel-fixup: the splits merged by the last split program to finish (FIXUP: timed at batch 1 only, where it lost)
    overrides = {"kernel-2launch": {"FIXUP": False}, "kernel-long-splits": {"MIN_SPLIT_TILES": 4},
                 "kernel-single": {"SINGLE_MAX_T": 256},
                 "kernel-fixup": {"FIXUP": True}}.get(attention, {})  # fmt: skip
    attention_layer.DECODE_ATTENTION = "kernel" if overrides else attention
    from archzoo.kernels.decode_attention import triton as attention_kernels

    attention_kernels.CONFIG_OVERRIDE.update(overrides)
    from archzoo.layers import mamba, mla_fold

    mla_fold.ENABLED = fold == "on"  # read as the model is built (layers/mla_fold.py)
    fused_before = mamba.FUSED_STEP  # "library": as the library has it (off); read as the step is traced
    mamba.FUSED_STEP = fused_before if mamba_step == "library" else mamba_step == "fused"
    fold_dt_before = mamba.FOLD_DT  # read when generate refreshes the decode copies
    mamba.FOLD_DT = mamba_fold == "on"
    from archzoo.kernels import _pdl

    update_before = _pdl.UPDATE_KERNELS  # "library": as the library has it; read as the step is captured
    _pdl.UPDATE_KERNELS = update_before if update_pdl == "library" else update_pdl == "on"
    conv_before = mamba.IN_PROJ_CONV  # likewise, read as the step is traced
    mamba.IN_PROJ_CONV = conv_before if in_proj_conv == "library" else in_proj_conv == "on"
    from archzoo.layers import s4

    s4_before = s4.FUSED_STEP  # likewise: S4D's step as one kernel ("kernel") or the compiled ops ("compiled")
    s4.FUSED_STEP = s4_before if s4_step == "library" else s4_step == "kernel"
    from archzoo.layers import fused

    rw_before = fused.ROPE_WRITE_MIN_ROWS  # "on": RoPE + cache write as one kernel after cuBLAS's Q|K|V (17+ rows)
    fused.ROPE_WRITE_MIN_ROWS = fused.AUTO_MAX_ROWS + 1 if rope_write == "on" else rw_before
    from archzoo.layers import moe

    experts_before = moe.DECODE_EXPERTS
    moe.DECODE_EXPERTS = moe_experts or experts_before  # None: the library's default
    from archzoo.kernels import _capture
    from archzoo.layers import base

    base.ONCE_A_STEP, _capture.COPY_OUTPUTS = once == "on", once != "on"  # read as the step is traced
    try:
        with decode_linear_form(linear):  # kernel-pdl: the decode kernels launched with PDL (archzoo/kernels/_pdl.py)
            torch._dynamo.reset()  # the step is traced again under this form
            r = _profile(config, batch, prompt, steps, attention, linear)
            step = "fused" if mamba.FUSED_STEP else "unfused"
            return {**r, "mla_fold": fold, "mamba_step": step, "mamba_fold": mamba_fold,
                    "update_pdl": "on" if _pdl.UPDATE_KERNELS else "off",
                    "in_proj_conv": "on" if mamba.IN_PROJ_CONV else "off",
                    "s4_step": "kernel" if s4.FUSED_STEP else "compiled",
                    "rope_write": rope_write,
                    "moe_experts": moe.DECODE_EXPERTS, "once": once}  # fmt: skip
    finally:
        mla_fold.ENABLED = True
        mamba.FUSED_STEP = fused_before
        mamba.FOLD_DT = fold_dt_before
        _pdl.UPDATE_KERNELS = update_before
        mamba.IN_PROJ_CONV = conv_before
        s4.FUSED_STEP = s4_before
        fused.ROPE_WRITE_MIN_ROWS = rw_before
        moe.DECODE_EXPERTS = experts_before
        base.ONCE_A_STEP, _capture.COPY_OUTPUTS = True, False
        for key in overrides:
            attention_kernels.CONFIG_OVERRIDE.pop(key, None)


def _profile(config: str, batch: int, prompt: int, steps: int, attention: str, linear: str) -> dict:
    torch.manual_seed(0)
    model = archzoo.build_model(config).to("cuda", torch.bfloat16).eval()
    ids = torch.randint(0, model.cfg.vocab_size, (batch, prompt), device="cuda")
    model.generate(ids, 2 * steps + 8, eos_token_id=None)  # compile + capture, fill a cache
    (s,) = list(model.decode_pool.entries.values())
    torch.cuda.synchronize()
    torch.set_grad_enabled(False)  # as in generate: a step with gradients enabled is not a decode step
    t0 = time.perf_counter()
    for _ in range(steps):
        s.graph.replay()
    torch.cuda.synchronize()
    replay_ms = (time.perf_counter() - t0) / steps * 1e3
    rows = _kernel_table(s.fn, steps, torch.device("cuda"))
    return {
        "config": config,
        "batch": batch,
        "prompt": prompt,
        "decode_attention": attention,
        "decode_linear": linear,
        "replay_ms_per_step": replay_ms,
        "kernels_per_step": sum(r["per_step"] for r in rows),
        "kernel_ms_per_step": sum(r["ms_per_step"] for r in rows),
        "kernels": rows,
    }


def profile_round(
    config: str, draft_config: str, batch: int, prompt: int, k: int, steps: int, linear: str = "auto",
    device: str = "cuda",
) -> dict:  # fmt: skip
    """One speculative round of ``config`` verifying ``draft_config`` (k draft tokens), captured on CUDA as
    ``generate`` captures it: replay time and the kernels of ``steps`` rounds (see the module docstring)."""
    from archzoo.bench.decode import decode_linear_form

    with decode_linear_form(linear), torch.no_grad():  # as in generate: no gradients in a decode round
        torch._dynamo.reset()
        return _profile_round(config, draft_config, batch, prompt, k, steps, linear, torch.device(device))


def _profile_round(config, draft_config, batch, prompt, k, steps, linear, dev) -> dict:
    from archzoo.generation import _get_round
    from archzoo.speculative import speculative_generate

    torch.manual_seed(0)
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    model = archzoo.build_model(config).to(dev, dtype).eval()
    draft = archzoo.build_model(draft_config).to(dev, dtype).eval()
    rows = list(torch.randint(0, model.cfg.vocab_size, (batch, prompt), device=dev))
    new = 2 * steps + 8
    cuda = dev.type == "cuda"
    total = prompt + new + 2 * (k + 1)
    state, _ = _get_round(model, draft, batch, total, k, 0.0, None, None, [], None, cuda, cuda)
    speculative_generate(model, draft, rows, new, k, 0.0, None, None, [], None, {}, state=state)  # caches filled
    _sync(dev)
    t0 = time.perf_counter()
    for _ in range(steps):
        state.step()  # the captured round's replay on CUDA
    _sync(dev)
    replay_ms = (time.perf_counter() - t0) / steps * 1e3
    rows_ = _kernel_table(state.round, steps, dev)
    return {
        "config": config,
        "draft": draft_config,
        "num_draft_tokens": k,
        "batch": batch,
        "prompt": prompt,
        "decode_linear": linear,
        "captured": state.graph is not None,
        "replay_ms_per_round": replay_ms,
        "kernels_per_round": sum(r["per_step"] for r in rows_),
        "kernel_ms_per_round": sum(r["ms_per_step"] for r in rows_),
        "kernels": rows_,
    }


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _kernel_table(fn, steps: int, dev: torch.device) -> list[dict]:
    """``fn`` run ``steps`` times under the profiler -> its GPU kernels (CPU ops on the CPU) grouped by name, count
    and milliseconds per call, largest first."""
    cuda = dev.type == "cuda"
    with profile(activities=[ProfilerActivity.CUDA if cuda else ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            fn()
        _sync(dev)
    groups: dict[str, list[float]] = collections.defaultdict(list)
    want = torch.autograd.DeviceType.CUDA if cuda else torch.autograd.DeviceType.CPU
    for ev in prof.events():
        if ev.device_type == want and (cuda or ev.name.startswith("aten::")):
            t = ev.device_time_total if cuda else ev.self_cpu_time_total
            groups[ev.name].append(t / 1e3)  # ms
    return sorted(
        ({"kernel": k[:160], "per_step": len(v) / steps, "ms_per_step": sum(v) / steps} for k, v in groups.items()),
        key=lambda r: -r["ms_per_step"],
    )


def forms_of(attention: str, linear: str, fold: str, mamba_step: str) -> list[tuple[str, str, str, str]]:
    """Every (attention, decode linear, MLA fold, Mamba step) combination of the comma-separated flags."""
    return [
        (f, lin, fo, ms)
        for f in attention.split(",")
        for lin in linear.split(",")
        for fo in fold.split(",")
        for ms in mamba_step.split(",")
    ]


def step_settings(args: argparse.Namespace) -> list[dict]:
    """The flags' every combination, each as ``profile_step``'s keyword arguments (by name: a switch added to one and
    not the other fails here, on the CPU, not in a GPU queue after its tests)."""
    axes = {
        "moe_experts": args.moe_experts.split(",") if args.moe_experts else [None],
        "once": args.once.split(","),
        "mamba_fold": args.mamba_fold.split(","),
        "update_pdl": args.update_pdl.split(","),
        "in_proj_conv": args.in_proj_conv.split(","),
        "s4_step": args.s4_step.split(","),
        "rope_write": args.rope_write.split(","),
    }
    names = ("attention", "linear", "fold", "mamba_step", *axes)
    forms = forms_of(args.attention, args.decode_linear, args.mla_fold, args.mamba_step)
    return [
        dict(zip(names, (*form, *vals), strict=True)) for form in forms for vals in itertools.product(*axes.values())
    ]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("configs", nargs="+")
    p.add_argument("--batch", default="1")
    p.add_argument("--prompt", default="128")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument(
        "--attention",
        default="kernel",
        help="kernel, kernel-2launch, kernel-long-splits, kernel-single, kernel-fixup, sdpa, or several",
    )
    p.add_argument("--decode-linear", default="cublas",
                   help="cublas, kernel, kernel-pdl[-l2][-m16], auto, auto-qkv or several")  # fmt: skip
    p.add_argument("--mla-fold", default="on", help="on, off or both (on,off): MLA's W_uk / W_uv folded or not")
    p.add_argument("--mamba-step", default="library",
                   help="fused, unfused or both: the Mamba step as one kernel (default: the library's)")  # fmt: skip
    p.add_argument("--mamba-fold", default="on", help="on, off or both: Mamba's x_proj and dt_proj folded (FOLD_DT)")
    p.add_argument("--update-pdl", default="library",
                   help="on, off or both: the SSM update kernels with PDL (default: the library's)")  # fmt: skip
    p.add_argument("--in-proj-conv", default="library",
                   help="on, off or both: in_proj and conv update as one GEMV (default: the library's)")  # fmt: skip
    p.add_argument(
        "--s4-step",
        default="library",
        help="kernel, compiled or both: S4D's step as one kernel or compiled ops (default: the library's)",
    )
    p.add_argument("--rope-write", default="off",
                   help="on, off or both: above the GEMV's rows, RoPE + cache write in one kernel")  # fmt: skip
    p.add_argument("--once", default="on", help="on, off or both: a step's per-layer constants made once, or not")
    p.add_argument(
        "--moe-experts",
        default=None,
        help="reductions, kernel, fused, or several comma-separated: a few tokens' MoE (moe.DECODE_EXPERTS)",
    )
    p.add_argument("--draft", help="a draft's config: profile a speculative round of each config verifying it")
    p.add_argument("--num-draft-tokens", type=int, default=2, help="k, with --draft")
    p.add_argument("--out", required=True)
    return p


def main() -> None:
    args = parser().parse_args()
    out = []
    if args.draft:
        for config in args.configs:
            for b in map(int, args.batch.split(",")):
                for n in map(int, args.prompt.split(",")):
                    for linear in args.decode_linear.split(","):
                        r = profile_round(config, args.draft, b, n, args.num_draft_tokens, args.steps, linear)
                        out.append(r)
                        print(f"\n{config} <- {args.draft} k={args.num_draft_tokens} B={b} P={n} {linear}: replay "
                              f"{r['replay_ms_per_round']:.3f} ms/round, {r['kernels_per_round']:.0f} kernels, "
                              f"{r['kernel_ms_per_round']:.3f} ms of kernel time")  # fmt: skip
                        for k in r["kernels"][:16]:
                            print(f"  {k['ms_per_step']:.4f} ms  x{k['per_step']:.0f}  {k['kernel'][:110]}")
                        with open(args.out, "w") as f:
                            json.dump(out, f, indent=1)
        return
    for config in args.configs:
        for b in map(int, args.batch.split(",")):
            for n in map(int, args.prompt.split(",")):
                for kw in step_settings(args):
                    r = profile_step(config, b, n, args.steps, **kw)
                    form, linear, fold, mf, rw, once = (kw[k] for k in ("attention", "linear", "fold", "mamba_fold",
                                                                        "rope_write", "once"))  # fmt: skip
                    out.append(r)
                    print(
                        f"\n{config} B={b} P={n} {form} {linear} fold {fold} mamba step {r['mamba_step']} "
                        f"mamba fold {mf} update pdl {r['update_pdl']} in_proj conv {r['in_proj_conv']} "
                        f"moe {r['moe_experts']} s4 step {r['s4_step']} rope write {rw} once {once}: "
                        f"replay {r['replay_ms_per_step']:.3f} ms/step, "
                        f"{r['kernels_per_step']:.0f} kernels, {r['kernel_ms_per_step']:.3f} ms of kernel time"
                    )
                    for k in r["kernels"][:12]:
                        print(f"  {k['ms_per_step']:.4f} ms  x{k['per_step']:.0f}  {k['kernel'][:110]}")
                    with open(args.out, "w") as f:
                        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
