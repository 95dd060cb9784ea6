"""Depthwise causal conv1d: ``causal_conv1d_fn`` (sequences, differentiable) and ``causal_conv1d_update`` (decode).

Signatures and layouts follow the causal-conv1d package so the two can be swapped. Dispatch:
the Triton kernels (``triton.py``) for CUDA tensors, and for CPU tensors under
``TRITON_INTERPRET=1``; the naive reference (``naive.py``) otherwise.

The causal-conv1d package (optional extra ``archzoo[cuda]``) is used only when asked for:
``set_backend("causal_conv1d")`` (or env ``ARCHZOO_CAUSAL_CONV1D_BACKEND=causal_conv1d``) uses it on
CUDA for the widths it supports (2..4) and our Triton kernel otherwise, logging the reason once.
``archzoo.kernels.last_backend("causal_conv1d_fn")`` reports which backend ran.
"""

from __future__ import annotations

import importlib.util
import os

import torch

from .._dispatch import outside_graphs, record, use_triton
from .naive import naive_causal_conv1d_fn, naive_causal_conv1d_update

_BACKENDS = ("triton", "causal_conv1d")
_backend = os.environ.get("ARCHZOO_CAUSAL_CONV1D_BACKEND", "triton")
if _backend not in _BACKENDS:
    raise ValueError(f"ARCHZOO_CAUSAL_CONV1D_BACKEND must be one of {', '.join(_BACKENDS)}, got {_backend!r}")


def set_backend(name: str) -> None:
    """Choose the CUDA backend: 'triton' (archzoo's kernels, default) or 'causal_conv1d' (the package)."""
    global _backend
    if name not in _BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(_BACKENDS)}, got {name!r}")
    if name == "causal_conv1d" and importlib.util.find_spec("causal_conv1d") is None:
        raise ValueError("backend 'causal_conv1d' needs the causal-conv1d package, which is not installed")
    _backend = name


def get_backend() -> str:
    return _backend


def _package_reason(x: torch.Tensor, weight: torch.Tensor, channel_last_needed: bool) -> str | None:
    """None when the causal-conv1d package can run these inputs, else why not."""
    if not x.is_cuda:
        return "not a CUDA tensor"
    if not 2 <= weight.shape[1] <= 4:
        return f"width {weight.shape[1]} is outside the package's 2..4"
    if x.dtype == torch.float64 or weight.dtype == torch.float64:
        return "float64 is not supported by the package"
    if channel_last_needed and x.stride(1) != 1:
        return "the package returns final states only for channel-last x"
    return None


def causal_conv1d_fn(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    seq_idx: torch.Tensor | None = None,
    initial_states: torch.Tensor | None = None,
    return_final_states: bool = False,
    final_states_out: torch.Tensor | None = None,
    activation: str | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Depthwise causal conv (the short conv of H3 / Mamba, arXiv:2212.14052, arXiv:2312.00752).

    x (b, d, l); weight (d, w) with 2 <= w <= 8; bias (d,); initial_states (b, d, w - 1), the inputs
    just before x (zeros if None); activation None | 'silu' | 'swish'. Returns out (b, d, l) in x's
    dtype, and with ``return_final_states`` also the last w - 1 inputs (b, d, w - 1), the decode
    state to continue from. ``seq_idx`` must be None. Differentiable in x, weight, bias and
    initial_states.
    """
    args = (x, weight, bias, seq_idx, initial_states, return_final_states, final_states_out, activation)
    if use_triton(x, weight, bias, initial_states, final_states_out):
        if _backend == "causal_conv1d":
            reason = _package_reason(x, weight, return_final_states)
            if reason is None and seq_idx is None:
                from causal_conv1d import causal_conv1d_fn as pkg_fn

                record("causal_conv1d_fn", "causal_conv1d", "set_backend('causal_conv1d')")
                return pkg_fn(*args)
            record("causal_conv1d_fn", "triton", f"causal_conv1d package not used: {reason}")
        else:
            record("causal_conv1d_fn", "triton")
        from .triton import causal_conv1d_fn as fn

        return outside_graphs(fn)(*args)
    record("causal_conv1d_fn", "naive")
    return naive_causal_conv1d_fn(*args)


def causal_conv1d_update(
    x: torch.Tensor,
    conv_state: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str | None = None,
) -> torch.Tensor:
    """Decode step(s) of the causal conv; ``conv_state`` (b, d, state_len >= w - 1) is updated IN PLACE.

    x (b, d) or (b, d, s); the state holds the latest inputs, oldest first (causal-conv1d's
    convention; Mamba allocates state_len = w). Returns out with x's shape and dtype.
    """
    args = (x, conv_state, weight, bias, activation)
    if use_triton(x, conv_state, weight, bias):
        if _backend == "causal_conv1d":
            reason = _package_reason(x, weight, False)
            if reason is None:
                from causal_conv1d import causal_conv1d_update as pkg_fn

                record("causal_conv1d_update", "causal_conv1d", "set_backend('causal_conv1d')")
                return pkg_fn(*args)
            record("causal_conv1d_update", "triton", f"causal_conv1d package not used: {reason}")
        else:
            record("causal_conv1d_update", "triton")
        from .triton import causal_conv1d_update as fn

        return fn(*args)
    record("causal_conv1d_update", "naive")
    return naive_causal_conv1d_update(*args)


__all__ = [
    "causal_conv1d_fn",
    "causal_conv1d_update",
    "get_backend",
    "naive_causal_conv1d_fn",
    "naive_causal_conv1d_update",
    "set_backend",
]
