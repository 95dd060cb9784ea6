"""Causal linear attention on feature-mapped queries and keys, fla's ``[B, T, H, D]`` layout.

``linear_attention`` is what layers call; ``naive_linear_attention`` (one step per token) is the
reference that ``chunk_linear_attention`` (the chunked parallel form) is tested against.
``archzoo.kernels.last_backend("linear_attention")`` says which one ran.
"""

from __future__ import annotations

import torch

from .._dispatch import record, use_triton
from .naive import State, chunk_linear_attention, naive_linear_attention, naive_linear_attention_update

__all__ = [
    "State",
    "chunk_linear_attention",
    "linear_attention",
    "linear_attention_update",
    "naive_linear_attention",
    "naive_linear_attention_update",
]


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


def linear_attention_update(
    S: torch.Tensor,
    z: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    normalize: bool = True,
    eps: float = 1e-6,
) -> torch.Tensor:
    """One decode step: ``S += k v^T``, ``z += k`` IN PLACE, then ``o = q S / (q z + eps)``.

    q, k (B, H, F); v (B, H, Dv); S (B, H, F, Dv) and z (B, H, F) the recurrent state (fp32 or wider).
    Returns o (B, H, Dv). The step is a few small element-wise ops and one batched matvec; under
    ``torch.compile`` they fuse, so it runs the reference form on every device (no Triton kernel yet,
    which ``last_backend`` says as "naive").
    """
    if not torch.compiler.is_compiling():
        record("linear_attention_update", "naive")
    return naive_linear_attention_update(S, z, q, k, v, normalize, eps)
