"""Decode GEMV: input validation shared by the dispatcher, the reference and the Triton entry point (STYLE.md 7)."""

from __future__ import annotations

import torch

DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
MAX_M = 64  # rows the Triton kernel takes (batch x tokens of a decode step); more is left to cuBLAS


def check_decode_linear(
    x: torch.Tensor, weight: torch.Tensor, norm_weight: torch.Tensor | None, eps: float,
    residual: torch.Tensor | None = None, swiglu: bool = False, bias: torch.Tensor | None = None,
) -> tuple[int, int, int]:  # fmt: skip
    """-> (M, K, N) (N: weight's rows; the output has N // 2 columns with ``swiglu``), or ValueError naming the
    argument and what it must be."""
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
    if not isinstance(swiglu, bool):
        raise ValueError(f"swiglu must be a bool, got {swiglu!r}")
    if swiglu and N % 2:
        raise ValueError(f"swiglu needs weight's rows as (gate, up) pairs: an even N, got N={N}")
    if residual is not None:
        if swiglu:
            raise ValueError("residual and swiglu cannot be combined (the residual is added to the (M, N) output)")
        if not isinstance(residual, torch.Tensor) or tuple(residual.shape) != (M, N):
            raise ValueError(f"residual must have shape (M, N) = ({M}, {N}), got "
                             f"{tuple(getattr(residual, 'shape', ()))}")  # fmt: skip
        if residual.dtype != x.dtype:
            raise ValueError(f"residual must be in x's dtype {x.dtype}, got {residual.dtype}")
    if bias is not None:
        if swiglu:
            raise ValueError("bias and swiglu cannot be combined (the gate and up rows carry no bias here)")
        if not isinstance(bias, torch.Tensor) or tuple(bias.shape) != (N,):
            raise ValueError(f"bias must have shape (N,) = ({N},), got {tuple(getattr(bias, 'shape', ()))}")
        if bias.dtype != x.dtype:
            raise ValueError(f"bias must be in x's dtype {x.dtype} (as F.linear), got {bias.dtype}")
    names = ("x", "weight", "norm_weight", "residual", "bias")
    devs = [(n, t.device) for n, t in zip(names, (x, weight, norm_weight, residual, bias), strict=True)
            if t is not None]  # fmt: skip
    if len({d for _, d in devs}) > 1:
        raise ValueError("x, weight, norm_weight, residual and bias must be on one device, got "
                         + ", ".join(f"{n}: {d}" for n, d in devs))  # fmt: skip
    return M, K, N


def check_conv_epilogue(
    x: torch.Tensor, N: int, conv_state: torch.Tensor, conv_weight: torch.Tensor, conv_bias: torch.Tensor | None
) -> int:
    """-> D, the columns that go through the causal conv (Mamba's in_proj: x's D columns, then z's), or ValueError
    naming the argument: conv_weight (D, W), 2 <= W <= 8, D <= N; conv_state (M, D, W - 1) (Mamba's layout, updated
    in place); conv_bias (D,) or None; all on x's device."""
    M = x.shape[0]
    if not isinstance(conv_weight, torch.Tensor) or conv_weight.dim() != 2 or not 2 <= conv_weight.shape[1] <= 8:
        raise ValueError(f"conv_weight must be (D, W) with 2 <= W <= 8, got {tuple(getattr(conv_weight, 'shape', ()))}")
    D, W = conv_weight.shape
    if D > N:
        raise ValueError(f"conv_weight has {D} channels, more than the projection's {N} outputs")
    if not isinstance(conv_state, torch.Tensor) or tuple(conv_state.shape) != (M, D, W - 1):
        raise ValueError(f"conv_state must be (M, D, W - 1) = ({M}, {D}, {W - 1}), got "
                         f"{tuple(getattr(conv_state, 'shape', ()))}")  # fmt: skip
    if conv_state.dtype not in DTYPES[:3] or conv_weight.dtype not in DTYPES[:3]:
        raise ValueError(f"conv_state and conv_weight must be float16, bfloat16 or float32, got {conv_state.dtype} "
                         f"and {conv_weight.dtype}")  # fmt: skip
    if conv_bias is not None and (not isinstance(conv_bias, torch.Tensor) or tuple(conv_bias.shape) != (D,)):
        raise ValueError(f"conv_bias must have shape (D,) = ({D},), got {tuple(getattr(conv_bias, 'shape', ()))}")
    for name, t in (("conv_state", conv_state), ("conv_weight", conv_weight), ("conv_bias", conv_bias)):
        if t is not None and t.device != x.device:
            raise ValueError(f"{name} must be on x's device {x.device}, got {t.device}")
    return D
