"""Plain PyTorch reference of the depthwise causal 1-D convolution (Mamba's short conv,
Gu & Dao 2023, arXiv:2312.00752, Sec. 3.4; H3, Fu et al. 2023, arXiv:2212.14052).

Same signatures as ``triton.py`` and as the causal-conv1d package. out[b, c, t] =
act(bias[c] + sum_k weight[c, k] * x[b, c, t - (w - 1) + k]) with x[t < 0] taken from
``initial_states`` (zeros by default). Float32 (float64 for float64 inputs); autograd gives
the gradients.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._checks import check_activation, check_fn, check_update, compute_dtype


def _conv(xp: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, length: int) -> torch.Tensor:
    """xp (b, d, w - 1 + length) padded input -> (b, d, length), as a sum over the w taps."""
    w = weight.shape[1]
    out = sum(weight[:, k, None] * xp[:, :, k : k + length] for k in range(w))
    return out if bias is None else out + bias[:, None]


def naive_causal_conv1d_fn(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    seq_idx: torch.Tensor | None = None,
    initial_states: torch.Tensor | None = None,
    return_final_states: bool = False,
    final_states_out: torch.Tensor | None = None,
    activation: str | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Depthwise causal conv, reference version.

    x (b, d, l); weight (d, w), 2 <= w <= 8; bias (d,); initial_states (b, d, w - 1) are the inputs
    before x (zeros if None); activation None | 'silu' | 'swish'. Returns out (b, d, l) in x's dtype,
    and with ``return_final_states`` also the last w - 1 inputs (b, d, w - 1) in x's dtype (written
    into ``final_states_out`` when given). ``seq_idx`` must be None.
    """
    b, d, length, w = check_fn(x, weight, bias, seq_idx, initial_states, final_states_out, activation)
    cdt = compute_dtype(x, weight, bias, initial_states)
    xf = x.to(cdt)
    pre = xf.new_zeros(b, d, w - 1) if initial_states is None else initial_states.to(cdt)
    xp = torch.cat([pre, xf], dim=-1)  # (b, d, w - 1 + l)
    out = _conv(xp, weight.to(cdt), None if bias is None else bias.to(cdt), length)
    if check_activation(activation):
        out = F.silu(out)
    out = out.to(x.dtype)
    if not return_final_states:
        return out
    final = xp[:, :, xp.shape[-1] - (w - 1) :].to(x.dtype)  # (b, d, w - 1)
    if final_states_out is not None:
        final_states_out.copy_(final)
        final = final_states_out
    return out, final


def naive_causal_conv1d_update(
    x: torch.Tensor,
    conv_state: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str | None = None,
) -> torch.Tensor:
    """Decode step(s) of the causal conv; ``conv_state`` is updated IN PLACE.

    x (b, d) or (b, d, s); conv_state (b, d, state_len) with state_len >= w - 1 holds the latest
    inputs, oldest first (causal-conv1d's convention; Mamba allocates state_len = w). The new inputs
    are appended and the oldest dropped. Returns out with x's shape and dtype.
    """
    squeeze = x.dim() == 2
    x3 = x.unsqueeze(-1) if squeeze else x
    b, d, s, w, state_len = check_update(x3, conv_state, weight, bias, activation)
    cdt = compute_dtype(x3, conv_state, weight, bias)
    xp = torch.cat([conv_state.to(cdt), x3.to(cdt)], dim=-1)  # (b, d, state_len + s)
    conv_state.copy_(xp[:, :, -state_len:])
    xp = xp[:, :, xp.shape[-1] - (w - 1 + s) :]  # (b, d, w - 1 + s)
    out = _conv(xp, weight.to(cdt), None if bias is None else bias.to(cdt), s)
    if check_activation(activation):
        out = F.silu(out)
    out = out.to(x.dtype)
    return out.squeeze(-1) if squeeze else out
