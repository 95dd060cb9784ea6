"""Causal linear attention on feature-mapped queries and keys, fla's ``[B, T, H, D]`` layout.

``linear_attention`` is what layers call: the Triton kernel (``triton.py``) for CUDA tensors and for CPU
tensors under ``TRITON_INTERPRET=1``, the chunked PyTorch form (``chunk_linear_attention``) otherwise.
``naive_linear_attention`` (one step per token) is the reference both are tested against.
``archzoo.kernels.last_backend("linear_attention")`` says which one ran.
"""

from __future__ import annotations

import torch

from .._dispatch import kernel_failed, outside_graphs, record, try_kernel, use_triton
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

    See :func:`chunk_linear_attention` for the arguments. Dispatch: the Triton kernel (``triton.py``,
    chunked forward and backward) for CUDA tensors, and for CPU tensors under ``TRITON_INTERPRET=1``; the
    chunked PyTorch form otherwise, and for inputs the kernel does not take (float64, or q, k, v of
    different dtypes, or a feature dim above ``triton.MAX_FEATURE``), with the reason logged once.
    ``last_backend("linear_attention")`` says which ran.
    """
    S0, z0 = initial_state if initial_state is not None else (None, None)
    if use_triton(q, k, v, S0, z0):
        reason = _triton_unsupported(q, k, v)
        if reason is None:
            from .triton import linear_attention as triton_linear_attention

            record("linear_attention", "triton")
            return outside_graphs(triton_linear_attention)(
                q, k, v, initial_state, output_final_state, normalize, eps, chunk_size=chunk_size
            )
        record("linear_attention", "chunk", reason)
    else:
        record("linear_attention", "chunk")
    return chunk_linear_attention(q, k, v, initial_state, output_final_state, normalize, eps, chunk_size=chunk_size)


# The kernel holds a chunk's whole feature dim in one tile (the normaliser needs all of it), so its shared
# memory grows with F: BASED's Taylor map (1 + F + F^2 = 273 features at F = 16) asked for 784 KiB of the
# H200's 227 KiB. Such feature maps take the chunked PyTorch form (cuBLAS GEMMs) until a kernel tiles F.
MAX_FEATURE = 128


def _triton_unsupported(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> str | None:
    """Why the Triton kernel cannot take these inputs, or None when it can."""
    if q.shape[-1] > MAX_FEATURE:
        return (
            f"feature dim {q.shape[-1]} > {MAX_FEATURE}: the Triton kernel keeps all features of a chunk in one "
            "tile, which does not fit shared memory; the chunked PyTorch form runs"
        )
    if q.dtype == torch.float64:
        return "float64 inputs run the chunked PyTorch form in float64 (the Triton kernel computes in fp32)"
    if q.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        return f"the Triton kernel takes float32, bfloat16 or float16 inputs, not {q.dtype}"
    if k.dtype != q.dtype or v.dtype != q.dtype:
        return f"the Triton kernel needs q, k, v of one dtype, got {q.dtype}, {k.dtype}, {v.dtype}"
    return None


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
    Returns o (B, H, Dv) in q's dtype. Dispatch: the Triton kernel (``recurrent.py``: the state read
    once and written once) for CUDA tensors and under ``TRITON_INTERPRET=1`` with an fp32 state; the
    reference form otherwise (a float64 state, say), with the reason logged once. Inside
    ``torch.compile`` call ``archzoo.kernels.linear_attention_update`` (a custom op) instead.
    """
    _check_update(S, z, q, k, v, eps)
    if use_triton(S, z, q, k, v):
        from .recurrent import linear_attention_update as triton_update
        from .recurrent import unsupported

        op, dev = "linear_attention_update", q.device.type
        reason = unsupported(S, z, q, k, v) or kernel_failed(op, dev)
        if reason is None:  # tested in the interpreter; where it does not compile, the reference form runs
            out = try_kernel(op, dev, lambda: triton_update(S, z, q, k, v, normalize, eps))
            if out is not None:
                record(op, "triton")
                return out
            reason = kernel_failed(op, dev)
        record(op, "naive", reason)
    else:
        record("linear_attention_update", "naive")
    return naive_linear_attention_update(S, z, q, k, v, normalize, eps)


def _check_update(S, z, q, k, v, eps: float) -> None:
    if q.dim() != 3:
        raise ValueError(f"q must be (B, H, F), got shape {tuple(q.shape)}")
    B, H, F = q.shape
    if k.shape != q.shape:
        raise ValueError(f"k must have q's shape {tuple(q.shape)}, got {tuple(k.shape)}")
    if v.dim() != 3 or v.shape[:2] != (B, H):
        raise ValueError(f"v must be (B, H, Dv) with (B, H) = {(B, H)}, got {tuple(v.shape)}")
    if tuple(S.shape) != (B, H, F, v.shape[2]):
        raise ValueError(f"S must be (B, H, F, Dv) = {(B, H, F, v.shape[2])}, got {tuple(S.shape)}")
    if tuple(z.shape) != (B, H, F):
        raise ValueError(f"z must be (B, H, F) = {(B, H, F)}, got {tuple(z.shape)}")
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
