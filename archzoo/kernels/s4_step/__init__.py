"""An S4D layer's decode step in one kernel: ``s4d_decode_step`` (issue 18).

    u = RMSNorm(x)                                      (skipped without a norm weight)
    h = dA h + dB u;  y = 2 Re(C . h)  (C . h for real modes)          state = h in place
    y = GELU(y + D u)                                   -> o_proj's input

Compiled by torch.compile this was three kernels an S4 layer, 8.6 us of launches and latency at batch 1 for 295 KB
of state (``triton.py`` has the profile). Dispatch: the Triton kernel (``triton.py``) for CUDA tensors, and for CPU
tensors under ``TRITON_INTERPRET=1``, where the inputs fit (``fused_reason``: fp16 / bf16 / fp32, a state whose
(re, im) pairs are adjacent); the reference (``naive.py``, the layer's own ops) otherwise, the reason recorded.
``archzoo.kernels.last_backend("s4d_decode_step")`` says which ran. Inside ``torch.compile`` the call is a custom op
(``archzoo::s4d_decode_step``, mutating the state), so a compiled decode step traces it whole and a CUDA graph
captures its launch.
"""

from __future__ import annotations

import torch

from .._dispatch import record, use_triton
from .naive import naive_s4d_decode_step

OP = "s4d_decode_step"
_FLOATS = (torch.float16, torch.bfloat16, torch.float32)


def _check(x, norm_weight, state, dA, dB, C, D) -> None:
    if x.dim() != 2:
        raise ValueError(f"x must be (batch, channels), got shape {tuple(x.shape)}")
    B, H = x.shape
    if dA.dim() not in (2, 3) or dA.shape[0] != H or (dA.dim() == 3 and dA.shape[2] != 2):
        raise ValueError(f"dA must be (channels={H}, modes) real or (channels, modes, 2) complex pairs, got "
                         f"{tuple(dA.shape)}")  # fmt: skip
    for name, t in (("dB", dB), ("C", C)):
        if t.shape != dA.shape:
            raise ValueError(f"{name} must have dA's shape {tuple(dA.shape)}, got {tuple(t.shape)}")
    S = dA.shape[1] * (2 if dA.dim() == 3 else 1)
    if state.shape != (B, H, S):
        raise ValueError(f"state must be (batch, channels, state size) = {(B, H, S)}, got {tuple(state.shape)}")
    if D.shape != (H,):
        raise ValueError(f"D must be ({H},), got {tuple(D.shape)}")
    if norm_weight is not None and norm_weight.shape != (H,):
        raise ValueError(f"norm_weight must be ({H},), got {tuple(norm_weight.shape)}")
    tensors = [t for t in (x, norm_weight, state, dA, dB, C, D) if t is not None]
    if len({t.device for t in tensors}) != 1:
        raise ValueError(f"all tensors must be on one device, got {sorted({str(t.device) for t in tensors})}")
    if any(not t.is_floating_point() for t in tensors):
        raise ValueError("every tensor must be floating point")


def fused_reason(x, norm_weight, state, dA, dB, C, D) -> str | None:
    """None when the Triton kernel takes these inputs; else why not. Shapes, dtypes and strides only."""
    if not use_triton(x, state, dA):
        return "not on a device where the Triton kernels run (CUDA, or CPU under TRITON_INTERPRET=1)"
    dts = {t.dtype for t in (x, norm_weight, state, dA, dB, C, D) if t is not None}
    if not dts <= set(_FLOATS):
        return f"dtypes {sorted(map(str, dts))}: the kernel computes in fp32 (float64 takes the reference)"
    if dA.dim() == 3 and state.stride(2) != 1:
        return "the state's (re, im) pairs are not adjacent (its last stride is not 1)"
    return None


def _run(x, norm_weight, eps, state, dA, dB, C, D):
    _check(x, norm_weight, state, dA, dB, C, D)
    why = fused_reason(x, norm_weight, state, dA, dB, C, D)
    # the reason is logged (once) where the kernel could run and does not; a CPU without the interpreter is no news
    record(OP, "naive" if why else "triton", why if why and use_triton(x, state, dA) else None)
    if why:
        return naive_s4d_decode_step(x, norm_weight, eps, state, dA, dB, C, D)
    from .triton import s4d_decode_step as fn

    if dA.dim() == 3:  # the kernel reads a channel's (re, im) pairs as one contiguous row of 2M
        dA, dB, C = (t if t.stride(2) == 1 and t.stride(1) == 2 else t.contiguous() for t in (dA, dB, C))
    return fn(x, norm_weight, eps, state, dA, dB, C, D)


@torch.library.custom_op("archzoo::s4d_decode_step", mutates_args=("state",))
def _op(
    x: torch.Tensor,
    norm_weight: torch.Tensor | None,
    eps: float,
    state: torch.Tensor,
    dA: torch.Tensor,
    dB: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor,
) -> torch.Tensor:
    return _run(x, norm_weight, eps, state, dA, dB, C, D)


@_op.register_fake
def _(x, norm_weight, eps, state, dA, dB, C, D):
    _check(x, norm_weight, state, dA, dB, C, D)  # bad shapes fail at trace time, as in eager
    dtype = x.dtype if norm_weight is None else torch.promote_types(x.dtype, norm_weight.dtype)
    return x.new_empty(x.shape, dtype=dtype)


def s4d_decode_step(
    x: torch.Tensor,
    norm_weight: torch.Tensor | None,
    eps: float,
    state: torch.Tensor,
    dA: torch.Tensor,
    dB: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor,
) -> torch.Tensor:
    """One S4D decode step from the block's input to o_proj's input (module docstring).

    x (B, H), any strides; norm_weight (H,) or None (no norm), ``eps`` the norm's; state (B, H, S), updated IN
    PLACE; dA, dB, C the discretised spectrum (``DiscretizedS4``): (H, M, 2) complex modes as (re, im) pairs (S = 2 M,
    the output 2 Re(C . h)) or (H, M) real modes (S = M); D (H,). Returns (B, H) in the norm's output dtype (x's and
    the norm weight's promoted), computed in fp32 (fp64 inputs: the reference, in fp64). No host synchronisation;
    traceable by ``torch.compile`` (a custom op). Not differentiable. ValueError on bad shapes.
    """
    if torch.compiler.is_compiling():
        return _op(x, norm_weight, eps, state, dA, dB, C, D)
    return _run(x, norm_weight, eps, state, dA, dB, C, D)


__all__ = ["OP", "fused_reason", "naive_s4d_decode_step", "s4d_decode_step"]
