"""The persistent layer-stack kernel of ``persistent_prefetch.py`` for B rows of x at once (issue 18, item 4, and its
batch-16 target: 20,000 tokens/s needs a step of 0.80 ms, where archzoo's captured step of the teacher takes 0.86 on
an H100, most of it latency: docs/decode.md, "Twenty-third session").

The same stages, barriers and roundings as the batch-1 prefetch form, in the form that won there (each barrier
arrived at before the next stage's weight tile is loaded, the wait polling by acquire atomics), with the products as
``tl.dot`` on tensor cores: a stage multiplies the (B, K) activations, normed or not, by its (ROWS, K) weight tile
held in registers, whole along K (B padded to 16 rows, ROWS at least 16: the MMA's smallest tile). Every row is at
the same position ``pos`` (a batch of prompts of one length, as ``archzoo bench decode`` runs them); the caches are
(L, B, HKV, T_max, HD). Attention runs as (row, head, split) tasks, merged by every program as O begins.

``python tools/persistent_batch.py [--batch 1,8,16] [--pos 255] [--programs 132]``: the stack at each batch size
beside archzoo's captured step of the teacher's shape at that batch and its final norm and LM head alone, in one
process. GPU only (tests/tools/test_persistent_batch.py checks it under Triton's interpreter with one program).
"""

from __future__ import annotations

import argparse
import os
import sys

import torch
import triton
import triton.language as tl

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _persistent_stages import (  # noqa: E402
    _attention_stage,
    _rnd,
    _w_tile,
    launch_stack,
    merged_attention_rows,
    teacher_shape,
)
from grid_sync_bench import grid_arrive, grid_sync, grid_wait  # noqa: E402
from persistent_prefetch import MAX_SPIN, rows_for  # noqa: E402
from persistent_step_bench import (  # noqa: E402
    _model_step_ms,
    make_stack,
    prepare,
    step_stack_reference,
    time_stack,
    write_json,
)

MMA_MIN = 16  # tl.dot's smallest M, N and K


@triton.jit
def _rows(v_ptr, B, K: tl.constexpr, BP: tl.constexpr, KP: tl.constexpr):
    """v (B, K) row-major as (BP, KP) fp32, zeros past B rows and K columns."""
    b = tl.arange(0, BP)[:, None]
    k = tl.arange(0, KP)[None, :]
    return tl.load(v_ptr + b * K + k, mask=(b < B) & (k < K), other=0.0).to(tl.float32)


@triton.jit
def _rows_normed(x_ptr, nw_ptr, eps, B, DT: tl.constexpr, K: tl.constexpr, BP: tl.constexpr, KP: tl.constexpr):
    """Each row of x (B, K) times its rstd, rounded, times the norm weight, rounded (``RMSNorm``'s roundings), in DT
    (BP, KP) for ``tl.dot``; zeros past B and K."""
    x = _rows(x_ptr, B, K, BP, KP)
    rstd = 1.0 / tl.sqrt(tl.sum(x * x, axis=1) / K + eps)
    k = tl.arange(0, KP)
    nw = tl.load(nw_ptr + k, mask=k < K, other=0.0).to(tl.float32)
    return _rnd(_rnd(x * rstd[:, None], DT) * nw[None, :], DT).to(DT)


@triton.jit
def _qkv_rows(
    acc, t, q_ptr, kc, vc, cos_ptr, sin_ptr, pos, T_max, B,
    DT: tl.constexpr, H: tl.constexpr, HKV: tl.constexpr, HD: tl.constexpr, ROWS: tl.constexpr, BP: tl.constexpr,
):  # fmt: skip
    """Tile t of Q|K|V for B rows (acc (BP, ROWS) fp32, the tile's rows in one head, RoPE pairs adjacent): rounded,
    RoPE at ``pos`` on Q / K, rounded; Q into q (B, H * HD), K / V into slot ``pos`` of the caches (B, HKV, T_max,
    HD)."""
    HALF: tl.constexpr = ROWS // 2
    r0 = t * ROWS
    a, b2 = tl.split(tl.reshape(_rnd(acc, DT), (BP, HALF, 2)))
    p = (r0 % HD) // 2 + tl.arange(0, HALF)
    c = tl.load(cos_ptr + p)[None, :]
    s = tl.load(sin_ptr + p)[None, :]
    rot = r0 < (H + HKV) * HD  # Q and K rows; V keeps its values
    ra = tl.where(rot, _rnd(a * c - b2 * s, DT), a)
    rb = tl.where(rot, _rnd(b2 * c + a * s, DT), b2)
    vals = tl.reshape(tl.join(ra, rb), (BP, ROWS)).to(DT)
    b = tl.arange(0, BP)[:, None]
    j = (r0 % HD + tl.arange(0, ROWS))[None, :]  # the column within the head
    live = b < B
    if r0 < H * HD:
        tl.store(q_ptr + b * (H * HD) + r0 + tl.arange(0, ROWS)[None, :], vals, mask=live)
    elif r0 < (H + HKV) * HD:
        tl.store(kc + ((b * HKV + (r0 - H * HD) // HD) * T_max + pos) * HD + j, vals, mask=live)
    else:
        tl.store(vc + ((b * HKV + (r0 - (H + HKV) * HD) // HD) * T_max + pos) * HD + j, vals, mask=live)


@triton.jit
def _swiglu_rows(acc, t, h_ptr, B, DT: tl.constexpr, F: tl.constexpr, ROWS: tl.constexpr, BP: tl.constexpr):
    """h[:, tile t's pairs] = silu(g) * u from acc (BP, ROWS) of (gate, up) row pairs, with the unfused roundings."""
    HALF: tl.constexpr = ROWS // 2
    g, u = tl.split(tl.reshape(acc, (BP, HALF, 2)))
    g = _rnd(g, DT)
    s = _rnd(g / (1.0 + tl.exp(-g)), DT)
    b = tl.arange(0, BP)[:, None]
    tl.store(h_ptr + b * F + t * HALF + tl.arange(0, HALF)[None, :], _rnd(s * _rnd(u, DT), DT), mask=b < B)


@triton.jit
def _residual_rows(acc, t, x_ptr, B, DT: tl.constexpr, D: tl.constexpr, ROWS: tl.constexpr, BP: tl.constexpr):
    """x[:, tile t's columns] += acc (BP, ROWS), rounded once."""
    b = tl.arange(0, BP)[:, None]
    ptr = x_ptr + b * D + t * ROWS + tl.arange(0, ROWS)[None, :]
    tl.store(ptr, (acc + tl.load(ptr, mask=b < B, other=0.0).to(tl.float32)).to(DT), mask=b < B)


@triton.jit
def _mm(a, w, DOT_FP32: tl.constexpr):
    """a (BP, KP) @ w (ROWS, KP)^T, fp32, on tensor cores in the operands' type; with DOT_FP32 (set under Triton's
    interpreter, whose ``tl.dot`` gets bf16 tiles wrong: Triton 3.9) in fp32 without TF32: the same products, as a
    bf16 product is exact in fp32."""
    if DOT_FP32:
        return tl.dot(a.to(tl.float32), tl.trans(w.to(tl.float32)), input_precision="ieee")
    return tl.dot(a, tl.trans(w.to(a.dtype)))


@triton.jit
def _batch_stack_kernel(
    x_ptr, n1_ptr, wqkv_ptr, kc_ptr, vc_ptr, wo_ptr, n2_ptr, wgu_ptr, wd_ptr, q_ptr, o_ptr, h_ptr, cos_ptr, sin_ptr,
    counter_ptr, flag_ptr, n_layers, pos, T_max, eps, scale,
    D: tl.constexpr, H: tl.constexpr, HKV: tl.constexpr, HD: tl.constexpr, F: tl.constexpr, B: tl.constexpr,
    ROWS_QKV: tl.constexpr, ROWS_D: tl.constexpr, ROWS_GU: tl.constexpr, BP: tl.constexpr, DP: tl.constexpr,
    AP: tl.constexpr, FP: tl.constexpr, BLOCK_T: tl.constexpr, SPLITS: tl.constexpr, MAX_SPIN: tl.constexpr,
    DOT_FP32: tl.constexpr,
):  # fmt: skip
    DT = x_ptr.dtype.element_ty
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    A: tl.constexpr = H * HD  # attention's output width (O's K)
    NQKV: tl.constexpr = (H + 2 * HKV) * HD
    n_qkv: tl.constexpr = NQKV // ROWS_QKV
    n_d: tl.constexpr = D // ROWS_D
    n_gu: tl.constexpr = 2 * F // ROWS_GU
    CACHE: tl.constexpr = B * HKV * HD  # a layer's cache, per position
    syncs = 0
    wq = _w_tile(wqkv_ptr, pid, n_qkv, ROWS_QKV, D, DP)  # layer 0's Q|K|V tile
    for layer in range(0, n_layers):
        kc = kc_ptr + layer * (CACHE * T_max)
        vc = vc_ptr + layer * (CACHE * T_max)
        # 1. Q|K|V with RoPE and the cache write; O's tile loads while the others arrive
        xn = _rows_normed(x_ptr, n1_ptr + layer * D, eps, B, DT, D, BP, DP)
        if pid < n_qkv:
            _qkv_rows(
                _mm(xn, wq, DOT_FP32), pid, q_ptr, kc, vc, cos_ptr, sin_ptr, pos, T_max, B, DT, H, HKV, HD, ROWS_QKV, BP
            )
        for t in tl.range(pid + nprog, n_qkv, nprog):
            w = _w_tile(wqkv_ptr + layer * (NQKV * D), t, n_qkv, ROWS_QKV, D, DP)
            _qkv_rows(
                _mm(xn, w, DOT_FP32), t, q_ptr, kc, vc, cos_ptr, sin_ptr, pos, T_max, B, DT, H, HKV, HD, ROWS_QKV, BP
            )
        syncs += 1
        grid_arrive(counter_ptr)
        wo = _w_tile(wo_ptr + layer * (D * A), pid, n_d, ROWS_D, A, AP)
        grid_wait(counter_ptr, syncs * nprog, flag_ptr, False, MAX_SPIN)
        # 2. attention, (row, head, split) tasks
        _attention_stage(q_ptr, kc, vc, o_ptr, pid, nprog, pos, T_max, scale, DT, H, HKV, HD, BLOCK_T, SPLITS, B)
        syncs += 1
        grid_sync(counter_ptr, syncs * nprog, flag_ptr, False, MAX_SPIN)
        # 3. O with the residual; gate|up's tile loads while the others arrive
        o = merged_attention_rows(o_ptr, B, DT, H, HD, SPLITS, AP, BP).to(DT)
        if pid < n_d:
            _residual_rows(_mm(o, wo, DOT_FP32), pid, x_ptr, B, DT, D, ROWS_D, BP)
        for t in tl.range(pid + nprog, n_d, nprog):
            w = _w_tile(wo_ptr + layer * (D * A), t, n_d, ROWS_D, A, AP)
            _residual_rows(_mm(o, w, DOT_FP32), t, x_ptr, B, DT, D, ROWS_D, BP)
        syncs += 1
        grid_arrive(counter_ptr)
        wgu = _w_tile(wgu_ptr + layer * (2 * F * D), pid, n_gu, ROWS_GU, D, DP)
        grid_wait(counter_ptr, syncs * nprog, flag_ptr, False, MAX_SPIN)
        # 4. gate|up with the norm and SwiGLU; down's tile loads while the others arrive
        xn = _rows_normed(x_ptr, n2_ptr + layer * D, eps, B, DT, D, BP, DP)
        if pid < n_gu:
            _swiglu_rows(_mm(xn, wgu, DOT_FP32), pid, h_ptr, B, DT, F, ROWS_GU, BP)
        for t in tl.range(pid + nprog, n_gu, nprog):
            w = _w_tile(wgu_ptr + layer * (2 * F * D), t, n_gu, ROWS_GU, D, DP)
            _swiglu_rows(_mm(xn, w, DOT_FP32), t, h_ptr, B, DT, F, ROWS_GU, BP)
        syncs += 1
        grid_arrive(counter_ptr)
        wd = _w_tile(wd_ptr + layer * (D * F), pid, n_d, ROWS_D, F, FP)
        grid_wait(counter_ptr, syncs * nprog, flag_ptr, False, MAX_SPIN)
        # 5. down with the residual; the next layer's Q|K|V tile loads while the others arrive (none after the last)
        hv = _rows(h_ptr, B, F, BP, FP).to(DT)
        if pid < n_d:
            _residual_rows(_mm(hv, wd, DOT_FP32), pid, x_ptr, B, DT, D, ROWS_D, BP)
        for t in tl.range(pid + nprog, n_d, nprog):
            w = _w_tile(wd_ptr + layer * (D * F), t, n_d, ROWS_D, F, FP)
            _residual_rows(_mm(hv, w, DOT_FP32), t, x_ptr, B, DT, D, ROWS_D, BP)
        last = layer + 1 >= n_layers
        syncs += 1
        grid_arrive(counter_ptr)
        wq = _w_tile(wqkv_ptr + (layer + 1) * (NQKV * D), pid + last * n_qkv, n_qkv, ROWS_QKV, D, DP)  # none: masked
        grid_wait(counter_ptr, syncs * nprog, flag_ptr, False, MAX_SPIN)


def make_batch_stack(L, D, H, HKV, HD, F, T_max, pos, B, dtype, device, seed=0, theta: float = 100000.0) -> dict:
    """``persistent_step_bench.make_stack``'s weights with B rows of x (B, D) and caches (L, B, HKV, T_max, HD)."""
    st = make_stack(L, D, H, HKV, HD, F, T_max, pos, dtype, device, seed=seed, theta=theta)
    g = torch.Generator().manual_seed(seed + 1)
    r = lambda *shape: torch.randn(*shape, generator=g).to(dtype).to(device)  # noqa: E731
    return dict(st, x=r(B, D), kc=r(L, B, HKV, T_max, HD), vc=r(L, B, HKV, T_max, HD))


def batch_reference(st: dict, H: int, HKV: int, pos: int, eps: float):
    """``persistent_step_bench.step_stack_reference`` a row at a time: (x (B, D), K cache, V cache)."""
    rows = [step_stack_reference(dict(st, x=st["x"][b], kc=st["kc"][:, b], vc=st["vc"][:, b]), H, HKV, pos, eps)
            for b in range(st["x"].shape[0])]  # fmt: skip
    return tuple(torch.stack([r[i] for r in rows], dim=1 if i else 0) for i in range(3))


def run_batch(st: dict, prep: dict, H: int, HKV: int, pos: int, eps: float, programs: int,
              rows: tuple[int, int, int] | None = None, block_t: int = 64, splits: int | None = None,
              num_warps: int = 8, max_spin: int = MAX_SPIN) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """One launch over the stack on ``persistent_step_bench.prepare``'s tensors of ``make_batch_stack``: (x (B, D)
    after it, flag). ``rows``: the Q|K|V, O / down and gate|up rows a tile (default: the fewest, at least 16, for
    which each stage's tiles fit one a program); ``splits``: attention's splits of the cache a (row, head)
    (default: as many as fill the programs, at most one a tile of ``block_t`` positions)."""
    B, D = st["x"].shape
    L, NQKV, _ = prep["wqkv"].shape
    HD = NQKV // (H + 2 * HKV)
    F, T_max = st["wd"].shape[2], prep["kc"].shape[-2]
    rq, rd, rg = rows or (min(rows_for(NQKV, programs, MMA_MIN), HD), rows_for(D, programs, MMA_MIN),
                          rows_for(2 * F, programs, MMA_MIN))  # fmt: skip
    if (HD % rq or min(rq, rd, rg) < MMA_MIN or (2 * F) % rg or D % rd or H % HKV or not 0 <= pos < T_max
            or min(D, H * HD, F) < MMA_MIN):  # fmt: skip
        raise ValueError(
            f"run_batch: Q|K|V rows {rq} must divide head_dim {HD}, gate|up rows {rg} 2F = {2 * F}, O / down rows "
            f"{rd} D = {D}, each at least {MMA_MIN} (tl.dot's smallest tile), as D, H * head_dim and F; HKV {HKV} "
            f"must divide H = {H}, and 0 <= pos {pos} < T_max {T_max}"
        )
    p2 = triton.next_power_of_2
    if splits is None:
        splits = max(1, min(programs // (B * H), triton.cdiv(pos + 1, block_t)))
    consts = dict(B=B, ROWS_QKV=rq, ROWS_D=rd, ROWS_GU=rg, BP=max(MMA_MIN, p2(B)), DP=p2(D), AP=p2(H * HD), FP=p2(F),
                  BLOCK_T=block_t, SPLITS=splits, MAX_SPIN=max_spin,
                  DOT_FP32=os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"))  # fmt: skip
    return launch_stack(_batch_stack_kernel, st, prep, H, HKV, pos, eps, programs, consts, num_warps)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", default="1,8,16", help="comma-separated batch sizes")
    p.add_argument("--pos", type=int, default=255, help="the new token's position (the cache holds pos before it)")
    p.add_argument("--programs", default="", help="comma-separated program counts (default: the SMs)")
    p.add_argument("--layers", type=int, default=None, help="default: the teacher's")
    p.add_argument("--no-model", action="store_true", help="skip archzoo's own step of the teacher's shape")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("persistent_batch: needs a CUDA device (tests/tools/test_persistent_batch.py: the CPU check)")
        return 2
    dev = torch.device("cuda")
    t = teacher_shape()
    L, D, H, HKV, HD, F, eps = args.layers or t["L"], t["D"], t["H"], t["HKV"], t["HD"], t["F"], t["eps"]
    sms = torch.cuda.get_device_properties(dev).multi_processor_count
    name = torch.cuda.get_device_name(dev)
    print(f"device: {name} ({sms} SMs); {L} layers of the teacher's shape, every row at position {args.pos}, bf16")
    rows = []
    for B in [int(b) for b in args.batch.split(",") if b]:
        st = make_batch_stack(L, D, H, HKV, HD, F, args.pos + 1, args.pos, B, torch.bfloat16, dev, theta=t["theta"])
        want, _, _ = batch_reference(st, H, HKV, args.pos, eps)
        prep = prepare(st, H, HKV)  # made once: the graph times the launch alone (slot pos: the same values)
        weight_bytes = sum(st[k].numel() for k in ("wqkv", "wo", "wgu", "wd", "n1", "n2")) * 2
        kv_bytes = 2 * L * B * HKV * (args.pos + 1) * HD * 2
        for programs in [int(c) for c in args.programs.split(",") if c] or [sms]:
            launch = lambda p=programs, s=st, pr=prep: run_batch(s, pr, H, HKV, args.pos, eps, p)  # noqa: E731
            rows.append(dict(form="persistent", batch=B, programs=programs,
                             **time_stack(launch, want, weight_bytes + kv_bytes)))  # fmt: skip
            print(f"batch {B}, persistent, {programs} programs: {rows[-1]['shown']}")
        if not args.no_model:
            ms, head, backend = _model_step_ms(args.pos, dev, batch=B)
            rows.append(dict(form="archzoo step", batch=B, ms=ms, head_ms=head, backend=backend))
            print(f"batch {B}, archzoo's decode step of the teacher's shape (stack + head + sampling, {backend}): "
                  f"{ms} ms; its final norm and LM head alone {head:.4f} ms")  # fmt: skip
    write_json(args.out, {"device": name, "sms": sms, "pos": args.pos, "layers": L, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
