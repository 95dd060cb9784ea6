"""KD loss rows: the distillation divergence, the cross-entropy and their gradient from two logit rows at once.

``kd_loss_rows(student_logits, teacher_logits=None, targets=None, temperature=1.0, grad_scales=None)`` with
logits (n, V) and targets (n,) (ids; -100 ignored) returns per row

- ``kl``: T^2 KL(softmax(z_t / T) || softmax(z_s / T)) (the forward KD divergence; 0 without a teacher);
- ``ce``: -log softmax(z_s)[target] at temperature 1 (0 for an ignored target or without targets; NaN for a
  target outside the vocabulary);
- with ``grad_scales`` = [kl_scale, ce_scale] (a (2,) tensor, on the device so that a per-batch count needs no
  host synchronisation), ``grad`` = d(kl_scale * sum(kl) + ce_scale * sum(ce)) / d student_logits in the
  student logits' dtype; None otherwise.

kl and ce come in fp32 (float64 for float64 logits). Why the gradient comes from the forward call: the caller
(``train.losses.fused_distill_loss``) turns each chunk's logits into hidden-state and LM-head gradients at once
and drops them, so the logits are never rebuilt in the backward pass and no (n, V) fp32 tensor is ever stored.

Dispatch: the Triton kernel (``triton.py``: two passes over each row, one gradient write) for CUDA tensors and
for CPU tensors under ``TRITON_INTERPRET=1``; the naive reference (``naive.py``) otherwise, and for float64.
``archzoo.kernels.last_backend("kd_loss_rows")`` says which ran.
"""

from __future__ import annotations

import torch

from .._dispatch import kernel_failed, record, try_kernel, use_triton
from ._checks import IGNORE_INDEX, check_kd_loss_rows
from .naive import naive_kd_loss_rows


def kd_loss_rows(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor | None = None,
    targets: torch.Tensor | None = None,
    temperature: float = 1.0,
    grad_scales: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """-> (kl (n,), ce (n,), grad (n, V) or None); see the module docstring."""
    check_kd_loss_rows(student_logits, teacher_logits, targets, temperature, grad_scales)
    op = "kd_loss_rows"
    if use_triton(student_logits, teacher_logits, targets, grad_scales):
        dev = student_logits.device.type
        f64 = student_logits.dtype == torch.float64 or (
            teacher_logits is not None and teacher_logits.dtype == torch.float64
        )
        reason = "float64 logits: the kernel computes in fp32; the reference runs" if f64 else kernel_failed(op, dev)
        if reason is None:  # tested in the interpreter; where it does not compile, the reference runs
            from .triton import kd_loss_rows as _triton

            out = try_kernel(
                op, dev, lambda: _triton(student_logits, teacher_logits, targets, temperature, grad_scales)
            )
            if out is not None:
                record(op, "triton")
                return out
            reason = kernel_failed(op, dev)
        record(op, "naive", reason)
        return naive_kd_loss_rows(student_logits, teacher_logits, targets, temperature, grad_scales)
    record(op, "naive")
    return naive_kd_loss_rows(student_logits, teacher_logits, targets, temperature, grad_scales)


__all__ = ["IGNORE_INDEX", "kd_loss_rows", "naive_kd_loss_rows"]
