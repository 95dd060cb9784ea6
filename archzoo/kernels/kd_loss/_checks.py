"""KD loss rows: input validation shared by the dispatcher, the reference and the Triton entry point (STYLE.md 7)."""

from __future__ import annotations

import math

import torch

DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
IGNORE_INDEX = -100  # a target with this id has no cross-entropy (torch's F.cross_entropy default)


def check_kd_loss_rows(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor | None,
    targets: torch.Tensor | None,
    temperature: float,
    grad_scales: torch.Tensor | None,
) -> tuple[int, int]:
    """-> (n, V), or ValueError naming the argument and what it must be."""
    zs = student_logits
    if not isinstance(zs, torch.Tensor) or zs.dim() != 2:
        raise ValueError(f"student_logits must be an (n, V) tensor, got shape {tuple(getattr(zs, 'shape', ()))}")
    n, V = zs.shape
    if V < 1:
        raise ValueError(f"student_logits needs a vocabulary of at least 1, got shape {tuple(zs.shape)}")
    if zs.dtype not in DTYPES:
        raise ValueError(f"student_logits must be float16, bfloat16, float32 or float64, got {zs.dtype}")
    if teacher_logits is None and targets is None:
        raise ValueError("nothing to compute: pass teacher_logits, targets, or both")
    if teacher_logits is not None:
        if not isinstance(teacher_logits, torch.Tensor) or tuple(teacher_logits.shape) != (n, V):
            raise ValueError(f"teacher_logits must have student_logits' shape ({n}, {V}), got "
                             f"{tuple(getattr(teacher_logits, 'shape', ()))}")  # fmt: skip
        if teacher_logits.dtype not in DTYPES:
            raise ValueError(
                f"teacher_logits must be float16, bfloat16, float32 or float64, got {teacher_logits.dtype}"
            )
    if targets is not None:
        if not isinstance(targets, torch.Tensor) or tuple(targets.shape) != (n,):
            raise ValueError(f"targets must be an ({n},) tensor of token ids, got shape "
                             f"{tuple(getattr(targets, 'shape', ()))}")  # fmt: skip
        if targets.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"targets must be int32 or int64 token ids, got {targets.dtype}")
    if (
        isinstance(temperature, bool)
        or not isinstance(temperature, int | float)
        or not (math.isfinite(temperature) and temperature > 0)
    ):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    if grad_scales is not None:
        if not isinstance(grad_scales, torch.Tensor) or tuple(grad_scales.shape) != (2,):
            raise ValueError(f"grad_scales must be a (2,) tensor [kl_scale, ce_scale], got shape "
                             f"{tuple(getattr(grad_scales, 'shape', ()))}")  # fmt: skip
        if not grad_scales.is_floating_point():
            raise ValueError(f"grad_scales must be a floating-point tensor, got {grad_scales.dtype}")
    named = {"student_logits": zs, "teacher_logits": teacher_logits, "targets": targets, "grad_scales": grad_scales}
    devs = {k: t.device for k, t in named.items() if t is not None}
    if len(set(devs.values())) > 1:
        raise ValueError("all tensors must be on one device, got " + ", ".join(f"{k}: {d}" for k, d in devs.items()))
    return n, V
