"""Decode GEMV: input validation shared by the dispatcher, the reference and the Triton entry point (STYLE.md 7)."""

from __future__ import annotations

import torch

DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
MAX_M = 16  # rows the Triton kernel takes; more is a GEMM, left to cuBLAS


def check_decode_linear(
    x: torch.Tensor, weight: torch.Tensor, norm_weight: torch.Tensor | None, eps: float
) -> tuple[int, int, int]:
    """-> (M, K, N), or ValueError naming the argument and what it must be."""
    if not isinstance(x, torch.Tensor) or x.dim() != 2:
        raise ValueError(f"x must be an (M, K) tensor, got shape {tuple(getattr(x, 'shape', ()))}")
    M, K = x.shape
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        raise ValueError(f"weight must be an (N, K) tensor (nn.Linear's layout), got shape "
                         f"{tuple(getattr(weight, 'shape', ()))}")  # fmt: skip
    N = weight.shape[0]
    if weight.shape[1] != K:
        raise ValueError(f"weight must have shape (N, K) = (N, {K}) to match x {tuple(x.shape)}, "
                         f"got {tuple(weight.shape)}")  # fmt: skip
    if K < 1 or N < 1:
        raise ValueError(f"K and N must be >= 1, got x {tuple(x.shape)} and weight {tuple(weight.shape)}")
    if norm_weight is not None:
        if not isinstance(norm_weight, torch.Tensor) or tuple(norm_weight.shape) != (K,):
            raise ValueError(f"norm_weight must have shape (K,) = ({K},), got "
                             f"{tuple(getattr(norm_weight, 'shape', ()))}")  # fmt: skip
        if norm_weight.dtype not in DTYPES:
            raise ValueError(f"norm_weight must be float16, bfloat16, float32 or float64, got {norm_weight.dtype}")
    if x.dtype not in DTYPES:
        raise ValueError(f"x must be float16, bfloat16, float32 or float64, got {x.dtype}")
    if weight.dtype != x.dtype:
        raise ValueError(f"x and weight must share a dtype (as F.linear), got {x.dtype} and {weight.dtype}")
    if isinstance(eps, bool) or not isinstance(eps, int | float) or not eps >= 0:
        raise ValueError(f"eps must be a number >= 0, got {eps!r}")
    devs = [t.device for t in (x, weight, norm_weight) if t is not None]
    if len(set(devs)) > 1:
        names = ("x", "weight", "norm_weight")
        raise ValueError("x, weight and norm_weight must be on one device, got "
                         + ", ".join(f"{n}: {d}" for n, d in zip(names, devs, strict=False)))  # fmt: skip
    return M, K, N
