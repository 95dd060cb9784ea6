"""Input validation shared by the naive and Triton causal-conv1d entry points."""

from __future__ import annotations

import torch

from .._dispatch import check_same_device

_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
MIN_WIDTH, MAX_WIDTH = 2, 8


def _float(name: str, t: torch.Tensor) -> None:
    if t.dtype not in _FLOATS:
        raise ValueError(f"{name} must be a float16/bfloat16/float32/float64 tensor, got dtype {t.dtype}")


def check_activation(activation: str | None) -> bool:
    if activation not in (None, "silu", "swish"):
        raise ValueError(f"activation must be None, 'silu' or 'swish', got {activation!r}")
    return activation is not None


def _weight(weight: torch.Tensor, d: int, bias: torch.Tensor | None) -> int:
    _float("weight", weight)
    if weight.dim() != 2 or weight.shape[0] != d:
        raise ValueError(f"weight must have shape (d, width) with d = {d}, got {tuple(weight.shape)}")
    w = weight.shape[1]
    if not MIN_WIDTH <= w <= MAX_WIDTH:
        raise ValueError(f"weight width must be in {MIN_WIDTH}..{MAX_WIDTH}, got {w}")
    if bias is not None:
        _float("bias", bias)
        if bias.dim() != 1 or bias.shape[0] != d:
            raise ValueError(f"bias must have shape (d,) = ({d},), got {tuple(bias.shape)}")
    return w


def check_fn(x, weight, bias, seq_idx, initial_states, final_states_out, activation) -> tuple[int, int, int, int]:
    """Validate causal_conv1d_fn inputs; returns (b, d, l, width)."""
    if x.dim() != 3:
        raise ValueError(f"x must have shape (b, d, l), got {tuple(x.shape)}")
    _float("x", x)
    b, d, length = x.shape
    w = _weight(weight, d, bias)
    if seq_idx is not None:
        raise ValueError("seq_idx (packed sequences) is not supported by archzoo's causal_conv1d_fn; pass None")
    check_activation(activation)
    for name, t in (("initial_states", initial_states), ("final_states_out", final_states_out)):
        if t is not None:
            _float(name, t)
            if tuple(t.shape) != (b, d, w - 1):
                raise ValueError(f"{name} must have shape (b, d, width - 1) = {(b, d, w - 1)}, got {tuple(t.shape)}")
    check_same_device(x=x, weight=weight, bias=bias, initial_states=initial_states, final_states_out=final_states_out)
    return b, d, length, w


def check_update(x, conv_state, weight, bias, activation) -> tuple[int, int, int, int, int]:
    """Validate causal_conv1d_update inputs, x (b, d) or (b, d, s); returns (b, d, s, width, state_len).

    This runs at every decode step, so it compares ints, dtypes and devices and builds nothing unless it raises.
    """
    nd = x.dim()
    if nd == 3:
        b, d, s = x.shape
    elif nd == 2:
        b, d = x.shape
        s = 1
    else:
        raise ValueError(f"x must have shape (b, d) or (b, d, s), got {tuple(x.shape)}")
    _float("x", x)
    w = _weight(weight, d, bias)
    if activation is not None:
        check_activation(activation)
    _float("conv_state", conv_state)
    if conv_state.dim() != 3:
        state_len = -1
    else:
        sb, sd, state_len = conv_state.shape
        if sb != b or sd != d:
            state_len = -1
    if state_len < w - 1:
        raise ValueError(
            f"conv_state must have shape (b, d, state_len) = ({b}, {d}, >= width - 1 = {w - 1}), "
            f"got {tuple(conv_state.shape)}"
        )
    dev = x.device
    if conv_state.device != dev or weight.device != dev or (bias is not None and bias.device != dev):
        check_same_device(x=x, conv_state=conv_state, weight=weight, bias=bias)
    return b, d, s, w, state_len


def compute_dtype(*tensors: torch.Tensor | None) -> torch.dtype:
    return torch.float64 if any(t is not None and t.dtype == torch.float64 for t in tensors) else torch.float32
