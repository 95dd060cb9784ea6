"""A Mamba layer's decode step between in_proj and o_proj in one kernel: ``mamba_decode_step`` (issue 18).

    xc       = SiLU(causal conv update(x, conv_state) + conv_bias)     conv_state shifted in place
    dt, B, C = x_proj_weight @ xc                                      (dt_rank, n, n)
    dt       = softplus(dt_proj_weight @ dt + dt_bias)
    h        = exp(dt A) h + dt B xc;  y = C.h + D xc;  y *= SiLU(z)    ssm_state = h in place

Unfused, these are four launches (``causal_conv1d_update``, two GEMVs, ``selective_state_update``); at batch 1
the step is bound by launches, not bytes. Dispatch: the Triton kernel (``triton.py``) for CUDA tensors, and for
CPU tensors under ``TRITON_INTERPRET=1``, where the sizes fit (``fused_step_reason``); on such a device a shape it
does not take runs the unfused kernels, the reason logged once; the naive reference (``naive.py``) otherwise.
``archzoo.kernels.last_backend("mamba_decode_step")`` says which ran: 'triton', 'unfused' or 'naive'.

Inside ``torch.compile`` the call is a custom op (``archzoo::mamba_decode_step``, mutating both states), so a
compiled decode step traces it whole and a CUDA graph captures its launch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .._dispatch import record, use_triton
from ..causal_conv1d import causal_conv1d_update
from ..selective_scan import selective_state_update
from ._checks import check_step
from .naive import naive_mamba_decode_step

OP = "mamba_decode_step"
# The kernel keeps phase 1's accumulators ((dt_rank + 2 n) padded rows) and phase 2's (channels x n) tiles in
# registers: n and dt_rank beyond these would spill (Mamba's defaults: n 16, dt_rank d_model / 16).
MAX_D_STATE = 64
MAX_DT_RANK = 256
NO_TRITON_DEVICE = "not on a device where the Triton kernels run (CUDA, or CPU under TRITON_INTERPRET=1)"


def fused_step_reason(
    x: torch.Tensor,
    conv_state: torch.Tensor,
    ssm_state: torch.Tensor,
    conv_weight: torch.Tensor,
    x_proj_weight: torch.Tensor,
    dt_proj_weight: torch.Tensor,
) -> str | None:
    """None when ``mamba_decode_step`` runs its Triton kernel on these inputs; else why not (``NO_TRITON_DEVICE``
    itself where no Triton kernel runs at all). Reads shapes and devices only: a compiled step may call it."""
    if not use_triton(x, conv_state, ssm_state, conv_weight, x_proj_weight, dt_proj_weight):
        return NO_TRITON_DEVICE
    if ssm_state.dim() != 3 or dt_proj_weight.dim() != 2:
        return None  # the kernel's checks say what is wrong
    n, r = ssm_state.shape[2], dt_proj_weight.shape[1]
    if n > MAX_D_STATE:
        return f"d_state {n} > {MAX_D_STATE}, the fused kernel's limit"
    if r > MAX_DT_RANK:
        return f"dt_rank {r} > {MAX_DT_RANK}, the fused kernel's limit"
    return None


def _unfused(x, conv_state, ssm_state, conv_weight, conv_bias, x_proj_weight, dt_proj_weight, A, D, z, dt_bias):
    """The same step as the unfused kernels run it (xc, dt, B, C rounded to x's dtype between them)."""
    r, n = dt_proj_weight.shape[1], ssm_state.shape[2]
    xc = causal_conv1d_update(x, conv_state, conv_weight, conv_bias, "silu")
    dt, Bm, Cm = F.linear(xc, x_proj_weight.to(xc.dtype)).split([r, n, n], dim=-1)
    dt = F.linear(dt, dt_proj_weight.to(xc.dtype))
    return selective_state_update(ssm_state, xc, dt, A, Bm, Cm, D=D, z=z, dt_bias=dt_bias, dt_softplus=True)


def _run(x, conv_state, ssm_state, conv_weight, conv_bias, x_proj_weight, dt_proj_weight, A, D, z, dt_bias):
    args = (x, conv_state, ssm_state, conv_weight, conv_bias, x_proj_weight, dt_proj_weight, A, D, z, dt_bias)
    why = fused_step_reason(x, conv_state, ssm_state, conv_weight, x_proj_weight, dt_proj_weight)
    if why is None:
        from .triton import mamba_decode_step as fn

        record(OP, "triton")
        return fn(*args)
    if why is NO_TRITON_DEVICE:
        record(OP, "naive")
        return naive_mamba_decode_step(*args)
    check_step(*args)
    record(OP, "unfused", why)
    return _unfused(*args)


@torch.library.custom_op("archzoo::mamba_decode_step", mutates_args=("conv_state", "ssm_state"))
def _step_op(
    x: torch.Tensor,
    conv_state: torch.Tensor,
    ssm_state: torch.Tensor,
    conv_weight: torch.Tensor,
    conv_bias: torch.Tensor | None,
    x_proj_weight: torch.Tensor,
    dt_proj_weight: torch.Tensor,
    A: torch.Tensor,
    D: torch.Tensor | None,
    z: torch.Tensor | None,
    dt_bias: torch.Tensor | None,
) -> torch.Tensor:
    # a new tensor in every path, never a view of an input (a custom op may not return an alias)
    return _run(x, conv_state, ssm_state, conv_weight, conv_bias, x_proj_weight, dt_proj_weight, A, D, z, dt_bias)


@_step_op.register_fake
def _(x, conv_state, ssm_state, conv_weight, conv_bias, x_proj_weight, dt_proj_weight, A, D, z, dt_bias):
    # bad shapes fail at trace time, as in eager
    check_step(x, conv_state, ssm_state, conv_weight, conv_bias, x_proj_weight, dt_proj_weight, A, D, z, dt_bias)
    return x.new_empty(x.shape)


def mamba_decode_step(
    x: torch.Tensor,
    conv_state: torch.Tensor,
    ssm_state: torch.Tensor,
    conv_weight: torch.Tensor,
    conv_bias: torch.Tensor | None,
    x_proj_weight: torch.Tensor,
    dt_proj_weight: torch.Tensor,
    A: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """One Mamba decode step from in_proj's x half to the gated y that o_proj takes (module docstring).

    x, z (b, d), any strides (views of in_proj's output); conv_state (b, d, state_len >= w - 1), the latest conv
    inputs oldest first (causal-conv1d's convention), and ssm_state (b, d, n), both updated IN PLACE;
    conv_weight (d, w) with 2 <= w <= 8; conv_bias, D, dt_bias (d,); x_proj_weight (dt_rank + 2 n, d) (rows:
    dt, B, C; no bias); dt_proj_weight (d, dt_rank); A (d, n) real. Always SiLU after the conv and softplus on dt
    (the Mamba block's). Returns y (b, d) in x's dtype, computed in fp32 (fp64 for fp64 inputs). Float16,
    bfloat16, float32 or float64; the SSM state in its own dtype (fp32 for 16-bit activations). No host
    synchronisation: the call can be captured in a CUDA graph; traceable by ``torch.compile`` (a custom op).
    Not differentiable. ValueError on bad shapes.
    """
    if torch.compiler.is_compiling():
        return _step_op(x, conv_state, ssm_state, conv_weight, conv_bias, x_proj_weight, dt_proj_weight, A, D, z,
                        dt_bias)  # fmt: skip
    return _run(x, conv_state, ssm_state, conv_weight, conv_bias, x_proj_weight, dt_proj_weight, A, D, z, dt_bias)


__all__ = [
    "MAX_DT_RANK",
    "MAX_D_STATE",
    "NO_TRITON_DEVICE",
    "fused_step_reason",
    "mamba_decode_step",
    "naive_mamba_decode_step",
]
