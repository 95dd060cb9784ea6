"""Multi-head latent attention (DeepSeek-V2, arXiv:2405.04434).

Keys and values come from a shared latent ``c_kv = norm(W_dkv x)`` of ``kv_lora_rank`` dims;
position enters only through a decoupled RoPE key of ``qk_rope_head_dim`` dims shared by all
heads. The cache holds ``c_kv`` and that RoPE key per token and nothing else.

Two equivalent ways to attend:
- decompressed (training, prefill): up-project the latent to per-head keys and values, then
  ordinary multi-head attention;
- absorbed (decode): fold ``W_uk`` into the query (``q_lat = q_nope @ W_uk``) and ``W_uv`` into
  the output, so every head attends directly over the cached latent: multi-query attention with
  one "head" of dim ``kv_lora_rank + qk_rope_head_dim`` and values of dim ``kv_lora_rank``. Each
  step reads only the latent cache, never materialising per-head K/V.
"""

from __future__ import annotations

import itertools
from typing import Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from ..kernels import decode_attention_mla
from . import mla_fold
from .attention import attend, attend_cached, step_mask, use_decode_kernel
from .base import LayerConfig, LayerState, TakesNormAndResidual, dtype_bytes, field_error, with_residual
from .fused import FusedLinears, decode_project
from .mla_fold import FoldedMLA
from .norm import RMSNorm
from .rope import RotaryEmbedding, apply_rope


class MLAConfig(LayerConfig):
    """Multi-head latent attention (DeepSeek-V2) with a decoupled, head-shared RoPE key."""

    type: Literal["mla"] = "mla"
    n_heads: int = Field(gt=0)
    q_lora_rank: int | None = Field(default=None, gt=0, description="null = full-rank query projection")
    kv_lora_rank: int = Field(gt=0)
    qk_nope_head_dim: int = Field(gt=0)
    qk_rope_head_dim: int = Field(gt=0)
    v_head_dim: int = Field(gt=0)
    rope_theta: float = Field(default=10000.0, gt=0)
    rope_pairs: list[int] | None = Field(
        default=None,
        description="null: the decoupled key's RoPE pairs rotate as a qk_rope_head_dim-wide RoPE's do; else "
        "qk_rope_head_dim / 2 rising pair indices of a RoPE over the whole qk head (qk_nope_head_dim + "
        "qk_rope_head_dim wide, base rope_theta): the teacher pairs a conversion kept (mla_rope='norm')",
    )
    kv_norm: bool = Field(default=True, description="RMSNorm on the latent (DeepSeek-V2); off keeps conversion exact")

    @model_validator(mode="after")
    def _check(self) -> MLAConfig:
        if self.qk_rope_head_dim % 2:
            raise field_error(
                "qk_rope_head_dim", f"qk_rope_head_dim={self.qk_rope_head_dim} must be even (RoPE rotates pairs)"
            )
        p = self.rope_pairs
        if p is not None:
            half = (self.qk_nope_head_dim + self.qk_rope_head_dim) // 2
            rising = all(a < b for a, b in itertools.pairwise(p))
            if len(p) != self.qk_rope_head_dim // 2 or not rising or p[0] < 0 or p[-1] >= half:
                raise field_error(
                    "rope_pairs",
                    f"rope_pairs must be {self.qk_rope_head_dim // 2} rising pair indices in [0, {half}) "
                    f"(qk_rope_head_dim / 2 of the (qk_nope_head_dim + qk_rope_head_dim) / 2 pairs), got {p}",
                )
        return self


class MLA(TakesNormAndResidual, nn.Module):
    def __init__(self, cfg: MLAConfig, d_model: int, layer_idx: int = 0, kv_source: int | None = None):
        super().__init__()
        self.cfg = cfg
        self.layer_idx = layer_idx
        H, dn, dr, dv, r = cfg.n_heads, cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.v_head_dim, cfg.kv_lora_rank
        self.n_heads, self.dn, self.dr, self.dv, self.r = H, dn, dr, dv, r
        if cfg.q_lora_rank:
            self.q_a_proj = nn.Linear(d_model, cfg.q_lora_rank, bias=False)
            self.q_a_norm = RMSNorm(cfg.q_lora_rank)
            self.q_b_proj = nn.Linear(cfg.q_lora_rank, H * (dn + dr), bias=False)
        else:
            self.q_proj = nn.Linear(d_model, H * (dn + dr), bias=False)
        self.kv_a_proj = nn.Linear(d_model, r + dr, bias=False)  # latent and shared RoPE key
        self.kv_a_norm = RMSNorm(r) if cfg.kv_norm else nn.Identity()
        self.kv_b_proj = nn.Linear(r, H * (dn + dv), bias=False)  # W_uk and W_uv, per head
        self.o_proj = nn.Linear(H * dv, d_model, bias=False)
        self.rope = RotaryEmbedding(dr, cfg.rope_theta, cfg.rope_pairs, dn + dr)
        # Q and the latent|RoPE-key projection in one GEMM for decode steps (layers/fused.py), the block's norm
        # fused into it where the decode GEMV runs, with W_uk folded into Q's copy and W_uv into O's where that
        # costs few bytes (layers/mla_fold.py); a low-rank query (q_lora_rank) projects through its own path.
        self.fused = None
        if not cfg.q_lora_rank:
            fold = mla_fold.folds(H, d_model, dn, dv, r)
            self.fused = FoldedMLA(self) if fold else FusedLinears(self.q_proj, self.kv_a_proj)
        self.scale = (dn + dr) ** -0.5
        self.absorb: bool | None = None  # None: absorbed when decoding over a cache; tests force either path

    @staticmethod
    def bounded_state(cfg: MLAConfig) -> bool:
        return False

    @staticmethod
    def state_bytes(cfg: MLAConfig, d_model: int, batch_size: int, seq_len: int, dtype: torch.dtype) -> int:
        return batch_size * seq_len * (cfg.kv_lora_rank + cfg.qk_rope_head_dim) * dtype_bytes(dtype)

    def new_state(self, batch_size: int, max_seq_len: int, dtype: torch.dtype, device) -> LayerState:
        # One buffer per token row: [c_kv (r) | k_rope (dr)]. Absorbed decode attends with the whole row
        # as its key and the first r columns as its value, both read in place: no per-step concatenation.
        # Written at each token's position and masked beyond a row's length: rewound by length.
        shape = (batch_size, max_seq_len, self.r + self.dr)
        return LayerState(by_length=("latent",), latent=torch.zeros(shape, dtype=dtype, device=device))

    def _queries(self, x: torch.Tensor) -> torch.Tensor:
        if self.cfg.q_lora_rank:
            return self.q_b_proj(self.q_a_norm(self.q_a_proj(x)))
        return self.q_proj(x)

    def forward(
        self,
        x: torch.Tensor,
        state: LayerState | None,
        ctx,
        norm: nn.Module | None = None,
        residual: torch.Tensor | None = None,
    ) -> torch.Tensor:
        B, T, _ = x.shape
        if ctx.decoding:
            return self._decode(x, state, ctx, norm, residual)
        if norm is not None:
            x = norm(x)
        out = self._prefill(x, state, ctx)
        return with_residual(out, residual)

    def _prefill(self, x: torch.Tensor, state: LayerState | None, ctx) -> torch.Tensor:
        """Training and prefill (several tokens from ``ctx.pos``): decompressed attention, or absorbed over a
        cache that already holds tokens."""
        B, T, _ = x.shape
        pos = ctx.pos
        q_pos, cos, sin = self.rope.span(ctx, T, x.device, x.dtype)
        q = self._queries(x).view(B, T, self.n_heads, self.dn + self.dr).transpose(1, 2)  # (B,H,T,dn+dr)
        q_nope, q_rope = q.split([self.dn, self.dr], dim=-1)
        q_rope = apply_rope(q_rope, cos, sin)
        c_kv, k_rope = self.kv_a_proj(x).split([self.r, self.dr], dim=-1)
        c_kv = self.kv_a_norm(c_kv)  # (B,T,r)
        k_rope = apply_rope(k_rope, cos, sin)  # (B,T,dr)

        k_pos = None
        if state is not None:
            # Buffers never carry autograd history; with gradients on, new entries join by concatenation.
            buf = state["latent"]
            buf[:, pos : pos + T] = torch.cat([c_kv, k_rope], dim=-1).detach().to(buf.dtype)
            if pos > 0:
                old = buf[:, :pos] if torch.is_grad_enabled() and c_kv.requires_grad else buf[:, : pos + T]
                c_old, r_old = old.to(x.dtype).split([self.r, self.dr], dim=-1)
                if old.shape[1] == pos:
                    c_kv, k_rope = torch.cat([c_old, c_kv], dim=1), torch.cat([r_old, k_rope], dim=1)
                else:
                    c_kv, k_rope = c_old, r_old
                k_pos = torch.arange(pos + T, device=x.device)
        absorb = self.absorb if self.absorb is not None else (state is not None and pos > 0)
        if absorb:
            o = self._absorbed(q_nope, q_rope, c_kv, k_rope, q_pos, k_pos)
        else:
            o = self._decompressed(q_nope, q_rope, c_kv, k_rope, q_pos, k_pos)
        return self.o_proj(o)

    def _decode(
        self,
        x: torch.Tensor,
        state: LayerState,
        ctx,
        norm: nn.Module | None = None,
        residual: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """A capturable step in absorbed form: the latent row written by index at each row's position,
        attention over the whole static buffer (key = [c_kv | k_rope], value = c_kv, both views) with a
        per-row length mask, then W_uv and the output projection (plus ``residual``: in its epilogue with the
        decode GEMV)."""
        B, T, _ = x.shape
        q_pos = ctx.positions(T, x.device)  # (B, T)
        cos, sin = self.rope(q_pos, x.dtype)  # (B, T, dr)
        folded = ctx.fused and isinstance(self.fused, FoldedMLA)
        if ctx.fused and self.fused is not None:
            q, kv = self.fused(x, norm)  # one GEMM (the norm in it, with the decode GEMV)
        else:
            x = norm(x) if norm is not None else x
            q, kv = self._queries(x), self.kv_a_proj(x)
        w = self.kv_b_proj.weight.view(self.n_heads, self.dn + self.dv, self.r)
        if folded:  # the query comes out of the GEMM in the latent space already
            q = q.reshape(B, T, self.n_heads, self.r + self.dr).transpose(1, 2)  # (B,H,T,r+dr)
            q_lat, q_rope = q.split([self.r, self.dr], dim=-1)
        else:
            q = q.reshape(B, T, self.n_heads, self.dn + self.dr).transpose(1, 2)  # (B,H,T,dn+dr)
            q_nope, q_rope = q.split([self.dn, self.dr], dim=-1)
            q_lat = torch.einsum("bhtd,hdr->bhtr", q_nope, w[:, : self.dn])
        q_lat = torch.cat([q_lat, apply_rope(q_rope, cos, sin)], dim=-1)
        c_kv, k_rope = kv.split([self.r, self.dr], dim=-1)
        row = torch.cat([self.kv_a_norm(c_kv), apply_rope(k_rope, cos, sin)], dim=-1)  # (B, T, r + dr)
        buf = state["latent"]
        rows = torch.arange(B, device=x.device)[:, None]
        buf.index_put_((rows, q_pos), row.detach().to(buf.dtype))
        S = buf.shape[1]

        def mask() -> torch.Tensor:
            visible = torch.arange(S, device=x.device)[None, None, :] <= q_pos[:, :, None]  # (B, T, S)
            return step_mask(visible, self.n_heads, x.dtype)

        keys = buf.to(x.dtype)[:, None]  # (B, 1, S, r + dr): one head shared by all
        # one latent head: key [c_kv | k_rope], value c_kv, each row read once; one token a row (a verify's several
        # take the masked SDPA below, the reason logged once)
        if use_decode_kernel(q_lat, keys, one_token="MLA latent"):
            lengths = ctx.memoised(("decode_lengths",), lambda: q_pos[:, -1] + 1)
            o_lat = decode_attention_mla(q_lat[:, :, 0], keys[:, 0], lengths, self.r, self.scale)[:, :, None]
        else:
            mask = ctx.memoised(("mla_mask", S, self.n_heads, x.dtype), mask)
            o_lat = attend_cached(q_lat, keys, keys[..., : self.r], mask, self.scale)
        if folded:  # W_uv and O in one GEMM
            return self.fused.project_out(o_lat.transpose(1, 2).reshape(B, T, self.n_heads * self.r), residual)
        o = torch.einsum("bhtr,hvr->bthv", o_lat, w[:, self.dn :]).reshape(B, T, self.n_heads * self.dv)
        if ctx.fused:  # the decode GEMV where it runs, the residual in its epilogue
            return decode_project(o, self.o_proj.weight, residual=residual)
        out = self.o_proj(o)
        return with_residual(out, residual)

    def _decompressed(self, q_nope, q_rope, c_kv, k_rope, q_pos, k_pos) -> torch.Tensor:
        B, H, T, _ = q_nope.shape
        S = c_kv.shape[1]
        kv = self.kv_b_proj(c_kv).view(B, S, H, self.dn + self.dv).transpose(1, 2)  # (B,H,S,dn+dv)
        k_nope, v = kv.split([self.dn, self.dv], dim=-1)
        k = torch.cat([k_nope, k_rope[:, None].expand(B, H, S, self.dr)], dim=-1)
        q = torch.cat([q_nope, q_rope], dim=-1)
        o = attend(q, k, v, q_pos, k_pos, scale=self.scale)  # (B,H,T,dv)
        return o.transpose(1, 2).reshape(B, T, H * self.dv)

    def _absorbed(self, q_nope, q_rope, c_kv, k_rope, q_pos, k_pos) -> torch.Tensor:
        B, H, T, _ = q_nope.shape
        w = self.kv_b_proj.weight.view(H, self.dn + self.dv, self.r)
        w_uk, w_uv = w[:, : self.dn], w[:, self.dn :]  # (H,dn,r), (H,dv,r)
        q_lat = torch.einsum("bhtd,hdr->bhtr", q_nope, w_uk)
        q = torch.cat([q_lat, q_rope], dim=-1)  # (B,H,T,r+dr)
        k = torch.cat([c_kv, k_rope], dim=-1)[:, None]  # (B,1,S,r+dr): one head shared by all
        o_lat = attend(q, k, c_kv[:, None], q_pos, k_pos, scale=self.scale)  # (B,H,T,r)
        o = torch.einsum("bhtr,hvr->bthv", o_lat, w_uv)
        return o.reshape(B, T, H * self.dv)
