"""Selective scan (Mamba's S6): ``selective_scan_fn`` for sequences, ``selective_state_update`` for decode.

Signatures and layouts follow mamba_ssm so the two can be swapped. Dispatch: the Triton kernels
(``triton.py``) for CUDA tensors, and for CPU tensors under ``TRITON_INTERPRET=1``; the naive
reference (``naive.py``) otherwise. ``archzoo.kernels.last_backend(name)`` says which one ran.
"""

from __future__ import annotations

import torch

from .._dispatch import outside_graphs, record, use_triton
from .naive import naive_selective_scan_fn, naive_selective_state_update


def selective_scan_fn(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
    initial_state: torch.Tensor | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Selective scan (Gu & Dao 2023, arXiv:2312.00752), mamba_ssm's signature plus ``initial_state``.

    u, delta, z (b, d, l); A (d, n) real; B, C (d, n), (b, n, l) or grouped (b, g, n, l) with
    d % g == 0 (channel c reads group c // (d / g)); D, delta_bias (d,); initial_state (b, d, n).
    dt = softplus?(delta + delta_bias); h_t = exp(dt A) h_{t-1} + dt B_t u_t; y_t = <C_t, h_t> + D u_t;
    out = y * silu(z). Returns out (b, d, l) in u's dtype, and with ``return_last_state`` also
    the final state (b, d, n) in float32. Differentiable in every tensor argument.
    """
    args = (u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, initial_state)
    if use_triton(u, delta, A, B, C, D, z, delta_bias, initial_state):
        from .triton import selective_scan_fn as fn

        record("selective_scan_fn", "triton")
        return outside_graphs(fn)(*args)
    record("selective_scan_fn", "naive")
    return naive_selective_scan_fn(*args)


def selective_state_update(
    state: torch.Tensor,
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    dt_softplus: bool = False,
) -> torch.Tensor:
    """One decode step (mamba_ssm's signature): ``state`` (b, d, n) is updated IN PLACE.

    x, dt, z (b, d); A (d, n); B, C (b, n) or grouped (b, g, n); D, dt_bias (d,). Returns out (b, d)
    in x's dtype; the same recurrence as one step of ``selective_scan_fn``. Not differentiable.
    """
    args = (state, x, dt, A, B, C, D, z, dt_bias, dt_softplus)
    if use_triton(state, x, dt, A, B, C, D, z, dt_bias):
        from .triton import selective_state_update as fn

        record("selective_state_update", "triton")
        return fn(*args)
    record("selective_state_update", "naive")
    return naive_selective_state_update(*args)


__all__ = [
    "naive_selective_scan_fn",
    "naive_selective_state_update",
    "selective_scan_fn",
    "selective_state_update",
]
