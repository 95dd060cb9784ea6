"""Argument checks of ``moe_grouped_experts`` (eager and at trace time)."""

from __future__ import annotations

import torch

from ..moe_step._checks import check_experts

# The kernels number assignments and sorted rows in int32: N x top_k plus each expert's padding must fit.
MAX_ROWS = 2**31 - 1


def check_grouped(
    x: torch.Tensor, gate_w: torch.Tensor, up_w: torch.Tensor, down_w: torch.Tensor, top_e: torch.Tensor,
    top_w: torch.Tensor,
) -> tuple[int, int, int, int, int]:  # fmt: skip
    """-> (N, D, E, F, K); ValueError naming the argument that does not fit. ``moe_decode_experts``' checks (the
    same arguments), and at least one expert, and N x top_k within the kernels' int32 row numbers."""
    N, D, E, F, K = check_experts(x, gate_w, up_w, down_w, top_e, top_w)
    if E < 1:
        raise ValueError(f"gate_w must hold at least one expert, got shape {tuple(gate_w.shape)}")
    if N * K + E * 256 > MAX_ROWS:  # 256: the largest BLOCK_M a configuration may pad an expert's rows to
        raise ValueError(f"top_e: {N} tokens x top_k {K} assignments overflow the kernels' int32 row numbers")
    return N, D, E, F, K
