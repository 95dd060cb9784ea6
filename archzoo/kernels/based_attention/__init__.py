"""BASED attention: linear attention with the second-order Taylor feature map, computed from the raw queries
and keys (``naive.py`` says how the two forms agree).

``based_attention`` is what the BASED layer calls when no state comes in: the Triton kernel (``triton.py``,
quadratic in T, never expanding the 1 + d + d^2 features) for CUDA tensors and for CPU tensors under
``TRITON_INTERPRET=1``, and otherwise the features expanded and ``archzoo.kernels.linear_attention``'s
chunked form. ``naive_based_attention`` is the reference both are tested against.
``archzoo.kernels.last_backend("based_attention")`` says which one ran.
"""

from __future__ import annotations

import torch

from .._dispatch import outside_graphs, record, use_triton
from ..linear_attention import State, linear_attention
from .naive import check_based, naive_based_attention, taylor_features

__all__ = ["based_attention", "final_state", "naive_based_attention", "taylor_features"]

FINAL_STATE_CHUNK = 1024  # positions expanded at a time when the kernel's caller also wants the final state


def based_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    output_final_state: bool = False,
    eps: float = 1e-6,
    *,
    chunk_size: int = 64,
) -> tuple[torch.Tensor, State | None]:
    """o_t = sum_{s<=t} a_ts v_s / (sum_{s<=t} a_ts + eps), a_ts = 1 + s_ts + s_ts^2 / 2, s_ts = q_t.k_s / sqrt(d),
    for q, k (B, T, H, d) before the feature map and v (B, T, H, Dv), from a zero state.

    With ``output_final_state`` also the state a cache continues from: (S (B, H, F, Dv), z (B, H, F)) over the
    F = 1 + d + d^2 Taylor features, as ``linear_attention`` returns it. ``chunk_size``: the chunked form's.
    """
    check_based(q, k, v, eps)
    if use_triton(q, k, v):
        from . import triton as kernel

        reason = kernel.unsupported(q, k, v)
        grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
        if reason is None and output_final_state and grad:
            reason = "a final state with gradients (training through a cache) takes the chunked form"
        if reason is None:
            record("based_attention", "triton")
            o = outside_graphs(kernel.based_attention)(q, k, v, eps)
            return o, (final_state(k, v) if output_final_state else None)
        record("based_attention", "chunk", reason)
    else:
        record("based_attention", "chunk")
    return linear_attention(
        taylor_features(q), taylor_features(k), v, None, output_final_state, True, eps, chunk_size=chunk_size
    )


@torch.no_grad()
def final_state(k: torch.Tensor, v: torch.Tensor) -> State:
    """(S, z) = (sum_t phi(k_t) v_t^T, sum_t phi(k_t)) in at least fp32, expanding ``FINAL_STATE_CHUNK`` positions
    at a time (a prefill's state, not a training quantity: no gradients)."""
    acc = torch.promote_types(k.dtype, torch.float32)
    B, T, H, _ = k.shape
    S = z = None
    for t in range(0, T, FINAL_STATE_CHUNK):
        phi = taylor_features(k[:, t : t + FINAL_STATE_CHUNK].to(acc))  # (B, t', H, F)
        s = torch.einsum("bthf,bthv->bhfv", phi, v[:, t : t + FINAL_STATE_CHUNK].to(acc))
        S, z = (s, phi.sum(1)) if S is None else (S + s, z + phi.sum(1))
    return S, z
