"""Reference for ``moe_grouped_experts``: the routed experts of any number of tokens, one expert at a time.

The same products and roundings as ``naive_moe_decode_experts`` (``archzoo.kernels.moe_step.naive``, the MoE layer's
static gather form) for every assignment (token n, choice k, expert e = top_e[n, k]): gate and up rows against x
rounded to x's dtype, SiLU(gate) rounded, times up rounded; that times the routing weight (in x's dtype) rounded;
down against it rounded; the K choices summed (in fp32 for bf16 / fp16, as torch's sum) and rounded once. Written as
a loop over the experts with each expert's projections on every token (``F.linear``: fp32 sums of exact products,
where the decode form rounds each bf16 product first) and a select per choice, so it has no host synchronisation
and no data-dependent shape; it does E times the routed FLOPs, which a reference can afford. A dropped assignment
(weight 0) adds exactly 0, as in the kernels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def naive_moe_grouped_experts(
    x: torch.Tensor, gate_w: torch.Tensor, up_w: torch.Tensor, down_w: torch.Tensor, top_e: torch.Tensor,
    top_w: torch.Tensor,
) -> torch.Tensor:  # fmt: skip
    """x (N, D); gate_w, up_w (E, F, D); down_w (E, D, F); top_e (N, K) int; top_w (N, K) -> (N, D) in x's dtype."""
    N, D = x.shape
    K = top_e.shape[1]
    w = top_w.to(x.dtype)
    y = x.new_zeros((K, N, D))  # each choice's output, in x's dtype
    for e in range(gate_w.shape[0]):
        h = F.silu(F.linear(x, gate_w[e])) * F.linear(x, up_w[e])  # (N, F) every token through expert e
        for k in range(K):
            wk = w[:, k, None]  # (N, 1)
            hw = torch.where(wk == 0, 0, h * wk)  # a dropped assignment: exactly 0, whatever h holds
            y[k] = torch.where((top_e[:, k] == e)[:, None], F.linear(hw, down_w[e]), y[k])  # (N, D)
    return y.sum(0)  # (N, D)
