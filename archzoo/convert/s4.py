"""Attention -> S4D by reusing the value and output projections.

The S4D block (``archzoo/layers/s4.py``, Gu et al. 2022, "On the parameterization and
initialization of diagonal state space models") is ``o_proj(GELU(K * u + D u))`` per channel of
the layer input u, with no input projection. Attention with weights ``p_ts`` is
``W_o V sum_s p_ts u_s``: the value/output path is one d x d map applied to a weighted average
of the inputs. S4D can hold exactly that with input-independent weights, so:

- ``o_proj = W_o V`` (the teacher's output projection composed with its V heads, each repeated
  for the query heads that read it under GQA: ``sum_h W_o,h W_v,kv(h)``);
- the weights ``p`` become a fixed causal average shared in form by all channels: ``D = 1/4`` on
  the current token and a kernel of total weight 3/4 over the past. Per channel the kernel is
  one mode of the S4D spectrum, the least oscillating one (``|Im A| / |Re A|`` smallest, the
  first on ties: S4D-Lin's real mode ``A = -1/2``, S4D-Real's slowest ``A = -1``), its ``C``
  set so the kernel sums to 3/4; the other modes' ``C`` start at 0. So each channel averages
  the past over its own time scale (``~1 / (dt |Re A|)``: dt is drawn per channel).
- The spectrum (A, dt) and B keep S4D's initialisation. The GELU is not compensated (the best
  linear fit of GELU(y) on a symmetric y has slope 1/2; doubling ``o_proj`` to undo it made
  things worse).

The 1/4 : 3/4 split was chosen by measurement on SmolLM2-135M (English text, S4D student of
configs/students/s4.yaml): perplexity right after conversion 505 with it, against 601 with
D = 0.1, 945 with 1/2, 2976 with 3/4, 6719 with the S4D layers silent and 5.8e6 with ``C``
and ``D`` left at S4D's random init. Queries and keys have no counterpart (the weights do not
depend on the input) and RoPE goes with them: notes say so.
"""

from __future__ import annotations

import torch

from . import ConvertContext, copy_linear

SELF_WEIGHT = 0.25  # D: the current token's share; the kernel carries the rest


def kernel_mode(dst) -> torch.Tensor:
    """(H,) per channel, the index of the least oscillating mode (first on ties)."""
    if not dst.is_complex:
        return torch.zeros(dst.d_model, dtype=torch.long, device=dst.C.device)
    ratio = dst.A_im.abs() / torch.exp(dst.A_log_re)  # |Im A| / |Re A|
    return ratio.argmin(dim=-1)


def set_average_kernel(dst, total: float) -> None:
    """Zero C except one mode per channel, set so the (infinite) kernel sums to ``total``."""
    dtA, dB, _ = dst.discretize(torch.float64)  # (H, M)
    mode = kernel_mode(dst)
    rows = torch.arange(dst.d_model, device=mode.device)
    gain = (dB / (1 - torch.exp(dtA)))[rows, mode]  # sum_l dB dA^l of the chosen mode
    dst.C.zero_()
    if dst.is_complex:
        c = total / (2 * gain)  # 2 Re(c gain) = total
        dst.C[rows, mode] = torch.view_as_real(c).to(dst.C.dtype)
    else:
        dst.C[rows, mode] = (total / gain).to(dst.C.dtype)


def convert_s4(src, dst, i: int, ctx: ConvertContext) -> None:
    from ..layers.attention import Attention

    if not isinstance(src, Attention) or not src.owns_kv:
        raise ValueError(f"student layer {i}: S4D converts from a teacher attention layer with its own K/V")
    H, n_kv, D, d = src.n_heads, src.n_kv_heads, src.head_dim, dst.d_model
    f64 = torch.float64
    wv = src.v_proj.weight.to(f64).view(n_kv, D, d).repeat_interleave(H // n_kv, dim=0).reshape(H * D, d)
    copy_linear(dst.o_proj, (src.o_proj.weight.to(f64) @ wv).to(dst.o_proj.weight.dtype))  # (d, d) = W_o V
    dst.D.fill_(SELF_WEIGHT)
    set_average_kernel(dst, 1.0 - SELF_WEIGHT)
    ctx.notes.append(
        f"layer {i}: S4D keeps the teacher's value/output path (o_proj = W_o V) over a fixed causal average; "
        "queries, keys and RoPE have no counterpart"
    )
    if src.v_proj.bias is not None:
        ctx.notes.append(f"layer {i}: the teacher's V bias was dropped (S4D's o_proj has no bias)")
