"""Mixture-of-experts FFN: top-k softmax routing over SwiGLU experts, with optional capacity limits.

Routing follows Switch Transformer (Fedus et al., 2021) and GShard (Lepikhin et al., 2020): a
linear router scores the experts, each token goes to its ``top_k`` best, and with a
``capacity_factor`` each expert takes at most ``ceil(tokens * top_k / n_experts * factor)``
assignments. Priority goes first to every token's first choice (in token order), then to the
second choices, and so on; an assignment over capacity is dropped and adds nothing (the block's
residual carries the token). Losses: Switch's load-balancing loss and the router z-loss of
ST-MoE (Zoph et al., 2022). Shared experts, always applied, follow DeepSeekMoE (Dai et al., 2024).

Dispatch sorts the (token, expert) assignments by expert, runs each expert on its contiguous
slice and scatters the weighted results back with ``index_add``; no Python loop over tokens.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from .base import LayerConfig, field_error
from .mlp import SwiGLU


class MoEConfig(LayerConfig):
    """Top-k softmax-routed experts (SwiGLU each); capacity limits act in training only by default."""

    type: Literal["moe"] = "moe"
    n_experts: int = Field(gt=0)
    top_k: int = Field(default=2, gt=0)
    d_ff: int = Field(gt=0)
    capacity_factor: float | None = Field(default=1.25, gt=0, description="null = dropless")
    capacity_at_inference: bool = Field(default=False, description="apply capacity in eval mode too")
    aux_loss_coef: float = Field(default=1e-2, ge=0)
    z_loss_coef: float = Field(default=1e-3, ge=0)
    n_shared_experts: int = Field(default=0, ge=0)
    norm_topk_prob: bool = True

    @model_validator(mode="after")
    def _check(self) -> MoEConfig:
        if self.top_k > self.n_experts:
            raise field_error("top_k", f"top_k={self.top_k} must not exceed n_experts={self.n_experts}")
        return self


class StackedLinear(nn.Module):
    """``n`` bias-free linear maps stored as one ``weight`` of shape (n, out_features, in_features).

    ``weight[e]`` has the layout of ``nn.Linear(in_features, out_features).weight``, so a dense
    MLP's projection copies into every expert (MoE upcycling, Komatsuzaki et al., 2022).
    """

    def __init__(self, n: int, in_features: int, out_features: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n, out_features, in_features))
        nn.init.normal_(self.weight, 0.0, in_features**-0.5)

    def forward(self, x: torch.Tensor, e: int) -> torch.Tensor:
        return F.linear(x, self.weight[e])

    def extra_repr(self) -> str:
        n, out_f, in_f = self.weight.shape
        return f"n={n}, in_features={in_f}, out_features={out_f}"


class MoE(nn.Module):
    """Top-k routed SwiGLU experts plus ``n_shared_experts`` always-on SwiGLUs.

    After every forward (None before the first), ``self.aux_loss`` holds the differentiable balance + z loss and
    ``self.last_stats`` (detached) holds ``tokens_dropped`` (dropped (token, expert) assignments),
    ``load`` (assignments routed to each expert, before capacity), ``drop_fraction``
    (``tokens_dropped / (tokens * top_k)``), ``balance_loss``, ``z_loss`` and ``capacity``
    (``None`` when dropless).
    """

    def __init__(
        self,
        d_model: int,
        n_experts: int,
        d_ff: int,
        top_k: int = 2,
        capacity_factor: float | None = 1.25,
        capacity_at_inference: bool = False,
        aux_loss_coef: float = 1e-2,
        z_loss_coef: float = 1e-3,
        n_shared_experts: int = 0,
        norm_topk_prob: bool = True,
    ):
        super().__init__()
        if n_experts < 1:
            raise ValueError(f"n_experts must be >= 1, got {n_experts}")
        if not 1 <= top_k <= n_experts:
            raise ValueError(f"top_k must be in 1..n_experts={n_experts}, got {top_k}")
        if capacity_factor is not None and capacity_factor <= 0:
            raise ValueError(f"capacity_factor must be positive or None (dropless), got {capacity_factor}")
        self.d_model, self.n_experts, self.top_k = d_model, n_experts, top_k
        self.capacity_factor = capacity_factor
        self.capacity_at_inference = capacity_at_inference
        self.aux_loss_coef, self.z_loss_coef = aux_loss_coef, z_loss_coef
        self.norm_topk_prob = norm_topk_prob
        self.router = nn.Linear(d_model, n_experts, bias=False)
        self.gate_proj = StackedLinear(n_experts, d_model, d_ff)  # weight (E, d_ff, d_model)
        self.up_proj = StackedLinear(n_experts, d_model, d_ff)  # weight (E, d_ff, d_model)
        self.down_proj = StackedLinear(n_experts, d_ff, d_model)  # weight (E, d_model, d_ff)
        self.shared_experts = nn.ModuleList(SwiGLU(d_model, d_ff) for _ in range(n_shared_experts))
        self.aux_loss: torch.Tensor | None = None  # set by every forward
        self.last_stats: dict[str, torch.Tensor | int | None] = {}

    @classmethod
    def from_config(cls, cfg: MoEConfig, d_model: int) -> MoE:
        return cls(
            d_model,
            cfg.n_experts,
            cfg.d_ff,
            top_k=cfg.top_k,
            capacity_factor=cfg.capacity_factor,
            capacity_at_inference=cfg.capacity_at_inference,
            aux_loss_coef=cfg.aux_loss_coef,
            z_loss_coef=cfg.z_loss_coef,
            n_shared_experts=cfg.n_shared_experts,
            norm_topk_prob=cfg.norm_topk_prob,
        )

    # Up to this many tokens (a decode step's batch), inference takes the static-shape path: no sort,
    # no host synchronisation, so the step can be captured. Longer inputs dispatch by sorting.
    STATIC_MAX_TOKENS = 512

    def _static(self, x: torch.Tensor, top_p: torch.Tensor, top_e: torch.Tensor) -> torch.Tensor:
        """Dropless routing with static shapes, for decode. x (N, D); top_p, top_e (N, K).

        Few assignments (N * K < E): gather each token's K experts' weights, reading only those.
        Otherwise: every expert on every token, weighted by a dense (N, E) gate that is zero off the
        top-k, so each expert's weights are read once. No ``aux_loss`` / ``last_stats`` update: this
        path runs only without gradients, inside a decode step.
        """
        N, E, K = x.shape[0], self.n_experts, self.top_k
        w = top_p.to(x.dtype)
        if N * K < E:
            # Products summed, not einsums: compiled, each projection is one reduction that loads the chosen
            # experts' rows by index. An einsum lowers to a batched GEMM, which first copies the gathered
            # weights out (0.18 ms of the MoE student's 1.87 ms step at batch 1 on an H200, docs/decode.md).
            g = self.gate_proj.weight[top_e]  # (N, K, F, D)
            u = self.up_proj.weight[top_e]
            d = self.down_proj.weight[top_e]  # (N, K, D, F)
            xd = x[:, None, None, :]  # (N, 1, 1, D)
            h = F.silu((xd * g).sum(-1)) * (xd * u).sum(-1)  # (N, K, F)
            out = ((h * w[..., None])[:, :, None, :] * d).sum(-1).sum(1)  # (N, K, D) -> (N, D)
        else:
            gate = x.new_zeros(N, E).scatter_(1, top_e, w)  # (N, E)
            h = F.silu(torch.einsum("nd,efd->enf", x, self.gate_proj.weight))
            h = h * torch.einsum("nd,efd->enf", x, self.up_proj.weight)  # (E, N, F)
            out = torch.einsum("enf,edf,ne->nd", h, self.down_proj.weight, gate)
        for shared in self.shared_experts:
            out = out + shared(x)
        return out

    def capacity(self, n_tokens: int) -> int | None:
        """Per-expert assignment limit for a forward over ``n_tokens`` tokens; None when dropless now."""
        if self.capacity_factor is None or not (self.training or self.capacity_at_inference):
            return None
        return math.ceil(n_tokens * self.top_k / self.n_experts * self.capacity_factor)

    def expert(self, x: torch.Tensor, e: int) -> torch.Tensor:
        """Routed expert ``e`` (a SwiGLU) on x (n, d_model) -> (n, d_model)."""
        return self.down_proj(F.silu(self.gate_proj(x, e)) * self.up_proj(x, e), e)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.d_model:
            raise ValueError(f"x must end in d_model={self.d_model}, got shape {tuple(x.shape)}")
        shape = x.shape
        x = x.reshape(-1, self.d_model)  # (N, D)
        N, E, K = x.shape[0], self.n_experts, self.top_k

        # Router in at least fp32 (bf16 logits make the top-k and the z-loss noisy).
        logits = self.router(x).to(torch.promote_types(x.dtype, torch.float32))  # (N, E)
        probs = logits.softmax(dim=-1)  # (N, E)
        static = not torch.is_grad_enabled() and self.capacity(N) is None and N <= self.STATIC_MAX_TOKENS
        # A decode step's top-k as K max reductions, which the compiler fuses with the softmax: torch.topk
        # was two sorting kernels per layer (gatherTopK, bitonicSort), 0.25 ms of the MoE student's 1.87 ms
        # step at batch 1 on an H200 (docs/decode.md).
        top_p, top_e = topk_by_max(probs, K) if static and K <= 4 else probs.topk(K, dim=-1)  # (N, K), (N, K)
        if self.norm_topk_prob:
            top_p = top_p / top_p.sum(dim=-1, keepdim=True)

        if static:
            return self._static(x, top_p, top_e).reshape(shape)

        # Assignments in priority order: all first choices in token order, then all second choices ...
        expert_flat = top_e.t().reshape(-1)  # (K*N,)
        weight_flat = top_p.t().reshape(-1).to(x.dtype)  # (K*N,)
        token_flat = torch.arange(N, device=x.device).repeat(K)  # (K*N,)
        load = torch.bincount(expert_flat, minlength=E)  # (E,)

        # Stable sort by expert keeps priority order inside each expert's slice, so the first
        # `capacity` assignments of a slice are the ones that fit.
        order = torch.argsort(expert_flat, stable=True)  # (K*N,)
        capacity = self.capacity(N)
        if capacity is None:
            kept = load
        else:
            start = torch.cumsum(load, 0) - load  # (E,)
            rank = torch.arange(K * N, device=x.device) - start[expert_flat[order]]  # (K*N,) place in its expert
            order = order[rank < capacity]
            kept = load.clamp(max=capacity)
        tokens = token_flat[order]  # (M,) kept assignments grouped by expert
        xs = x[tokens]  # (M, D)
        ws = weight_flat[order]  # (M,)

        ys = [self.expert(chunk, e) for e, chunk in enumerate(xs.split(kept.tolist())) if chunk.shape[0]]
        out = x.new_zeros(N, self.d_model)
        if ys:
            out = out.index_add(0, tokens, torch.cat(ys) * ws[:, None])  # (N, D)
        for shared in self.shared_experts:
            out = out + shared(x)

        balance, z = self._losses(logits, probs, load, N)
        self.aux_loss = balance + z
        dropped = (load - kept).sum()
        self.last_stats = {
            "tokens_dropped": dropped.detach(),
            "load": load.detach(),
            "drop_fraction": (dropped.float() / max(N * K, 1)).detach(),
            "balance_loss": balance.detach(),
            "z_loss": z.detach(),
            "capacity": capacity,
        }
        return out.reshape(shape)

    def _losses(
        self, logits: torch.Tensor, probs: torch.Tensor, load: torch.Tensor, n_tokens: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Switch balance loss coef * E * sum_i f_i P_i and ST-MoE z-loss coef * mean(logsumexp(logits)^2)."""
        if n_tokens == 0:
            balance = z = logits.new_zeros(())
        else:
            f = load.to(probs.dtype) / (n_tokens * self.top_k)  # (E,) fraction of assignments
            P = probs.mean(dim=0)  # (E,) mean router probability
            balance = self.aux_loss_coef * self.n_experts * (f * P).sum()
            z = self.z_loss_coef * torch.logsumexp(logits, dim=-1).square().mean()
        return balance, z


def topk_by_max(probs: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``probs.topk(k, dim=-1)`` as k rounds of max-and-mask: (values, indices), largest first. For a small k
    it compiles to one fused kernel where ``topk`` sorts; ties go to the lowest index in each round."""
    vals, idx = [], []
    p = probs
    for _ in range(k):
        v, i = p.max(dim=-1)
        vals.append(v)
        idx.append(i)
        p = p.scatter(-1, i[..., None], float("-inf"))
    return torch.stack(vals, dim=-1), torch.stack(idx, dim=-1)

