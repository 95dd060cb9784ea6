"""KD loss rows, the reference: the divergence, the cross-entropy and the gradient as PyTorch writes them.

Everything in fp32 (float64 for float64 logits) with ``log_softmax``; the gradient in closed form, which
``tests/kernels/test_kd_loss.py`` checks against autograd.
"""

from __future__ import annotations

import torch

from ._checks import IGNORE_INDEX, check_kd_loss_rows


def naive_kd_loss_rows(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor | None = None,
    targets: torch.Tensor | None = None,
    temperature: float = 1.0,
    grad_scales: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Same contract as ``archzoo.kernels.kd_loss_rows``."""
    n, V = check_kd_loss_rows(student_logits, teacher_logits, targets, temperature, grad_scales)
    ct = torch.promote_types(student_logits.dtype, torch.float32)
    T = float(temperature)
    zs = student_logits.to(ct)
    ls = torch.log_softmax(zs / T, -1)
    kl = zs.new_zeros(n)
    pt = None
    if teacher_logits is not None:
        lt = torch.log_softmax(teacher_logits.to(ct) / T, -1)
        pt = lt.exp()
        kl = torch.where(pt > 0, pt * (lt - ls), 0.0).sum(-1) * (T * T)
    ce = zs.new_zeros(n)
    valid = None
    if targets is not None:
        valid = targets != IGNORE_INDEX
        inrange = (targets >= 0) & (targets < V)
        l1 = torch.log_softmax(zs, -1)
        picked = l1.gather(1, torch.where(inrange, targets, 0).long()[:, None])[:, 0]
        ce = torch.where(valid, torch.where(inrange, -picked, float("nan")), 0.0)
    if grad_scales is None:
        return kl, ce, None
    s = grad_scales.to(ct)
    grad = zs.new_zeros(n, V)
    if pt is not None:
        grad = grad + s[0] * T * (ls.exp() - pt)  # d(T^2 KL)/dz_s = T (p_s - p_t), p at temperature T
    if targets is not None:
        onehot = torch.zeros_like(zs).scatter_(1, torch.where(valid & inrange, targets, 0).long()[:, None], 1.0)
        onehot = onehot * (valid & inrange)[:, None]
        row_scale = torch.where(valid, s[1], 0.0)[:, None]
        grad = grad + row_scale * (torch.softmax(zs, -1) - onehot)  # d CE/dz_s = p_s(T=1) - onehot
    return kl, ce, grad.to(student_logits.dtype)
