"""Causal linear attention (Katharopoulos et al. 2020) with the feature maps of ``feature_maps.py``.

A BASED model (Arora et al. 2024) is this layer with ``feature_map: taylor`` interleaved with
sliding-window softmax attention layers (configs/models/based.yaml).

Per head: q, k projected to ``feature_dim`` dims and mapped by phi to F dims, v to ``head_dim``;
``o_t = phi(q_t) S_t / (phi(q_t) z_t + eps)`` with ``S_t = sum_{s<=t} phi(k_s) v_s^T`` and
``z_t = sum_{s<=t} phi(k_s)``. No positional encoding: order enters only through causality.

Training and prefill run the chunked parallel form (``chunk_size`` from the config); a cache holds
the recurrent state ``S`` (B, H, F, Dv) and ``z`` (B, H, F), updated in place, whatever the length.
The state is kept in at least fp32 (a bf16 running sum stops absorbing small increments once it
has grown), and ``state_bytes`` counts it at that width. With the identity map the normaliser is
applied as for the others; it is then not guaranteed positive and can blow up where phi(q) z ~ 0.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from ..kernels import linear_attention_update  # traceable (a custom op) in a compiled decode step
from ..kernels.based_attention import based_attention
from ..kernels.linear_attention import linear_attention
from .base import LayerConfig, LayerState, TakesNormAndResidual, dtype_bytes, field_error, with_residual
from .feature_maps import TaylorExp, build_feature_map, feature_map_dim
from .fused import FusedLinears, decode_project

FeatureMap = Literal["identity", "elu", "relu", "taylor", "hedgehog"]


class LinearAttentionConfig(LayerConfig):
    """Causal linear attention phi(q) (sum phi(k) v^T) / phi(q) (sum phi(k)); BASED uses feature_map=taylor."""

    type: Literal["linear_attention"] = "linear_attention"
    n_heads: int = Field(gt=0)
    head_dim: int | None = Field(default=None, gt=0, description="value head dim; default d_model / n_heads")
    feature_map: FeatureMap = "elu"
    feature_dim: int | None = Field(
        default=None, gt=0, description="query/key dim fed to the feature map; default head_dim"
    )
    chunk_size: int = Field(default=64, gt=0, description="chunk length of the parallel (training) form")
    eps: float = Field(default=1e-6, gt=0)

    def check_dims(self, d_model: int) -> None:
        if self.head_dim is None and d_model % self.n_heads:
            raise field_error("n_heads", f"d_model={d_model} is not divisible by n_heads={self.n_heads}; set head_dim")


def _dims(cfg: LinearAttentionConfig, d_model: int) -> tuple[int, int, int]:
    """(feature_dim fed to phi, F = dim of phi's output, Dv) of one head."""
    head_dim = cfg.head_dim or d_model // cfg.n_heads
    feature_dim = cfg.feature_dim or head_dim
    return feature_dim, feature_map_dim(cfg.feature_map, feature_dim), head_dim


def state_dtype(dtype: torch.dtype) -> torch.dtype:
    """The recurrent state's dtype for a cache of ``dtype``: at least fp32."""
    return torch.promote_types(dtype, torch.float32)


class LinearAttention(TakesNormAndResidual, nn.Module):
    def __init__(self, cfg: LinearAttentionConfig, d_model: int, layer_idx: int = 0, kv_source: int | None = None):
        super().__init__()
        if kv_source is not None and kv_source != layer_idx:
            raise ValueError(f"kv_source={kv_source}: linear attention layer {layer_idx} cannot share another's state")
        self.cfg = cfg
        self.layer_idx = layer_idx
        self.n_heads = H = cfg.n_heads
        self.feature_dim, self.state_dim, self.head_dim = _dims(cfg, d_model)
        self.q_proj = nn.Linear(d_model, H * self.feature_dim, bias=False)
        self.k_proj = nn.Linear(d_model, H * self.feature_dim, bias=False)
        self.v_proj = nn.Linear(d_model, H * self.head_dim, bias=False)
        self.o_proj = nn.Linear(H * self.head_dim, d_model, bias=False)
        # Separate maps for queries and keys (they differ only when learned: hedgehog, as in LoLCATs).
        self.q_map = build_feature_map(cfg.feature_map, H, self.feature_dim)
        self.k_map = build_feature_map(cfg.feature_map, H, self.feature_dim)
        # Q|K|V in one GEMM for decode steps (layers/fused.py), the block's norm fused into it where the decode GEMV
        # runs, and the residual in O's epilogue: two launches a layer where the step ran four GEMMs, a norm and an add.
        self.fused = FusedLinears(self.q_proj, self.k_proj, self.v_proj)

    # ------------------------------------------------------------------ state

    @staticmethod
    def bounded_state(cfg: LinearAttentionConfig) -> bool:
        return True

    @staticmethod
    def state_bytes(cfg: LinearAttentionConfig, d_model: int, batch_size: int, seq_len: int, dtype: torch.dtype) -> int:
        _, F, Dv = _dims(cfg, d_model)
        return batch_size * cfg.n_heads * F * (Dv + 1) * dtype_bytes(state_dtype(dtype))

    def new_state(self, batch_size: int, max_seq_len: int, dtype: torch.dtype, device) -> LayerState:
        sd = state_dtype(dtype)
        H, F, Dv = self.n_heads, self.state_dim, self.head_dim
        return LayerState(
            S=torch.zeros(batch_size, H, F, Dv, dtype=sd, device=device),
            z=torch.zeros(batch_size, H, F, dtype=sd, device=device),
        )

    # ---------------------------------------------------------------- forward

    def forward(
        self,
        x: torch.Tensor,
        state: LayerState | None,
        ctx,
        norm: nn.Module | None = None,
        residual: torch.Tensor | None = None,
    ) -> torch.Tensor:
        B, T, _ = x.shape
        H = self.n_heads
        step = ctx.decoding and not torch.is_grad_enabled()
        if step and ctx.fused:  # one GEMM (the norm in it, with the decode GEMV)
            q_raw, k_raw, v = self.fused(x, norm)
        else:
            x = norm(x) if norm is not None else x
            q_raw, k_raw, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        q_raw = q_raw.reshape(B, T, H, self.feature_dim)  # (B, T, H, d), before the feature map
        k_raw = k_raw.reshape(B, T, H, self.feature_dim)
        v = v.reshape(B, T, H, self.head_dim)  # (B, T, H, Dv)
        if step:
            # A capturable step: the recurrence on the state, in place (not the chunked form). A few tokens in a
            # decode step (speculative decoding's verify and replay forwards) go token by token the same way: a
            # compiled step block (fullgraph) traces the update as a custom op, where the chunked kernels are
            # launched from the host, and the target computes exactly what it would decoding alone.
            q, k = self.q_map(q_raw), self.k_map(k_raw)  # (B, T, H, F)
            o = torch.stack(
                [linear_attention_update(state["S"], state["z"], q[:, t], k[:, t], v[:, t], eps=self.cfg.eps)
                 for t in range(T)], dim=1,
            )  # fmt: skip
            o = o.reshape(B, T, H * self.head_dim)
            if ctx.fused:  # the decode GEMV where it runs, the residual in its epilogue
                return decode_project(o, self.o_proj.weight, residual=residual)
            out = self.o_proj(o)
            return with_residual(out, residual)
        # A cache at position 0 starts from zeros whatever its buffers hold (as attention overwrites).
        initial = None if state is None or ctx.pos == 0 else (state["S"], state["z"])
        if initial is not None and torch.is_grad_enabled():
            initial = (initial[0].clone(), initial[1].clone())  # autograd saves them; the cache is updated in place
        if initial is None and isinstance(self.q_map, TaylorExp) and isinstance(self.k_map, TaylorExp):
            # BASED from a zero state: from the d-dim dot products, never expanding 1 + d + d^2 features
            o, final = based_attention(
                q_raw, k_raw, v, output_final_state=state is not None, eps=self.cfg.eps, chunk_size=self.cfg.chunk_size
            )
        else:
            o, final = linear_attention(
                self.q_map(q_raw), self.k_map(k_raw), v, initial, output_final_state=state is not None,
                eps=self.cfg.eps, chunk_size=self.cfg.chunk_size,
            )  # fmt: skip
        if state is not None:
            state["S"].copy_(final[0].detach())  # the cache never carries autograd history
            state["z"].copy_(final[1].detach())
        out = self.o_proj(o.reshape(B, T, H * self.head_dim))
        return with_residual(out, residual)
