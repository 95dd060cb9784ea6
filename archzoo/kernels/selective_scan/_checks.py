"""Input validation shared by the naive and Triton selective-scan entry points."""

from __future__ import annotations

import torch

from .._dispatch import check_same_device

_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _float(name: str, t: torch.Tensor) -> None:
    if t.dtype not in _FLOATS:
        raise ValueError(f"{name} must be a real float16/bfloat16/float32/float64 tensor, got dtype {t.dtype}")


def _shape(name: str, t: torch.Tensor | None, shape: tuple[int, ...], what: str) -> None:
    if t is not None and t.shape != shape:  # torch.Size compares with a tuple
        raise ValueError(f"{name} must have shape {what} = {shape}, got {tuple(t.shape)}")


def _bc_shape(name: str, t: torch.Tensor, b: int, d: int, n: int, length: int | None) -> None:
    """B / C: (d, n) constant, (b, n, l) or grouped (b, g, n, l) with d % g == 0 (l omitted for decode)."""
    _float(name, t)
    tail = () if length is None else (length,)
    if length is not None and t.dim() == 2:
        _shape(name, t, (d, n), "(d, n)")
        return
    if t.dim() == 2 + len(tail):
        _shape(name, t, (b, n, *tail), "(b, n, l)" if tail else "(b, n)")
        return
    if t.dim() == 3 + len(tail):
        g = t.shape[1]
        if g < 1 or d % g != 0:
            raise ValueError(f"{name} has {g} groups (dim 1), which must divide d = {d}")
        _shape(name, t, (b, g, n, *tail), "(b, g, n, l)" if tail else "(b, g, n)")
        return
    forms = "(d, n), (b, n, l) or (b, g, n, l)" if tail else "(b, n) or (b, g, n)"
    raise ValueError(f"{name} must have shape {forms}, got {tuple(t.shape)}")


def check_scan(u, delta, A, B, C, D, z, delta_bias, initial_state) -> tuple[int, int, int, int]:
    """Validate selective_scan_fn inputs; returns (b, d, l, n)."""
    if u.dim() != 3:
        raise ValueError(f"u must have shape (b, d, l), got {tuple(u.shape)}")
    b, d, length = u.shape
    _float("u", u)
    _float("delta", delta)
    _shape("delta", delta, (b, d, length), "(b, d, l)")
    if A.is_complex():
        raise ValueError("A must be real; complex A is not supported")
    _float("A", A)
    if A.dim() != 2 or A.shape[0] != d:
        raise ValueError(f"A must have shape (d, n) with d = {d}, got {tuple(A.shape)}")
    n = A.shape[1]
    _bc_shape("B", B, b, d, n, length)
    _bc_shape("C", C, b, d, n, length)
    for name, t, shape, what in (
        ("D", D, (d,), "(d,)"),
        ("z", z, (b, d, length), "(b, d, l)"),
        ("delta_bias", delta_bias, (d,), "(d,)"),
        ("initial_state", initial_state, (b, d, n), "(b, d, n)"),
    ):
        if t is not None:
            _float(name, t)
            _shape(name, t, shape, what)
    check_same_device(u=u, delta=delta, A=A, B=B, C=C, D=D, z=z, delta_bias=delta_bias, initial_state=initial_state)
    return b, d, length, n


def check_update(state, x, dt, A, B, C, D, z, dt_bias) -> tuple[int, int, int]:
    """Validate selective_state_update inputs; returns (b, d, n)."""
    if state.dim() != 3:
        raise ValueError(f"state must have shape (b, d, n), got {tuple(state.shape)}")
    b, d, n = state.shape
    _float("state", state)
    _float("x", x)
    _shape("x", x, (b, d), "(b, d)")
    _float("dt", dt)
    _shape("dt", dt, (b, d), "(b, d)")
    if A.is_complex():
        raise ValueError("A must be real; complex A is not supported")
    _float("A", A)
    _shape("A", A, (d, n), "(d, n)")
    _bc_shape("B", B, b, d, n, None)
    _bc_shape("C", C, b, d, n, None)
    optional = (("D", D, (d,), "(d,)"), ("z", z, (b, d), "(b, d)"), ("dt_bias", dt_bias, (d,), "(d,)"))
    for name, t, shape, what in optional:
        if t is not None:
            _float(name, t)
            _shape(name, t, shape, what)
    check_same_device(state=state, x=x, dt=dt, A=A, B=B, C=C, D=D, z=z, dt_bias=dt_bias)
    return b, d, n


def compute_dtype(*tensors: torch.Tensor | None) -> torch.dtype:
    """float64 when any input is float64, else float32 (the state is never kept in 16 bits)."""
    return torch.float64 if any(t is not None and t.dtype == torch.float64 for t in tensors) else torch.float32
