"""BASED attention in Triton: forward and backward from the d-dim dot products, never expanding the
1 + d + d^2 Taylor features (fla's ``parallel_based`` computes the same function the same way).

With s = q.k * scale (scale = d^-1/2), a = 1 + s + s^2 / 2 (causal), num = a v, den = rowsum(a):

    o = num / (den + eps)

**Forward.** One program per (block of ``BLOCK_M`` queries, batch * head) walks the key blocks of ``BLOCK_N`` up to
its diagonal: s = q k^T, a, then acc += a v and den += rowsum(a), in fp32. It writes o and den (B, H, T) fp32.

**Backward.** With dnum = do / (den + eps) and dden = -(do . o) / (den + eps), da = dnum v^T + dden and
ds = da (1 + s) on the causal pairs:

    dq = scale * ds k          (one program per query block, over the key blocks up to its diagonal)
    dk = scale * ds^T q;  dv = a^T dnum   (one program per key block, over the query blocks from its diagonal)

The dq kernel, launched first, also makes dnum (in the inputs' dtype) and dden (fp32) for its queries from do, o
and den, and writes them for the dk/dv kernel. Both recompute s and a; nothing of size T^2 is kept. Every kernel
writes its outputs whole (no atomics, nothing accumulated across launches), so a config may be run again.

Programs of one (batch, head) run last query block first, so the longest start first and the grid's tail is short
ones (the dk/dv programs run in that order already: the first keys have the most queries).

**Per step.** Only the key blocks that meet the diagonal apply the causal mask; the others (all of them but one or
two at long T) skip it. The forward computes a as s' (c1 + c2 s') + 1 from the unscaled s' = q.k (c1 = scale,
c2 = scale^2 / 2: two FMAs, no rounding of a scaled q); the backward scales the program's own block once (q for
dq, k for dk/dv, rounded to the MMA dtype as fla does) so that ds = da + da s is one FMA.

The work is quadratic in T (as fla's parallel form); the chunked linear-attention form over the expanded features
is linear in T but moves 1 + d + d^2 features per position (``archzoo.kernels.linear_attention``), which is what
the layer runs without this kernel.

**Configs.** Tile sizes (``BLOCK_M`` queries, ``BLOCK_N`` keys), warps and pipeline stages per kernel. On CUDA
above ``SHORT_T`` positions each kernel is autotuned over ``CUDA_CONFIGS`` (bf16 / fp16) or ``FP32_CONFIGS``, keyed
on the power of two at or above T, d, Dv and the dtype (so a new length in the same bucket reuses its pick); at or
below ``SHORT_T`` it runs ``CUDA_DEFAULT`` (``FP32_DEFAULT``). Under the interpreter it runs ``INTERPRET_CONFIG``.
``CONFIG_OVERRIDE`` ({"fwd" | "bwd_dq" | "bwd_dkdv": {"BLOCK_M", "BLOCK_N", "num_warps", "num_stages"}}, any subset)
fixes a kernel's config everywhere; ``last_configs()`` says what each kernel ran last. Every CUDA config compiles
for sm_90 without spills (``python tools/sm90_compile.py --op based --all-configs``).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from .._dispatch import triton_interpreting
from .naive import check_based

MAX_D = 64  # query/key dims (BASED uses 16)
MAX_DV = 128  # value dims a program holds whole
KERNELS = ("fwd", "bwd_dq", "bwd_dkdv")


def _cfg(block_m: int, block_n: int, num_warps: int, num_stages: int) -> dict:
    return dict(BLOCK_M=block_m, BLOCK_N=block_n, num_warps=num_warps, num_stages=num_stages)


# BLOCK_M: queries (per program in fwd / dq, per step in dk/dv); BLOCK_N: keys (per step in fwd / dq, per program in
# dk/dv). Powers of two >= 16. Candidates checked with tools/sm90_compile.py (no spills in bf16), not yet timed.
# Left out of CUDA_CONFIGS: (BLOCK_M, BLOCK_N, num_warps) that spill in bf16 on sm_90 with Triton 3.6 (the GPU
# machine's), and the backward's 128 x 128 at 8 warps, which spill with Triton 3.9 and at 3.6 hold 210-250 registers
# a thread (one program an SM).
_LEFT_OUT = {
    "fwd": {(128, 128, 4)},
    "bwd_dq": {(128, 128, 4), (128, 128, 8)},
    "bwd_dkdv": {(64, 128, 4), (128, 64, 4), (128, 128, 4), (128, 128, 8)},
}
CUDA_CONFIGS: dict[str, list[dict]] = {
    name: [
        _cfg(m, n, w, s)
        for m in ((32, 64, 128) if name == "bwd_dkdv" else (64, 128))
        for n in ((64, 128) if name == "bwd_dkdv" else (32, 64, 128))
        for w in (4, 8)
        for s in (2, 3)  # pipelines the long unmasked loop; the diagonal tiles' loop runs with num_stages=1
        if (m, n, w) not in _LEFT_OUT[name]
    ]
    for name in KERNELS
}
# fp32 inputs (tf32x3 MMAs: three products and fp32 tiles) need smaller tiles; these do not spill either.
FP32_CONFIGS: dict[str, list[dict]] = {
    "fwd": [_cfg(64, 32, 4, 2), _cfg(128, 32, 8, 2), _cfg(64, 32, 8, 2)],
    "bwd_dq": [_cfg(64, 32, 4, 2), _cfg(128, 32, 8, 2), _cfg(64, 32, 8, 2)],
    "bwd_dkdv": [_cfg(16, 64, 4, 2), _cfg(16, 128, 8, 2), _cfg(16, 64, 4, 3)],
}
# T <= SHORT_T (and sm90_compile's default): bf16 / fp16, and fp32
CUDA_DEFAULT: dict[str, dict] = {k: _cfg(64, 64, 4, 2) for k in KERNELS}
FP32_DEFAULT: dict[str, dict] = {k: v[0] for k, v in FP32_CONFIGS.items()}
INTERPRET_CONFIG: dict[str, dict] = {k: _cfg(32, 32, 4, 1) for k in KERNELS}
SHORT_T = 256  # at or below this many positions no autotuning: CUDA_DEFAULT
CONFIG_OVERRIDE: dict[str, dict] = {}


@triton.jit
def _mm(a, b, LOWP: tl.constexpr):
    """a @ b, fp32 accumulation: bf16/fp16 MMAs for low-precision inputs, fp32 ones as tf32x3."""
    if LOWP:
        return tl.dot(a, b)
    return tl.dot(a, b, input_precision="tf32x3")


@triton.jit
def _tile(
    ptr, row0, start, H, cols, T, W: tl.constexpr, BLOCK: tl.constexpr, LOWP: tl.constexpr, ROWS_IN: tl.constexpr
):
    """The (BLOCK, len(cols)) tile of a (B, T, H, W) tensor at positions start .. start + BLOCK of the (batch, head)
    whose position 0 is flat row ``row0`` (int64), zero outside the sequence (unless ``ROWS_IN``: all inside) and
    the width; fp32 unless the MMAs are low-precision."""
    r = start + tl.arange(0, BLOCK)
    p = ptr + (row0 + start * H) * W + tl.arange(0, BLOCK)[:, None] * (H * W) + cols[None, :]
    if ROWS_IN:
        x = tl.load(p, mask=cols[None, :] < W, other=0.0)
    else:
        x = tl.load(p, mask=(r[:, None] < T) & (cols[None, :] < W), other=0.0)
    if not LOWP:
        x = x.to(tl.float32)
    return x


@triton.jit
def _fwd_step(
    acc, den, q, k_ptr, v_ptr, row0, start, rm, H, T, c1, c2,
    D: tl.constexpr, DV: tl.constexpr, BD: tl.constexpr, BV: tl.constexpr, BLOCK_N: tl.constexpr,
    LOWP: tl.constexpr, CAUSAL: tl.constexpr,
):  # fmt: skip
    k = _tile(k_ptr, row0, start, H, tl.arange(0, BD), T, D, BLOCK_N, LOWP, not CAUSAL)
    v = _tile(v_ptr, row0, start, H, tl.arange(0, BV), T, DV, BLOCK_N, LOWP, not CAUSAL)
    s = _mm(q, tl.trans(k), LOWP)  # unscaled
    a = tl.fma(s, tl.fma(s, c2, c1), 1.0)  # 1 + scale s + scale^2 s^2 / 2
    if CAUSAL:  # keys past T only meet padded query rows (not stored)
        a = tl.where(start + tl.arange(0, BLOCK_N)[None, :] <= rm[:, None], a, 0.0)
    den += tl.sum(a, 1)
    acc += _mm(a.to(v.dtype), v, LOWP)  # the weights rounded to the MMA's dtype
    return acc, den


@triton.jit
def _fwd_kernel(
    q_ptr, k_ptr, v_ptr, o_ptr, den_ptr,
    T, T_BUCKET, H, scale, eps,
    D: tl.constexpr, DV: tl.constexpr, BD: tl.constexpr, BV: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, LOWP: tl.constexpr,
):  # fmt: skip
    i_m = tl.num_programs(0) - 1 - tl.program_id(0)  # the longest programs (last queries) start first
    i_bh = tl.program_id(1).to(tl.int64)
    i_b = i_bh // H
    i_h = i_bh % H
    DT = v_ptr.dtype.element_ty
    m0 = i_m * BLOCK_M
    rm = m0 + tl.arange(0, BLOCK_M)
    rv = tl.arange(0, BV)
    row0 = i_b * T * H + i_h  # flat row of (i_b, 0, i_h) in (B, T, H, .)
    q = _tile(q_ptr, row0, m0, H, tl.arange(0, BD), T, D, BLOCK_M, LOWP, False)
    c1 = scale
    c2 = 0.5 * scale * scale
    acc = tl.zeros((BLOCK_M, BV), dtype=tl.float32)
    den = tl.zeros((BLOCK_M,), dtype=tl.float32)
    lo = (m0 // BLOCK_N) * BLOCK_N  # key blocks before lo lie wholly at or before the first query
    for start in range(0, lo, BLOCK_N):
        acc, den = _fwd_step(acc, den, q, k_ptr, v_ptr, row0, start, rm, H, T, c1, c2, D, DV, BD, BV, BLOCK_N,
                             LOWP, False)  # fmt: skip
    for start in tl.range(lo, tl.minimum(m0 + BLOCK_M, T), BLOCK_N, num_stages=1):
        acc, den = _fwd_step(acc, den, q, k_ptr, v_ptr, row0, start, rm, H, T, c1, c2, D, DV, BD, BV, BLOCK_N,
                             LOWP, True)  # fmt: skip
    o = acc / (den + eps)[:, None]
    p_o = o_ptr + (row0 + m0 * H) * DV + tl.arange(0, BLOCK_M)[:, None] * (H * DV) + rv[None, :]
    tl.store(p_o, o.to(DT), mask=(rm[:, None] < T) & (rv[None, :] < DV))
    tl.store(den_ptr + i_bh * T + rm, den, mask=rm < T)


@triton.jit
def _dq_step(
    dq, qs, dnum, dden, k_ptr, v_ptr, row0, start, rm, H, T,
    D: tl.constexpr, DV: tl.constexpr, BD: tl.constexpr, BV: tl.constexpr, BLOCK_N: tl.constexpr,
    LOWP: tl.constexpr, CAUSAL: tl.constexpr,
):  # fmt: skip
    k = _tile(k_ptr, row0, start, H, tl.arange(0, BD), T, D, BLOCK_N, LOWP, not CAUSAL)
    v = _tile(v_ptr, row0, start, H, tl.arange(0, BV), T, DV, BLOCK_N, LOWP, not CAUSAL)
    s = _mm(qs, tl.trans(k), LOWP)  # scaled
    da = _mm(dnum, tl.trans(v), LOWP) + dden[:, None]
    ds = tl.fma(da, s, da)  # da (1 + s)
    if CAUSAL:
        ds = tl.where(start + tl.arange(0, BLOCK_N)[None, :] <= rm[:, None], ds, 0.0)
    dq += _mm(ds.to(k.dtype), k, LOWP)
    return dq


@triton.jit
def _bwd_dq_kernel(
    q_ptr, k_ptr, v_ptr, o_ptr, do_ptr, den_ptr, dnum_ptr, dden_ptr, dq_ptr,
    T, T_BUCKET, H, scale, eps,
    D: tl.constexpr, DV: tl.constexpr, BD: tl.constexpr, BV: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, LOWP: tl.constexpr,
):  # fmt: skip
    i_m = tl.num_programs(0) - 1 - tl.program_id(0)  # the longest programs (last queries) start first
    i_bh = tl.program_id(1).to(tl.int64)
    i_b = i_bh // H
    i_h = i_bh % H
    DT = q_ptr.dtype.element_ty
    m0 = i_m * BLOCK_M
    rm = m0 + tl.arange(0, BLOCK_M)
    rd = tl.arange(0, BD)
    rv = tl.arange(0, BV)
    row0 = i_b * T * H + i_h
    in_m = rm[:, None] < T
    q = _tile(q_ptr, row0, m0, H, rd, T, D, BLOCK_M, LOWP, False)
    qs = (q.to(tl.float32) * scale).to(q.dtype)
    # dnum and dden of these queries (written for the dk/dv kernel, which runs next)
    do = _tile(do_ptr, row0, m0, H, rv, T, DV, BLOCK_M, False, False)  # fp32
    o = _tile(o_ptr, row0, m0, H, rv, T, DV, BLOCK_M, False, False)
    inv = 1.0 / (tl.load(den_ptr + i_bh * T + rm, mask=rm < T, other=1.0) + eps)
    dnum = (do * inv[:, None]).to(DT)
    dden = -tl.sum(do * o, 1) * inv
    off_v = (row0 + m0 * H) * DV + tl.arange(0, BLOCK_M)[:, None] * (H * DV) + rv[None, :]
    tl.store(dnum_ptr + off_v, dnum, mask=in_m & (rv[None, :] < DV))
    tl.store(dden_ptr + i_bh * T + rm, dden, mask=rm < T)
    if not LOWP:
        dnum = dnum.to(tl.float32)
    dq = tl.zeros((BLOCK_M, BD), dtype=tl.float32)
    lo = (m0 // BLOCK_N) * BLOCK_N
    for start in range(0, lo, BLOCK_N):
        dq = _dq_step(dq, qs, dnum, dden, k_ptr, v_ptr, row0, start, rm, H, T, D, DV, BD, BV, BLOCK_N, LOWP, False)
    for start in tl.range(lo, tl.minimum(m0 + BLOCK_M, T), BLOCK_N, num_stages=1):
        dq = _dq_step(dq, qs, dnum, dden, k_ptr, v_ptr, row0, start, rm, H, T, D, DV, BD, BV, BLOCK_N, LOWP, True)
    p_dq = dq_ptr + (row0 + m0 * H) * D + tl.arange(0, BLOCK_M)[:, None] * (H * D) + rd[None, :]
    tl.store(p_dq, (dq * scale).to(DT), mask=in_m & (rd[None, :] < D))


@triton.jit
def _dkdv_step(
    dk, dv, ks, v, q_ptr, dnum_ptr, dden_ptr, row0, i_bh, start, rn, H, T,
    D: tl.constexpr, DV: tl.constexpr, BD: tl.constexpr, BV: tl.constexpr, BLOCK_M: tl.constexpr,
    LOWP: tl.constexpr, CAUSAL: tl.constexpr,
):  # fmt: skip
    # queries past T load as zeros and add nothing (their dnum and dden are zero)
    q = _tile(q_ptr, row0, start, H, tl.arange(0, BD), T, D, BLOCK_M, LOWP, False)
    dnum = _tile(dnum_ptr, row0, start, H, tl.arange(0, BV), T, DV, BLOCK_M, LOWP, False)
    rm = start + tl.arange(0, BLOCK_M)
    dden = tl.load(dden_ptr + i_bh * T + rm, mask=rm < T, other=0.0)
    sT = _mm(ks, tl.trans(q), LOWP)  # (keys, queries), scaled
    aT = tl.fma(sT, tl.fma(sT, 0.5, 1.0), 1.0)
    daT = _mm(v, tl.trans(dnum), LOWP) + dden[None, :]
    dsT = tl.fma(daT, sT, daT)
    if CAUSAL:
        causal = rm[None, :] >= rn[:, None]
        aT = tl.where(causal, aT, 0.0)
        dsT = tl.where(causal, dsT, 0.0)
    dv += _mm(aT.to(dnum.dtype), dnum, LOWP)
    dk += _mm(dsT.to(q.dtype), q, LOWP)
    return dk, dv


@triton.jit
def _bwd_dkdv_kernel(
    q_ptr, k_ptr, v_ptr, dnum_ptr, dden_ptr, dk_ptr, dv_ptr,
    T, T_BUCKET, H, scale,
    D: tl.constexpr, DV: tl.constexpr, BD: tl.constexpr, BV: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, LOWP: tl.constexpr,
):  # fmt: skip
    i_n = tl.program_id(0)
    i_bh = tl.program_id(1).to(tl.int64)
    i_b = i_bh // H
    i_h = i_bh % H
    DT = q_ptr.dtype.element_ty
    n0 = i_n * BLOCK_N
    rn = n0 + tl.arange(0, BLOCK_N)
    rd = tl.arange(0, BD)
    rv = tl.arange(0, BV)
    row0 = i_b * T * H + i_h
    in_n = rn[:, None] < T
    k = _tile(k_ptr, row0, n0, H, rd, T, D, BLOCK_N, LOWP, False)
    ks = (k.to(tl.float32) * scale).to(k.dtype)
    v = _tile(v_ptr, row0, n0, H, rv, T, DV, BLOCK_N, LOWP, False)
    dk = tl.zeros((BLOCK_N, BD), dtype=tl.float32)
    dv = tl.zeros((BLOCK_N, BV), dtype=tl.float32)
    # Query tiles start at the first key (earlier queries see none of these keys); from hi on they lie wholly after
    # the last key.
    hi = n0 + tl.cdiv(BLOCK_N, BLOCK_M) * BLOCK_M
    for start in tl.range(n0, tl.minimum(hi, T), BLOCK_M, num_stages=1):
        dk, dv = _dkdv_step(dk, dv, ks, v, q_ptr, dnum_ptr, dden_ptr, row0, i_bh, start, rn, H, T, D, DV, BD, BV,
                            BLOCK_M, LOWP, True)  # fmt: skip
    for start in range(hi, T, BLOCK_M):
        dk, dv = _dkdv_step(dk, dv, ks, v, q_ptr, dnum_ptr, dden_ptr, row0, i_bh, start, rn, H, T, D, DV, BD, BV,
                            BLOCK_M, LOWP, False)  # fmt: skip
    p_dk = dk_ptr + (row0 + n0 * H) * D + tl.arange(0, BLOCK_N)[:, None] * (H * D) + rd[None, :]
    tl.store(p_dk, (dk * scale).to(DT), mask=in_n & (rd[None, :] < D))
    p_dv = dv_ptr + (row0 + n0 * H) * DV + tl.arange(0, BLOCK_N)[:, None] * (H * DV) + rv[None, :]
    tl.store(p_dv, dv.to(DT), mask=in_n & (rv[None, :] < DV))


_RAW = {"fwd": _fwd_kernel, "bwd_dq": _bwd_dq_kernel, "bwd_dkdv": _bwd_dkdv_kernel}


_TUNERS: dict[tuple, object] = {}  # (kernel, low precision, its config list) -> its autotuner
_LAST: dict[str, tuple[int, str]] = {}  # kernel -> (T, its last config)


def _tuner(name: str, lowp: bool):
    """Kernel ``name`` autotuned over its current CUDA_CONFIGS (bf16 / fp16) or FP32_CONFIGS entry (one autotuner,
    and one cache of picks, per list). Safe to rerun a config: every kernel writes its outputs whole."""
    configs = (CUDA_CONFIGS if lowp else FP32_CONFIGS)[name]
    key = (name, lowp, tuple(tuple(sorted(c.items())) for c in configs))
    if key not in _TUNERS:
        cfgs = [
            triton.Config({"BLOCK_M": c["BLOCK_M"], "BLOCK_N": c["BLOCK_N"]}, num_warps=c["num_warps"],
                          num_stages=c["num_stages"])
            for c in configs
        ]  # fmt: skip
        _TUNERS[key] = triton.autotune(configs=cfgs, key=["T_BUCKET", "D", "DV"])(_RAW[name])
    return _TUNERS[key]


def _describe(cfg: dict, how: str) -> str:
    tiles = f"BLOCK_M={cfg['BLOCK_M']} BLOCK_N={cfg['BLOCK_N']}"
    return f"{tiles} warps={cfg['num_warps']} stages={cfg['num_stages']} ({how})"


def last_configs(T: int | None = None) -> dict[str, str]:
    """{kernel: the config of its last launch (at length ``T`` when given) and how it was chosen: autotuned, default
    (T <= SHORT_T), interpreter or override}."""
    return {name: desc for name, (t, desc) in _LAST.items() if T is None or t == T}


def _launch(name: str, T: int, BH: int, args: tuple, lowp: bool, **consts) -> None:
    """Launch kernel ``name`` over (cdiv(T, its rows per program), BH) programs, its config fixed or autotuned."""
    rows = "BLOCK_N" if name == "bwd_dkdv" else "BLOCK_M"  # what one program owns: keys in dk/dv, else queries
    default = INTERPRET_CONFIG if triton_interpreting() else CUDA_DEFAULT if lowp else FP32_DEFAULT
    if name in CONFIG_OVERRIDE:
        cfg, how = {**default[name], **CONFIG_OVERRIDE[name]}, "override"
    elif triton_interpreting():
        cfg, how = default[name], "interpreter"
    elif T <= SHORT_T:
        cfg, how = default[name], "default"
    else:
        tuner = _tuner(name, lowp)
        tuner[lambda meta: (triton.cdiv(T, meta[rows]), BH)](*args, **consts)
        best = tuner.best_config
        cfg = {**best.kwargs, "num_warps": best.num_warps, "num_stages": best.num_stages}
        _LAST[name] = (T, _describe(cfg, "autotuned"))
        return
    _RAW[name][(triton.cdiv(T, cfg[rows]), BH)](*args, **consts, **cfg)
    _LAST[name] = (T, _describe(cfg, how))


def _tiles(D: int, Dv: int) -> tuple[int, int]:
    return max(16, triton.next_power_of_2(D)), max(16, triton.next_power_of_2(Dv))


def _lowp(dtype: torch.dtype) -> bool:
    # Triton's interpreter computes tl.dot of bf16 operands wrongly: there the tiles are widened to fp32 (as in
    # the linear-attention kernel); compiled, bf16 / fp16 tiles go to the MMAs.
    return dtype in (torch.bfloat16, torch.float16) and not triton_interpreting()


def _consts(q: torch.Tensor, v: torch.Tensor) -> dict:
    D, Dv = q.shape[-1], v.shape[-1]
    BD, BV = _tiles(D, Dv)
    return dict(D=D, DV=Dv, BD=BD, BV=BV, LOWP=_lowp(q.dtype))


class _BasedAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, eps):
        B, T, H, D = q.shape
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        o = torch.empty_like(v)
        den = q.new_empty(B, H, T, dtype=torch.float32)
        scale = 1.0 / math.sqrt(D)
        consts = _consts(q, v)
        args = (q, k, v, o, den, T, triton.next_power_of_2(T), H, scale, float(eps))
        _launch("fwd", T, B * H, args, consts["LOWP"], **consts)
        ctx.save_for_backward(q, k, v, o, den)
        ctx.eps = float(eps)
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, den = ctx.saved_tensors
        B, T, H, D = q.shape
        do = do.contiguous()
        dnum = torch.empty_like(v)  # (B, T, H, Dv) in the inputs' dtype, made by the dq kernel
        dden = den.new_empty(B, H, T)  # fp32
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        scale = 1.0 / math.sqrt(D)
        consts = _consts(q, v)
        tb = triton.next_power_of_2(T)
        dq_args = (q, k, v, o, do, den, dnum, dden, dq, T, tb, H, scale, ctx.eps)
        _launch("bwd_dq", T, B * H, dq_args, consts["LOWP"], **consts)
        dkdv_args = (q, k, v, dnum, dden, dk, dv, T, tb, H, scale)
        _launch("bwd_dkdv", T, B * H, dkdv_args, consts["LOWP"], **consts)
        return dq, dk, dv, None


def based_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Triton BASED attention, differentiable: o (B, T, H, Dv) for q, k (B, T, H, d), v (B, T, H, Dv) of one
    dtype (fp32, bf16 or fp16), d <= ``MAX_D``, Dv <= ``MAX_DV``. See the module docstring."""
    check_based(q, k, v, eps)
    reason = unsupported(q, k, v)
    if reason is not None:
        raise ValueError(reason)
    return _BasedAttention.apply(q, k, v, eps)


def unsupported(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> str | None:
    """Why the Triton kernel cannot take these inputs, or None when it can."""
    if q.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        return f"the Triton kernel takes float32, bfloat16 or float16 inputs, not {q.dtype}"
    if k.dtype != q.dtype or v.dtype != q.dtype:
        return f"the Triton kernel needs q, k, v of one dtype, got {q.dtype}, {k.dtype}, {v.dtype}"
    if q.shape[-1] > MAX_D or v.shape[-1] > MAX_DV:
        return f"query/key dim {q.shape[-1]} > {MAX_D} or value dim {v.shape[-1]} > {MAX_DV}"
    return None
