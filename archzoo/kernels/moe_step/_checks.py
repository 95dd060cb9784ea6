"""Argument checks of ``moe_decode_experts`` (eager and at trace time)."""

from __future__ import annotations

import torch


def check_experts(
    x: torch.Tensor, gate_w: torch.Tensor, up_w: torch.Tensor, down_w: torch.Tensor, top_e: torch.Tensor,
    top_w: torch.Tensor,
) -> tuple[int, int, int, int, int]:  # fmt: skip
    """-> (N, D, E, F, K); ValueError naming the argument that does not fit."""
    if x.dim() != 2:
        raise ValueError(f"x must be (tokens, d_model), got shape {tuple(x.shape)}")
    N, D = x.shape
    if gate_w.dim() != 3 or gate_w.shape[2] != D:
        raise ValueError(f"gate_w must be (n_experts, d_ff, d_model={D}), got {tuple(gate_w.shape)}")
    E, F, _ = gate_w.shape
    if tuple(up_w.shape) != (E, F, D):
        raise ValueError(f"up_w must be (n_experts, d_ff, d_model) = {(E, F, D)} as gate_w, got {tuple(up_w.shape)}")
    if tuple(down_w.shape) != (E, D, F):
        raise ValueError(f"down_w must be (n_experts, d_model, d_ff) = {(E, D, F)}, got {tuple(down_w.shape)}")
    if top_e.dim() != 2 or top_e.shape[0] != N or top_e.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"top_e must be ({N}, top_k) int32 / int64, got {tuple(top_e.shape)} {top_e.dtype}")
    K = top_e.shape[1]
    if tuple(top_w.shape) != (N, K) or not top_w.is_floating_point():
        raise ValueError(f"top_w must be ({N}, {K}) floating point as top_e, got {tuple(top_w.shape)} {top_w.dtype}")
    for name, t in (("gate_w", gate_w), ("up_w", up_w), ("down_w", down_w)):
        if t.dtype != x.dtype:
            raise ValueError(f"{name} must have x's dtype {x.dtype}, got {t.dtype}")
    devices = {t.device for t in (x, gate_w, up_w, down_w, top_e, top_w)}
    if len(devices) != 1:
        raise ValueError(f"x, the expert weights, top_e and top_w must share a device, got {sorted(map(str, devices))}")
    return N, D, E, F, K


def check_router(x: torch.Tensor, router_w: torch.Tensor, router_b: torch.Tensor | None) -> tuple[int, int, int]:
    """x (N, D), router_w (E, D), router_b (E,) or None -> (N, D, E); ValueError naming the argument that does not
    fit (``moe_decode_step``'s and ``moe_route``'s)."""
    if x.dim() != 2:
        raise ValueError(f"x must be (tokens, d_model), got shape {tuple(x.shape)}")
    N, D = x.shape
    if router_w.dim() != 2 or router_w.shape[1] != D:
        raise ValueError(f"router_w must be (n_experts, d_model={D}), got {tuple(router_w.shape)}")
    E = router_w.shape[0]
    if router_b is not None and tuple(router_b.shape) != (E,):
        raise ValueError(f"router_b must be (n_experts,) = ({E},) or None, got {tuple(router_b.shape)}")
    return N, D, E


def check_step(
    x: torch.Tensor, router_w: torch.Tensor, router_b: torch.Tensor | None, gate_w: torch.Tensor, up_w: torch.Tensor,
    down_w: torch.Tensor, top_k: int, norm_weight: torch.Tensor | None = None, residual: torch.Tensor | None = None,
) -> tuple[int, int, int, int]:  # fmt: skip
    """Arguments of ``moe_decode_step`` -> (N, D, E, F); ValueError naming the argument that does not fit."""
    N, D, E = check_router(x, router_w, router_b)
    if gate_w.dim() != 3 or gate_w.shape[0] != E or gate_w.shape[2] != D:
        raise ValueError(f"gate_w must be (n_experts={E}, d_ff, d_model={D}), got {tuple(gate_w.shape)}")
    F = gate_w.shape[1]
    if tuple(up_w.shape) != (E, F, D):
        raise ValueError(f"up_w must be (n_experts, d_ff, d_model) = {(E, F, D)} as gate_w, got {tuple(up_w.shape)}")
    if tuple(down_w.shape) != (E, D, F):
        raise ValueError(f"down_w must be (n_experts, d_model, d_ff) = {(E, D, F)}, got {tuple(down_w.shape)}")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= E:
        raise ValueError(f"top_k must be an int in 1..n_experts={E}, got {top_k!r}")
    if norm_weight is not None and tuple(norm_weight.shape) != (D,):
        raise ValueError(f"norm_weight must be (d_model,) = ({D},) or None, got {tuple(norm_weight.shape)}")
    if residual is not None and tuple(residual.shape) != (N, D):
        raise ValueError(f"residual must be (tokens, d_model) = {(N, D)} as x, or None, got {tuple(residual.shape)}")
    named = [("router_w", router_w), ("router_b", router_b), ("gate_w", gate_w), ("up_w", up_w), ("down_w", down_w),
             ("norm_weight", norm_weight), ("residual", residual)]  # fmt: skip
    for name, t in named:
        if t is not None and t.dtype != x.dtype:
            raise ValueError(f"{name} must have x's dtype {x.dtype}, got {t.dtype}")
    devices = {t.device for _, t in [("x", x), *named] if t is not None}
    if len(devices) != 1:
        raise ValueError(f"x, the router, the expert weights, norm_weight and residual must share a device, got "
                         f"{sorted(map(str, devices))}")  # fmt: skip
    return N, D, E, F
