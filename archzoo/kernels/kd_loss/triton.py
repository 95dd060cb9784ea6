"""KD loss rows in Triton: one program per row streams the vocabulary twice and writes the gradient once.

Pass 1 keeps running log-sum-exps (max and scaled sum, updated per block) of the student's logits at
temperature T, the teacher's at T and, when T != 1 and there are targets, the student's at 1 for the
cross-entropy. Pass 2 re-reads the logits, accumulates T^2 KL(p_t || p_s) over the row and, when a gradient is
asked for, writes ``kl_scale * T * (p_s - p_t) + ce_scale * (softmax(z_s) - onehot)`` in the logits' dtype.

Bytes per row: the student's and teacher's logits read twice and the gradient written once, against the
half-dozen full fp32 (n, V) tensors PyTorch's log_softmax / exp / subtract / multiply / sum and their backward
pass make; nothing of size (n, V) is written in fp32. All arithmetic is in fp32 whatever the logits' dtype.
Where a teacher probability underflows to 0 its KL term is 0 (the limit of p log p), as in the reference.
A target outside [0, V) (other than the ignore index) gives a NaN cross-entropy instead of reading out of
bounds, so the trainer's finite-loss check names the step.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._checks import IGNORE_INDEX, check_kd_loss_rows

# Sizes on CUDA (first guess, not yet run on a GPU): a 49k vocabulary is 12 blocks of 4096 per pass, 16 fp32
# values a thread per tensor at 8 warps. Under the interpreter (tests): tiny blocks, so rows span several
# blocks and end in a partial one.
CUDA_CONFIG = dict(BLOCK_V=4096, num_warps=8)
INTERPRET_CONFIG = dict(BLOCK_V=16, num_warps=1)


@triton.jit
def _kd_rows_kernel(
    zs_ptr, zt_ptr, tgt_ptr, scale_ptr, kl_ptr, ce_ptr, grad_ptr,
    V, stride_s, stride_t, stride_g, T, IGNORE,
    HAS_TEACHER: tl.constexpr, HAS_TARGETS: tl.constexpr, NEED_GRAD: tl.constexpr, SAME_T: tl.constexpr,
    BLOCK_V: tl.constexpr,
):  # fmt: skip
    row = tl.program_id(0).to(tl.int64)
    zs_row = zs_ptr + row * stride_s
    zt_row = zt_ptr + row * stride_t
    offs = tl.arange(0, BLOCK_V)
    inv_T = 1.0 / T

    # pass 1: log-normalisers
    m_s = float("-inf")
    d_s = 0.0
    m_t = float("-inf")
    d_t = 0.0
    m_1 = float("-inf")
    d_1 = 0.0
    for start in range(0, V, BLOCK_V):
        cols = start + offs
        mask = cols < V
        x = tl.load(zs_row + cols, mask=mask, other=float("-inf")).to(tl.float32)
        xs = x * inv_T
        m_new = tl.maximum(m_s, tl.max(xs, 0))
        d_s = d_s * tl.exp(m_s - m_new) + tl.sum(tl.exp(xs - m_new), 0)
        m_s = m_new
        if HAS_TEACHER:
            y = tl.load(zt_row + cols, mask=mask, other=float("-inf")).to(tl.float32) * inv_T
            m_new = tl.maximum(m_t, tl.max(y, 0))
            d_t = d_t * tl.exp(m_t - m_new) + tl.sum(tl.exp(y - m_new), 0)
            m_t = m_new
        if HAS_TARGETS and not SAME_T:
            m_new = tl.maximum(m_1, tl.max(x, 0))
            d_1 = d_1 * tl.exp(m_1 - m_new) + tl.sum(tl.exp(x - m_new), 0)
            m_1 = m_new
    lse_s = m_s + tl.log(d_s)
    lse_t = 0.0
    if HAS_TEACHER:
        lse_t = m_t + tl.log(d_t)
    lse_1 = lse_s
    if HAS_TARGETS and not SAME_T:
        lse_1 = m_1 + tl.log(d_1)

    # the cross-entropy from the target's logit
    ce_scale = 0.0
    tgt = 0
    if HAS_TARGETS:
        tgt = tl.load(tgt_ptr + row).to(tl.int64)
        valid = tgt != IGNORE
        inrange = (tgt >= 0) & (tgt < V)
        z_tgt = tl.load(zs_row + tgt, mask=valid & inrange, other=0.0).to(tl.float32)
        ce = tl.where(valid, tl.where(inrange, lse_1 - z_tgt, float("nan")), 0.0)
        tl.store(ce_ptr + row, ce)
        if NEED_GRAD:
            ce_scale = tl.where(valid, tl.load(scale_ptr + 1).to(tl.float32), 0.0)
            tgt = tl.where(valid & inrange, tgt, -1)  # no one-hot column for an ignored / bad target
    kl_scale = 0.0
    if NEED_GRAD and HAS_TEACHER:
        kl_scale = tl.load(scale_ptr).to(tl.float32) * T

    # pass 2: KL terms and the gradient
    if HAS_TEACHER or NEED_GRAD:
        kl_acc = tl.zeros([BLOCK_V], dtype=tl.float32)
        for start in range(0, V, BLOCK_V):
            cols = start + offs
            mask = cols < V
            x = tl.load(zs_row + cols, mask=mask, other=0.0).to(tl.float32)
            ls = x * inv_T - lse_s
            ps = tl.exp(ls)
            g = tl.zeros([BLOCK_V], dtype=tl.float32)
            if HAS_TEACHER:
                lt = tl.load(zt_row + cols, mask=mask, other=0.0).to(tl.float32) * inv_T - lse_t
                pt = tl.exp(lt)
                kl_acc += tl.where(mask & (pt > 0), pt * (lt - ls), 0.0)
                g += kl_scale * (ps - pt)
            if NEED_GRAD:
                if HAS_TARGETS:
                    if SAME_T:
                        p1 = ps
                    else:
                        p1 = tl.exp(x - lse_1)
                    g += ce_scale * (p1 - tl.where(cols == tgt, 1.0, 0.0))
                tl.store(grad_ptr + row * stride_g + cols, g.to(grad_ptr.dtype.element_ty), mask=mask)
        if HAS_TEACHER:
            tl.store(kl_ptr + row, tl.sum(kl_acc, 0) * T * T)


def _config(device: torch.device) -> dict:
    return CUDA_CONFIG if device.type == "cuda" else INTERPRET_CONFIG


def _rows(z: torch.Tensor) -> torch.Tensor:
    return z if z.stride(-1) == 1 else z.contiguous()


def kd_loss_rows(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor | None = None,
    targets: torch.Tensor | None = None,
    temperature: float = 1.0,
    grad_scales: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Same contract as ``archzoo.kernels.kd_loss_rows``; float16 / bfloat16 / float32 logits."""
    n, V = check_kd_loss_rows(student_logits, teacher_logits, targets, temperature, grad_scales)
    zs = _rows(student_logits)
    zt = _rows(teacher_logits) if teacher_logits is not None else None
    kl = torch.zeros(n, device=zs.device, dtype=torch.float32)
    ce = torch.zeros(n, device=zs.device, dtype=torch.float32)
    grad = torch.empty_like(zs) if grad_scales is not None else None
    if n == 0:
        return kl, ce, grad
    cfg = _config(zs.device)
    tgt = targets.contiguous() if targets is not None else kl  # unread when there are no targets
    scales = grad_scales.float().contiguous() if grad_scales is not None else kl
    _kd_rows_kernel[(n,)](
        zs, zt if zt is not None else zs, tgt, scales, kl, ce, grad if grad is not None else zs,
        V, zs.stride(0), (zt if zt is not None else zs).stride(0), grad.stride(0) if grad is not None else 0,
        float(temperature), IGNORE_INDEX,
        HAS_TEACHER=zt is not None, HAS_TARGETS=targets is not None, NEED_GRAD=grad is not None,
        SAME_T=float(temperature) == 1.0, BLOCK_V=cfg["BLOCK_V"], num_warps=cfg["num_warps"],
    )  # fmt: skip
    return kl, ce, grad
