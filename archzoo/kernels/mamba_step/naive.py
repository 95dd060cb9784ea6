"""Plain PyTorch reference of one Mamba decode step between in_proj and o_proj (Gu & Dao 2023,
arXiv:2312.00752, Alg. 2 for one token), composed of the naive kernels it fuses:

    xc        = SiLU(conv over (the conv state's last w - 1 inputs, x) + conv_bias)   naive_causal_conv1d_update
    dt, B, C  = x_proj_weight @ xc                                                     F.linear
    dt        = dt_proj_weight @ dt                                                    F.linear
    y         = selective state update (softplus(dt + dt_bias), A, B, C, D, z)         naive_selective_state_update

Everything in float32 (float64 when an input is float64): unlike the unfused decode step, xc, dt, B and C are
not rounded to x's dtype between the ops.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..causal_conv1d.naive import naive_causal_conv1d_update
from ..selective_scan.naive import naive_selective_state_update
from ._checks import check_step, compute_dtype


def naive_mamba_decode_step(
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
    """One Mamba decode step, reference version; ``conv_state`` and ``ssm_state`` are updated IN PLACE.

    Shapes as ``archzoo.kernels.mamba_decode_step``. Returns y (b, d) in x's dtype.
    """
    b, d, n, r, w, state_len = check_step(
        x, conv_state, ssm_state, conv_weight, conv_bias, x_proj_weight, dt_proj_weight, A, D, z, dt_bias
    )
    cdt = compute_dtype(x, conv_state, ssm_state, conv_weight, conv_bias, x_proj_weight, dt_proj_weight, A, D, z,
                        dt_bias)  # fmt: skip
    cs = conv_state.to(cdt)  # the shift is exact in any dtype; a copy unless conv_state is in cdt already
    bias = conv_bias.to(cdt) if conv_bias is not None else None
    xc = naive_causal_conv1d_update(x.to(cdt), cs, conv_weight.to(cdt), bias, "silu")  # (b, d)
    if cs is not conv_state:
        conv_state.copy_(cs)
    dt, Bm, Cm = F.linear(xc, x_proj_weight.to(cdt)).split([r, n, n], dim=-1)  # (b, r), (b, n), (b, n)
    dt = F.linear(dt, dt_proj_weight.to(cdt))  # (b, d)
    y = naive_selective_state_update(ssm_state, xc, dt, A, Bm, Cm, D, z, dt_bias, True)
    return y.to(x.dtype)
