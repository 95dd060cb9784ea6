"""The persistent decode kernel's first stage pair, tried at batch 1 (issue 18, item 4): every layer's SwiGLU MLP
of a stack (the RMSNorm fused into gate|up, SiLU x up, down with the residual add) in one launch, its programs
meeting at a grid-wide barrier (``grid_sync_bench.grid_sync``) between the stages, against the decode GEMV's two
launches a layer (``archzoo.kernels.decode_linear``, PDL where it runs) in a CUDA graph, in one process.

Per layer l, with x (D,) the residual stream in x's dtype:

- stage 1: every program computes x's rms (D values: cheaper than a barrier to share it), then takes W_gu[l]'s
  row tiles (the rows interleaved [g0, u0, g1, u1, ...], as the layers' ``pairs`` copy) pid, pid + P, ...:
  h = silu(g) * u of its rows, into a scratch vector (F,);
- a barrier (h complete before anyone reads it);
- stage 2: the programs take W_d[l]'s row tiles: x[rows] += W_d[l][rows] @ h, stored in place (each program
  reads and writes only its own rows of x);
- a barrier (x complete before the next layer's norm reads it).

The roundings are ``decode_linear``'s (x * rstd rounded, times the norm weight rounded; g, u, SiLU(g) and the
product rounded; the down product plus the residual rounded once), so the two forms agree up to the fp32 sums'
order. Each program's K loop is unrolled (``tl.static_range``), so its loads issue together.

``python tools/persistent_mlp_bench.py [--layers 30] [--programs 132]`` (the teacher's MLP: d_model 576, d_ff
1,536, 30 layers, bf16, random weights; they are 159 MB, so no layer's weights stay in L2 between replays). It
prints both forms' time per layer, their output difference, and the fraction of the HBM copy rate each reaches
(the weights' bytes over the time). GPU only; the kernel is checked on CPU under Triton's interpreter with one
program (tests/tools/test_persistent_mlp_bench.py).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch
import triton
import triton.language as tl

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _persistent_stages import gate_up_stage, residual_stage, teacher_shape  # noqa: E402
from grid_sync_bench import MAX_SPIN, graph_ms, grid_sync  # noqa: E402


@triton.jit
def _mlp_stack_kernel(
    x_ptr, nw_ptr, wgu_ptr, wd_ptr, h_ptr, counter_ptr, flag_ptr,
    n_layers, eps,  # every offset fits int32: the teacher's 30 layers of W_gu are 53M elements
    D: tl.constexpr, F: tl.constexpr, ROWS_GU: tl.constexpr, ROWS_D: tl.constexpr, BLOCK_K: tl.constexpr,
    BLOCK_F: tl.constexpr, POLL_LOAD: tl.constexpr, MAX_SPIN: tl.constexpr,
):  # fmt: skip
    DT = x_ptr.dtype.element_ty
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    alive = pid >= 0
    syncs = 0
    for layer in range(0, n_layers):
        if alive:  # stage 1: norm, gate|up, SiLU x up -> h
            gate_up_stage(x_ptr, nw_ptr + layer * D, wgu_ptr + layer * (2 * F * D), h_ptr, pid, nprog, eps, DT, D, F,
                          ROWS_GU, BLOCK_K)  # fmt: skip
            syncs += 1
            alive = grid_sync(counter_ptr, syncs * nprog, flag_ptr, POLL_LOAD, MAX_SPIN)
        if alive:  # stage 2: x[rows] += W_d @ h
            residual_stage(wd_ptr + layer * (D * F), h_ptr, x_ptr, pid, nprog, DT, D, F, ROWS_D, BLOCK_F)
            syncs += 1
            alive = grid_sync(counter_ptr, syncs * nprog, flag_ptr, POLL_LOAD, MAX_SPIN)


def mlp_stack(
    x: torch.Tensor, norm_w: torch.Tensor, w_gu: torch.Tensor, w_d: torch.Tensor, eps: float, programs: int,
    rows_gu: int = 32, rows_d: int = 4, block_k: int = 128, block_f: int = 512, num_warps: int = 8,
    poll_load: bool = True, max_spin: int = MAX_SPIN,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """x (D,) -> (x after every layer's ``x + mlp(norm(x))``, flag: 1 where a barrier gave up). norm_w (L, D),
    w_gu (L, 2F, D) with gate / up rows interleaved, w_d (L, D, F), all in x's dtype and contiguous."""
    L, D = norm_w.shape
    F = w_d.shape[2]
    if w_gu.shape != (L, 2 * F, D) or w_d.shape != (L, D, F) or x.shape != (D,):
        raise ValueError(
            f"mlp_stack: shapes x {tuple(x.shape)}, norm_w {tuple(norm_w.shape)}, w_gu {tuple(w_gu.shape)}, "
            f"w_d {tuple(w_d.shape)} do not fit (D,), (L, D), (L, 2F, D), (L, D, F)"
        )
    if (2 * F) % rows_gu or D % rows_d or rows_gu % 2:
        raise ValueError(f"mlp_stack: rows_gu {rows_gu} (even) must divide 2F = {2 * F} and rows_d {rows_d} D = {D}")
    out = x.clone()
    h = torch.empty(F, device=x.device, dtype=x.dtype)
    counter = torch.zeros(1, device=x.device, dtype=torch.int32)
    flag = torch.zeros(1, device=x.device, dtype=torch.int32)
    _mlp_stack_kernel[(programs,)](
        out, norm_w, w_gu, w_d, h, counter, flag, L, eps,
        D=D, F=F, ROWS_GU=rows_gu, ROWS_D=rows_d, BLOCK_K=block_k, BLOCK_F=block_f, POLL_LOAD=poll_load,
        MAX_SPIN=max_spin, num_warps=num_warps,
    )  # fmt: skip
    return out, flag


def mlp_stack_reference(x, norm_w, w_gu, w_d, eps: float) -> torch.Tensor:
    """The same in PyTorch, layer by layer, with ``decode_linear``'s roundings (fp32 sums)."""
    dt = x.dtype
    r = lambda v: v.to(dt).float()  # noqa: E731
    x = x.float()
    for layer in range(norm_w.shape[0]):
        rstd = torch.rsqrt(x.pow(2).mean() + eps)
        xn = r(r(x * rstd) * norm_w[layer].float())
        gu = w_gu[layer].float() @ xn
        g, u = r(gu[0::2]), r(gu[1::2])
        h = r(r(g * torch.sigmoid(g)) * u)
        x = r(w_d[layer].float() @ h + x)
    return x.to(dt)


def gemv_stack(x, norm_w, w_gu, w_d, eps: float) -> torch.Tensor:
    """The decode GEMV's form: two launches a layer (``decode_linear`` with its SwiGLU and residual epilogues)."""
    from archzoo.kernels import decode_linear

    x = x.view(1, -1)
    for layer in range(norm_w.shape[0]):
        h = decode_linear(x, w_gu[layer], norm_w[layer], eps, swiglu=True)
        x = decode_linear(h, w_d[layer], residual=x)
    return x.view(-1)


def _copy_rate(dev) -> float:
    """Bytes a second a device-to-device copy of 1 GiB reaches (the roofline's measure, docs/decode.md)."""
    a = torch.empty(1 << 29, device=dev, dtype=torch.int16)
    b = torch.empty_like(a)
    ms = graph_ms(lambda: b.copy_(a))
    return 2 * a.numel() * 2 / (ms * 1e-3)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", type=int, default=None, help="default: the teacher's (configs/students/teacher.yaml)")
    p.add_argument("--d-model", type=int, default=None, help="default: the teacher's")
    p.add_argument("--d-ff", type=int, default=None, help="default: the teacher's")
    p.add_argument("--programs", default="", help="comma-separated program counts (default: the SMs, and half)")
    p.add_argument("--tiles", default="32x4,16x4,32x8", help="gate|up rows x down rows a tile, comma-separated")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("persistent_mlp_bench: needs a CUDA device (tests/tools/test_persistent_mlp_bench.py: the CPU check)")
        return 2
    dev = torch.device("cuda")
    torch.manual_seed(0)
    t = teacher_shape()
    L, D, F, eps = args.layers or t["L"], args.d_model or t["D"], args.d_ff or t["F"], t["eps"]
    bf = dict(device=dev, dtype=torch.bfloat16)
    x = torch.randn(D, **bf)
    norm_w = 1 + 0.1 * torch.randn(L, D, **bf)
    w_gu = torch.randn(L, 2 * F, D, **bf) / D**0.5
    w_d = torch.randn(L, D, F, **bf) / F**0.5 / L**0.5
    weight_bytes = (w_gu.numel() + w_d.numel() + norm_w.numel()) * 2
    sms = torch.cuda.get_device_properties(dev).multi_processor_count
    rate = _copy_rate(dev)
    counts = [int(c) for c in args.programs.split(",") if c] or [sms, sms // 2]
    want = mlp_stack_reference(x, norm_w, w_gu, w_d, eps).float()
    name = torch.cuda.get_device_name(dev)
    print(f"device: {name} ({sms} SMs, copies at {rate / 1e12:.2f} TB/s); {L} layers, d_model {D}, d_ff {F}, bf16; "
          f"weights {weight_bytes / 1e6:.0f} MB; torch {torch.__version__}, triton {triton.__version__}")  # fmt: skip
    print("| form | programs | tile | us a layer | of the copy rate | max abs diff to the reference | gave up |")
    print("|---|--:|---|--:|--:|--:|---|")
    rows = []

    def emit(form, programs, tile, ms, out, flag):
        diff = (out.float() - want).abs().max().item()
        frac = round(weight_bytes / (ms * 1e-3) / rate, 3)
        r = dict(form=form, programs=programs, tile=tile, us_per_layer=round(ms * 1e3 / L, 3), copy_fraction=frac,
                 max_abs_diff=diff, stalled=flag)  # fmt: skip
        rows.append(r)
        print(f"| {form} | {programs} | {tile} | {r['us_per_layer']} | {r['copy_fraction']:.0%} | {diff:.3g} | "
              f"{'yes' if flag else 'no'} |")  # fmt: skip
        sys.stdout.flush()

    ms = graph_ms(lambda: gemv_stack(x, norm_w, w_gu, w_d, eps))
    emit("decode_linear x 2 a layer (graph)", "-", "-", ms, gemv_stack(x, norm_w, w_gu, w_d, eps), False)
    for programs in counts:
        for tile in args.tiles.split(","):
            rg, rd = (int(v) for v in tile.split("x"))
            out, flag = mlp_stack(x, norm_w, w_gu, w_d, eps, programs, rows_gu=rg, rows_d=rd)
            if flag.item():
                emit("persistent", programs, tile, float("nan"), out, True)
                continue
            ms = graph_ms(lambda p=programs, a=rg, b=rd: mlp_stack(x, norm_w, w_gu, w_d, eps, p, rows_gu=a, rows_d=b))
            emit("persistent", programs, tile, ms, out, False)
    if args.out:
        tmp = args.out + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"device": name, "sms": sms, "copy_rate": rate, "layers": L, "rows": rows}, f, indent=1)
        os.replace(tmp, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
