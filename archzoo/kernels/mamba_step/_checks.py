"""Input validation shared by the naive and Triton entry points of ``mamba_decode_step``."""

from __future__ import annotations

import torch

from .._dispatch import check_same_device

_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
MIN_WIDTH, MAX_WIDTH = 2, 8  # causal_conv1d_update's widths


def _float(name: str, t: torch.Tensor) -> None:
    if t.dtype not in _FLOATS:
        raise ValueError(f"{name} must be a float16/bfloat16/float32/float64 tensor, got dtype {t.dtype}")


def _shape(name: str, t: torch.Tensor, shape: tuple[int, ...], what: str) -> None:
    if t.shape != shape:  # torch.Size compares with a tuple
        raise ValueError(f"{name} must have shape {what} = {shape}, got {tuple(t.shape)}")


def check_step(
    x, conv_state, ssm_state, conv_weight, conv_bias, x_proj_weight, dt_proj_weight, A, D, z, dt_bias
) -> tuple[int, int, int, int, int, int]:
    """Validate ``mamba_decode_step``'s inputs; returns (b, d, n, dt_rank, width, state_len).

    Runs at every decode step: it compares ints, dtypes and devices and builds nothing unless it raises."""
    if x.dim() != 2:
        raise ValueError(f"x must have shape (b, d), got {tuple(x.shape)}")
    b, d = x.shape
    _float("x", x)
    _float("conv_weight", conv_weight)
    if conv_weight.dim() != 2 or conv_weight.shape[0] != d:
        raise ValueError(f"conv_weight must have shape (d, width) with d = {d}, got {tuple(conv_weight.shape)}")
    w = conv_weight.shape[1]
    if not MIN_WIDTH <= w <= MAX_WIDTH:
        raise ValueError(f"conv_weight's width must be in {MIN_WIDTH}..{MAX_WIDTH}, got {w}")
    _float("conv_state", conv_state)
    if conv_state.dim() != 3 or conv_state.shape[0] != b or conv_state.shape[1] != d or conv_state.shape[2] < w - 1:
        raise ValueError(
            f"conv_state must have shape (b, d, state_len) = ({b}, {d}, >= width - 1 = {w - 1}), "
            f"got {tuple(conv_state.shape)}"
        )
    _float("ssm_state", ssm_state)
    if ssm_state.dim() != 3 or ssm_state.shape[0] != b or ssm_state.shape[1] != d:
        raise ValueError(f"ssm_state must have shape (b, d, n) with (b, d) = ({b}, {d}), got {tuple(ssm_state.shape)}")
    n = ssm_state.shape[2]
    _float("dt_proj_weight", dt_proj_weight)
    if dt_proj_weight.dim() != 2 or dt_proj_weight.shape[0] != d or dt_proj_weight.shape[1] < 1:
        raise ValueError(f"dt_proj_weight must have shape (d, dt_rank) with d = {d}, got {tuple(dt_proj_weight.shape)}")
    r = dt_proj_weight.shape[1]
    _float("x_proj_weight", x_proj_weight)
    _shape("x_proj_weight", x_proj_weight, (r + 2 * n, d), "(dt_rank + 2 n, d)")
    _float("A", A)
    _shape("A", A, (d, n), "(d, n)")
    for name, t, shape, what in (
        ("conv_bias", conv_bias, (d,), "(d,)"),
        ("D", D, (d,), "(d,)"),
        ("z", z, (b, d), "(b, d)"),
        ("dt_bias", dt_bias, (d,), "(d,)"),
    ):
        if t is not None:
            _float(name, t)
            _shape(name, t, shape, what)
    dev = x.device
    rest = (conv_state, ssm_state, conv_weight, conv_bias, x_proj_weight, dt_proj_weight, A, D, z, dt_bias)
    if any(t is not None and t.device != dev for t in rest):
        check_same_device(x=x, conv_state=conv_state, ssm_state=ssm_state, conv_weight=conv_weight,
                          conv_bias=conv_bias, x_proj_weight=x_proj_weight, dt_proj_weight=dt_proj_weight, A=A, D=D,
                          z=z, dt_bias=dt_bias)  # fmt: skip
    return b, d, n, r, w, conv_state.shape[2]


def compute_dtype(*tensors: torch.Tensor | None) -> torch.dtype:
    """float64 when any input is float64, else float32 (the SSM state is never kept in 16 bits)."""
    return torch.float64 if any(t is not None and t.dtype == torch.float64 for t in tensors) else torch.float32
