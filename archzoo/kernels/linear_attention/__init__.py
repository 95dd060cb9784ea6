"""Causal linear attention on feature-mapped queries and keys, fla's ``[B, T, H, D]`` layout.

``linear_attention`` is what layers call; ``naive_linear_attention`` (one step per token) is the
reference that ``chunk_linear_attention`` (the chunked parallel form) is tested against.
``archzoo.kernels.last_backend("linear_attention")`` says which one ran.
"""

from __future__ import annotations

import torch

from .._dispatch import record, use_triton
from .naive import State, chunk_linear_attention, naive_linear_attention

__all__ = ["State", "chunk_linear_attention", "linear_attention", "naive_linear_attention"]


def linear_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    initial_state: State | None = None,
    output_final_state: bool = False,
    normalize: bool = True,
    eps: float = 1e-6,
    *,
    chunk_size: int = 64,
) -> tuple[torch.Tensor, State | None]:
    """o_t = phi(q_t) S_t / (phi(q_t) z_t + eps) for q, k (B, T, H, F), v (B, T, H, Dv).

    See :func:`chunk_linear_attention` for the arguments. There is no Triton kernel for this op
    yet: every device runs the chunked PyTorch form, and where the dispatch rule would pick
    Triton (CUDA tensors, or ``TRITON_INTERPRET=1``) that is logged once.
    """
    S0, z0 = initial_state if initial_state is not None else (None, None)
    reason = "no Triton kernel for linear_attention yet" if use_triton(q, k, v, S0, z0) else None
    record("linear_attention", "chunk", reason)
    return chunk_linear_attention(q, k, v, initial_state, output_final_state, normalize, eps, chunk_size=chunk_size)
