"""Triton kernels of ``moe_decode_experts``: a decode step's routed experts as two GEMV-like launches.

- ``_gate_up_kernel``, grid (F / BLOCK_F, N * K): program (j, a) takes assignment a = token n's k-th choice, reads
  its expert index, and computes rows [j * BLOCK_F, (j + 1) * BLOCK_F) of that expert's gate and up projections
  against x[n] (fp32 sums along d_model), then SiLU(gate) x up with the reference's roundings (gate, up, SiLU and
  the product each rounded to x's dtype), into h (N * K, F).
- ``_down_kernel``, grid (D / BLOCK_N, N): program (j, n) computes rows [j * BLOCK_N, (j + 1) * BLOCK_N) of the
  output for token n: for each of its K choices, the chosen expert's down rows against h times the routing weight
  (rounded as the reference rounds h x w), each choice's sum rounded, the choices summed in fp32, rounded once.

Only the chosen experts' rows are read (2 of 8 experts at top-2: a quarter of the routed weights); each weight
element once per assignment. What the compiled reductions of ``MoE._static`` did in PyTorch, in two launches that
read the weights along d_model / d_ff as the decode GEMV does.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._launch import launch
from .._sizes import sm_count
from ..decode_linear.triton import _round, _swiglu  # roundings to nearest even, also under the interpreter

# BLOCK_F x BLOCK_D: the gate-up program's weight tiles (two fp32 accumulators of that size: 64 registers a thread
# at 4 warps); DOWN_BLOCK_N x DOWN_BLOCK_F the down program's; DOWN_BLOCK_N halved down to DOWN_MIN_BLOCK_N while the
# programs are fewer than PROGRAMS_PER_SM a multiprocessor (batch 1: d_model / 16 = 36 programs for 132 SMs).
CUDA_CONFIG = dict(BLOCK_F=16, BLOCK_D=256, DOWN_BLOCK_N=16, DOWN_MIN_BLOCK_N=4, DOWN_BLOCK_F=256, PROGRAMS_PER_SM=2,
                   num_warps=4)  # fmt: skip
# Under the interpreter (tests): small tiles, so several tiles a row and masked edges run at small shapes.
INTERPRET_CONFIG = dict(BLOCK_F=8, BLOCK_D=16, DOWN_BLOCK_N=8, DOWN_MIN_BLOCK_N=2, DOWN_BLOCK_F=16, PROGRAMS_PER_SM=2,
                        SM_COUNT=4, num_warps=1)  # fmt: skip
CONFIG_OVERRIDE: dict = {}


@triton.jit
def _gate_up_kernel(
    x_ptr, g_ptr, u_ptr, e_ptr, h_ptr,
    D, F, TOP_K,
    s_xn, s_xd, s_ge, s_gf, s_gd, s_ue, s_uf, s_ud, s_en, s_ek,
    BLOCK_F: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    pid_f = tl.program_id(0)
    a = tl.program_id(1)  # assignment: token a // TOP_K, its (a % TOP_K)-th choice
    n = a // TOP_K
    e = tl.load(e_ptr + n * s_en + (a % TOP_K) * s_ek).to(tl.int64)
    offs_f = pid_f * BLOCK_F + tl.arange(0, BLOCK_F)
    mask_f = offs_f < F
    g_rows = g_ptr + e * s_ge + offs_f.to(tl.int64)[:, None] * s_gf
    u_rows = u_ptr + e * s_ue + offs_f.to(tl.int64)[:, None] * s_uf
    acc_g = tl.zeros([BLOCK_F, BLOCK_D], tl.float32)
    acc_u = tl.zeros([BLOCK_F, BLOCK_D], tl.float32)
    for d0 in range(0, D, BLOCK_D):
        offs_d = d0 + tl.arange(0, BLOCK_D)
        mask_d = offs_d < D
        xv = tl.load(x_ptr + n * s_xn + offs_d * s_xd, mask=mask_d, other=0.0).to(tl.float32)
        m2 = mask_f[:, None] & mask_d[None, :]
        gt = tl.load(g_rows + offs_d[None, :] * s_gd, mask=m2, other=0.0).to(tl.float32)
        ut = tl.load(u_rows + offs_d[None, :] * s_ud, mask=m2, other=0.0).to(tl.float32)
        acc_g += gt * xv[None, :]
        acc_u += ut * xv[None, :]
    DT = h_ptr.dtype.element_ty  # gate, up, SiLU(gate) and the product each rounded to x's dtype (to nearest)
    h = _swiglu(tl.sum(acc_g, axis=1), tl.sum(acc_u, axis=1), DT)
    tl.store(h_ptr + a.to(tl.int64) * F + offs_f, h.to(DT), mask=mask_f)


@triton.jit
def _down_kernel(
    h_ptr, d_ptr, e_ptr, w_ptr, out_ptr,
    D, F,
    s_de, s_dd, s_df, s_en, s_ek, s_wn, s_wk, s_on, s_od,
    TOP_K: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_F: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    n = tl.program_id(1)
    offs_n = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < D
    DT = out_ptr.dtype.element_ty
    total = tl.zeros([BLOCK_N], tl.float32)
    for k in tl.static_range(TOP_K):
        e = tl.load(e_ptr + n * s_en + k * s_ek).to(tl.int64)
        wk = _round(tl.load(w_ptr + n * s_wn + k * s_wk).to(tl.float32), DT)  # the routing weight in x's dtype
        d_rows = d_ptr + e * s_de + offs_n.to(tl.int64)[:, None] * s_dd
        h_row = h_ptr + (n * TOP_K + k).to(tl.int64) * F
        acc = tl.zeros([BLOCK_N, BLOCK_F], tl.float32)
        for f0 in range(0, F, BLOCK_F):
            offs_f = f0 + tl.arange(0, BLOCK_F)
            mask_f = offs_f < F
            hw = _round(tl.load(h_row + offs_f, mask=mask_f, other=0.0).to(tl.float32) * wk, DT)
            dt = tl.load(d_rows + offs_f[None, :] * s_df, mask=mask_n[:, None] & mask_f[None, :], other=0.0)
            acc += dt.to(tl.float32) * hw[None, :]
        total += _round(tl.sum(acc, axis=1), DT)  # each choice's output rounded, as the reference's
    tl.store(out_ptr + n * s_on + offs_n * s_od, _round(total, DT).to(DT), mask=mask_n)


def _config(device: torch.device) -> dict:
    return {**(CUDA_CONFIG if device.type == "cuda" else INTERPRET_CONFIG), **CONFIG_OVERRIDE}


def down_block_n(N: int, D: int, device: torch.device) -> int:
    """Rows of output a down program computes: DOWN_BLOCK_N, halved while there are fewer than PROGRAMS_PER_SM
    programs a multiprocessor, not below DOWN_MIN_BLOCK_N."""
    cfg = _config(device)
    if device.type == "cuda":
        sms = sm_count(device.index if device.index is not None else torch.cuda.current_device())
    else:
        sms = cfg["SM_COUNT"]
    bn = cfg["DOWN_BLOCK_N"]
    while bn > cfg["DOWN_MIN_BLOCK_N"] and triton.cdiv(D, bn) * N < sms * cfg["PROGRAMS_PER_SM"]:
        bn //= 2
    return bn


def moe_decode_experts(
    x: torch.Tensor, gate_w: torch.Tensor, up_w: torch.Tensor, down_w: torch.Tensor, top_e: torch.Tensor,
    top_w: torch.Tensor,
) -> torch.Tensor:  # fmt: skip
    """The two launches (the dispatcher checked the arguments; N * K >= 1, fp16 / bf16 / fp32)."""
    N, D = x.shape
    E, F, _ = gate_w.shape
    K = top_e.shape[1]
    cfg = _config(x.device)
    dev = x.get_device() if x.is_cuda else 0
    h = torch.empty((N * K, F), device=x.device, dtype=x.dtype)
    launch(_gate_up_kernel, (triton.cdiv(F, cfg["BLOCK_F"]), N * K), (x, gate_w, up_w, top_e, h),
           (D, F, K, *x.stride(), *gate_w.stride(), *up_w.stride(), *top_e.stride()),
           (cfg["BLOCK_F"], cfg["BLOCK_D"]), cfg["num_warps"], dev)  # fmt: skip
    out = torch.empty((N, D), device=x.device, dtype=x.dtype)
    bn = down_block_n(N, D, x.device)
    launch(_down_kernel, (triton.cdiv(D, bn), N), (h, down_w, top_e, top_w, out),
           (D, F, *down_w.stride(), *top_e.stride(), *top_w.stride(), *out.stride()),
           (K, bn, cfg["DOWN_BLOCK_F"]), cfg["num_warps"], dev)  # fmt: skip
    return out


__all__ = ["CONFIG_OVERRIDE", "CUDA_CONFIG", "INTERPRET_CONFIG", "down_block_n", "moe_decode_experts"]
