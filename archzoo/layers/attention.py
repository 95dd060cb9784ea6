"""Softmax attention: MHA, GQA, MQA (``n_kv_heads``), sliding window (``window``) and CLA (``cla_group``).

Caches: a global layer holds K/V buffers of ``max_seq_len`` positions written at ``pos``; a
sliding-window layer holds a ring buffer of ``min(window, max_seq_len)`` slots (position p lives
in slot ``p % W``), so its size stops growing. A CLA member holds nothing and reads the K/V its
group leader put in ``ctx.shared["cla_kv"]`` during the same forward call (the latest leader's: members follow it).

``attend`` is the one function a fused kernel replaces: it takes absolute positions for the
queries and keys and builds the causal / window mask from them, so prefill, decode, ring buffers
and CLA all go through the same code.

The captured decode step (``ctx.decoding``) of one token per row runs ``archzoo.kernels.decode_attention``
(or its ring sibling) where the Triton kernels run: it reads each row's valid length only, split over the
length so a long cache fills the GPU. Masked SDPA over the whole static buffer stays the form for
several tokens (a speculative verify step), for other devices, and for the side-by-side measurement
(``DECODE_ATTENTION``).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from ..kernels import decode_attention, decode_attention_ring, decode_qkv_rope, decode_rope_write
from ..kernels._dispatch import interpret_mode, record
from ..kernels.decode_attention._checks import MAX_HEAD_DIM, MAX_QUERIES
from ..kernels.decode_linear import MAX_M
from . import fused as fused_mod
from .base import LayerConfig, LayerState, TakesNormAndResidual, dtype_bytes, field_error, with_residual
from .fused import FusedLinears, decode_project
from .norm import RMSNorm
from .rope import RotaryEmbedding, apply_rope
from .window import window_attention

# Which attention a one-token decode step runs where the Triton kernels run: "kernel" (flash-decoding over
# each row's valid length) or "sdpa" (masked SDPA over the whole static buffer, what every device runs).
# ``archzoo bench decode --decode-attention kernel,sdpa`` switches it to measure both in one process; a
# compiled step guards on it, so a change recompiles rather than replaying the other form.
DECODE_ATTENTION = "kernel"
# How causal attention over a whole sequence (training, prefill) with fewer K/V heads than query heads calls SDPA:
# "native" passes ``enable_gqa=True`` (K/V read in place); "expand" repeats each K/V head for its query heads first
# and calls SDPA with equal heads. Why a switch: on Hopper, torch's SDPA takes cuDNN's fused kernel only for equal
# heads and FlashAttention-2's for GQA, and in the H200 distillation runs of 2026-12-05 the MQA student trained at
# 143k tokens/s where MLA (nine full heads) trained at 193k (docs/distillation.md). Which is faster is measured
# by ``archzoo bench kernels --ops gqa``; "native" stays the default until then.
GQA_SDPA = "native"
GQA_SDPA_CHOICES = ("native", "expand")
DECODE_KERNEL_MAX_DIM = MAX_HEAD_DIM  # the kernel's widest head (MLA's latent key is r + d_rope wide)


def gqa_sdpa() -> str:
    """``GQA_SDPA``, checked."""
    if GQA_SDPA not in GQA_SDPA_CHOICES:
        raise ValueError(f"archzoo.layers.attention.GQA_SDPA must be one of {', '.join(GQA_SDPA_CHOICES)}; "
                         f"got {GQA_SDPA!r}")  # fmt: skip
    return GQA_SDPA


def use_decode_kernel(
    q: torch.Tensor, k: torch.Tensor, window: int | None = None, one_token: str | None = None
) -> bool:
    """True when a decode step of q (B, H, T, D) over cache k should run the decode kernel: one token a row, or
    up to ``MAX_QUERIES`` tokens a row (a speculative verify) over a global cache. A ring (``window``) and the
    kernel ``one_token`` names (MLA's latent form) take one token a row.

    Where the kernels run but these tensors do not fit them, masked SDPA runs and the reason is logged once
    (``last_backend("decode_attention") == "sdpa"``) on an eager step; a compiled step cannot log while it is
    traced, so ``archzoo bench decode`` reports the attention that ran in each row (``attention_backend``).
    """
    if DECODE_ATTENTION != "kernel":
        return False
    if not (q.is_cuda or (q.device.type == "cpu" and interpret_mode())):  # where the Triton kernels run
        return False
    reason = None
    one_token = one_token or ("ring" if window is not None else None)
    if one_token is not None and q.shape[2] > 1:
        reason = f"{q.shape[2]} tokens a row: the {one_token} decode kernel takes one"
    elif q.shape[2] > MAX_QUERIES:
        reason = f"{q.shape[2]} tokens a row: the decode kernel takes at most {MAX_QUERIES}"
    elif q.dtype != k.dtype:
        reason = f"the cache holds {k.dtype} and the step computes in {q.dtype}"
    elif q.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        reason = f"the decode kernel takes fp16, bf16 or fp32, not {q.dtype}"
    elif max(q.shape[-1], k.shape[-1]) > DECODE_KERNEL_MAX_DIM:
        reason = f"head dim {max(q.shape[-1], k.shape[-1])} > {DECODE_KERNEL_MAX_DIM}, the decode kernel's widest"
    if reason is not None and not torch.compiler.is_compiling():
        record("decode_attention", "sdpa", reason)
    return reason is None


class AttentionConfig(LayerConfig):
    """Softmax attention: MHA (n_kv_heads = n_heads), GQA, MQA (n_kv_heads = 1), sliding window, CLA."""

    type: Literal["attention"] = "attention"
    n_heads: int = Field(gt=0)
    n_kv_heads: int | None = Field(default=None, gt=0, description="default n_heads (MHA)")
    head_dim: int | None = Field(default=None, gt=0, description="default d_model / n_heads")
    rope_theta: float = Field(default=10000.0, gt=0)
    window: int | None = Field(default=None, ge=1, description="sliding window in tokens; null = global")
    cla_group: int = Field(default=1, ge=1, description="layers per group sharing the first one's K/V")
    qkv_bias: bool = False

    @model_validator(mode="after")
    def _check(self) -> AttentionConfig:
        kv = self.n_kv_heads or self.n_heads
        if self.n_heads % kv:
            raise field_error("n_kv_heads", f"n_kv_heads={kv} must divide n_heads={self.n_heads}")
        return self

    def check_dims(self, d_model: int) -> None:
        if self.head_dim is None and d_model % self.n_heads:
            raise field_error("n_heads", f"d_model={d_model} is not divisible by n_heads={self.n_heads}; set head_dim")
        hd = self.head_dim or d_model // self.n_heads
        if hd % 2:
            raise field_error("head_dim", f"head_dim={hd} must be even (RoPE rotates pairs)")

    def pattern_letter(self, letter: str) -> str:
        return "W" if self.window is not None else letter


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_pos: torch.Tensor,
    k_pos: torch.Tensor | None,
    window: int | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """Causal (optionally windowed) attention by absolute position.

    q (B, H, T, D); k (B, Hkv, S, D); v (B, Hkv, S, Dv) with H % Hkv == 0; q_pos (T,) and
    k_pos (S,) absolute positions, a negative key position marks an empty slot. ``k_pos=None``
    means the keys are the queries' own tokens. Key j is visible to query i when
    ``k_pos[j] <= q_pos[i]`` and, with a window, ``k_pos[j] > q_pos[i] - window``.
    Returns (B, H, T, Dv).
    """
    gqa = q.shape[1] != k.shape[1]
    T = q.shape[2]
    if k_pos is None and (window is None or window >= T):
        # The common training / prefill case: SDPA's own causal mask selects its fused kernels.
        if gqa and T > 1 and gqa_sdpa() == "expand":
            group = q.shape[1] // k.shape[1]
            k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)  # head h reads kv h // group
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)
        return F.scaled_dot_product_attention(q, k, v, is_causal=T > 1, scale=scale, enable_gqa=gqa)
    if k_pos is None:  # a whole sequence under a window shorter than it: FlexAttention on CUDA (window.py)
        return window_attention(q, k, v, window, scale)
    visible = (k_pos[None, :] <= q_pos[:, None]) & (k_pos[None, :] >= 0)
    if window is not None:
        visible &= k_pos[None, :] > q_pos[:, None] - window
    return F.scaled_dot_product_attention(q, k, v, attn_mask=visible, scale=scale, enable_gqa=gqa)


def step_mask(visible: torch.Tensor, groups: int, dtype: torch.dtype) -> torch.Tensor:
    """visible (B, T, S) bool -> the additive mask ``attend_cached`` takes: (B, 1, 1, S) for one token,
    else (B, 1, groups * T, S) (each KV head's ``groups`` query heads folded into the query axis);
    0 where visible, -inf elsewhere, in the attention's dtype. Built once per step and shared by
    the layers (``ForwardContext.memoised``), so SDPA gets a ready float mask and no layer converts one.
    """
    B, T, S = visible.shape
    if T > 1:
        visible = visible[:, None].expand(B, groups, T, S).reshape(B, groups * T, S)
    zero = torch.zeros((), dtype=dtype, device=visible.device)
    return torch.where(visible, zero, torch.full_like(zero, float("-inf")))[:, None]


def attend_cached(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, scale: float | None = None
) -> torch.Tensor:
    """Attention over a static cache buffer with a per-row mask: the decode step's form.

    q (B, H, T, D); k (B, Hkv, S, D); v (B, Hkv, S, Dv); mask from ``step_mask`` (additive).
    Returns (B, H, T, Dv). GQA without repeating K/V: the H / Hkv query heads of each KV head are
    folded into the query axis, so the kernel reads every cached key once (``enable_gqa`` would copy
    K/V per query head on the paths that take a mask).
    """
    B, H, T, D = q.shape
    Hkv = k.shape[1]
    q = q.reshape(B, Hkv, (H // Hkv) * T, D)  # head h = kv * G + g, as repeat_interleave orders them
    o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)  # (B, Hkv, G*T, Dv)
    return o.reshape(B, H, T, v.shape[-1])


def ring_slot_positions(last: torch.Tensor, slots: int) -> torch.Tensor:
    """(B,) position of each row's newest token -> (B, slots) position each ring slot holds (-1: empty).

    Slot ``s`` holds the latest position ``p <= last`` with ``p % slots == s``.
    """
    s = torch.arange(slots, device=last.device)
    p = last[:, None] - torch.remainder(last[:, None] - s, slots)
    return torch.where(p >= 0, p, -1)


def ring_positions(pos: int, slots: int, device: torch.device) -> torch.Tensor:
    """Absolute position held by each ring-buffer slot after ``pos`` tokens (-1 where empty)."""
    s = torch.arange(slots, device=device)
    p = s + slots * torch.div(pos - 1 - s, slots, rounding_mode="floor")
    return torch.where(s < pos, p, torch.full_like(p, -1))


class Attention(TakesNormAndResidual, nn.Module):
    def __init__(self, cfg: AttentionConfig, d_model: int, layer_idx: int = 0, kv_source: int | None = None):
        super().__init__()
        self.cfg = cfg
        self.layer_idx = layer_idx
        self.kv_source = layer_idx if kv_source is None else kv_source
        # A plain bool, not a property over the two ints: a compiled decode step then guards on this
        # flag alone, and every layer of a model shares one compiled block (regional compilation).
        self.owns_kv = self.kv_source == self.layer_idx
        self.n_heads = cfg.n_heads
        self.n_kv_heads = cfg.n_kv_heads or cfg.n_heads
        self.head_dim = cfg.head_dim or d_model // cfg.n_heads
        self.window = cfg.window
        self.q_proj = nn.Linear(d_model, self.n_heads * self.head_dim, bias=cfg.qkv_bias)
        if self.owns_kv:
            self.k_proj = nn.Linear(d_model, self.n_kv_heads * self.head_dim, bias=cfg.qkv_bias)
            self.v_proj = nn.Linear(d_model, self.n_kv_heads * self.head_dim, bias=cfg.qkv_bias)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, d_model, bias=False)
        # Q|K|V in one GEMM for decode steps (layers/fused.py); a CLA member projects Q alone.
        self.fused = (
            FusedLinears(self.q_proj, self.k_proj, self.v_proj, rope=(self.n_heads, self.n_kv_heads, self.head_dim))
            if self.owns_kv
            else None
        )
        self.rope = RotaryEmbedding(self.head_dim, cfg.rope_theta)

    # ------------------------------------------------------------------ state

    @staticmethod
    def cache_slots(cfg: AttentionConfig, max_seq_len: int) -> int:
        return max_seq_len if cfg.window is None else min(cfg.window, max_seq_len)

    @staticmethod
    def bounded_state(cfg: AttentionConfig) -> bool:
        return cfg.window is not None

    @staticmethod
    def state_bytes(cfg: AttentionConfig, d_model: int, batch_size: int, seq_len: int, dtype: torch.dtype) -> int:
        n_kv = cfg.n_kv_heads or cfg.n_heads
        head_dim = cfg.head_dim or d_model // cfg.n_heads
        return 2 * batch_size * n_kv * Attention.cache_slots(cfg, seq_len) * head_dim * dtype_bytes(dtype)

    def new_state(self, batch_size: int, max_seq_len: int, dtype: torch.dtype, device) -> LayerState | None:
        if not self.owns_kv:
            return None
        shape = (batch_size, self.n_kv_heads, self.cache_slots(self.cfg, max_seq_len), self.head_dim)
        # A global layer's K/V rewind by length; a ring buffer overwrites slots (position p in slot p % slots), so
        # a rollback restores the slots it overwrote.
        return LayerState(
            by_length=("k", "v") if self.window is None else (),
            ring=("k", "v") if self.window is not None else (),
            k=torch.zeros(shape, dtype=dtype, device=device),
            v=torch.zeros(shape, dtype=dtype, device=device),
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
        """``norm``: applied to x first (a decode step fuses it into the Q|K|V projection); ``residual``: returned
        plus it (a decode step adds it in the output projection's epilogue: ``TAKES_RESIDUAL``)."""
        B, T, _ = x.shape
        if ctx.decoding:
            return self._decode(x, state, ctx, norm, residual)
        if norm is not None:
            x = norm(x)
        q_pos, cos, sin = self.rope.span(ctx, T, x.device, x.dtype)
        q = apply_rope(self.q_proj(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2), cos, sin)  # (B,H,T,D)
        if self.owns_kv:
            k = self.k_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B,Hkv,T,D)
            v = self.v_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
            k = apply_rope(k, cos, sin)
            kv = self._with_cache(k, v, q_pos, state, ctx.pos)
            # One key for every layer, as in the decode step: a CLA member's leader is the latest layer that
            # owns K/V (``state_owners``). A key per layer grew ``ctx.shared`` by one entry a layer, and a block
            # compiled with ``speed.compile`` guards on its length: every attention layer recompiled, dynamo's
            # limit of 8 was reached, and the other layers of MQA, CLA2, SWA and the hybrids trained eagerly
            # (measured on the H200: MQA and CLA2 at 122k tokens/s against MLA's 158k, with 4.5 GiB more memory).
            ctx.shared["cla_kv"] = kv
        else:
            kv = ctx.shared["cla_kv"]
        k, v, k_pos = kv
        o = attend(q, k, v, q_pos, k_pos, self.window)  # (B,H,T,D)
        out = self.o_proj(o.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim))
        return with_residual(out, residual)

    def _decode(
        self,
        x: torch.Tensor,
        state: LayerState | None,
        ctx,
        norm: nn.Module | None = None,
        residual: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """A capturable step: positions from ``ctx.lengths`` (B,), K/V written by index, then the decode kernel
        over each row's valid length (one token a row, where the Triton kernels run) or SDPA over the whole
        static buffer with a per-row mask. No host value decides anything here."""
        B, T, _ = x.shape
        q_pos = ctx.positions(T, x.device)  # (B, T)
        rope = (q_pos.reshape(-1), self.rope.inv_freq, self.n_heads, self.n_kv_heads, self.head_dim, state["k"],
                state["v"]) if state is not None else None  # fmt: skip
        op = self.step_fusion(B, T, x.dtype, x.device, norm) if self._has_copy_and_cache(state, ctx) else None
        if op == "decode_qkv_rope":  # Q|K|V, RoPE and the cache write: one kernel (issue 18)
            nw, eps = (norm.weight, norm.eps) if norm is not None else (None, 1e-5)
            q = decode_qkv_rope(x.reshape(B * T, -1), self.fused.weight, nw, eps, *rope, tokens_per_row=T)
        elif op == "decode_rope_write":  # F.linear on the fused copy, then RoPE + cache write: one kernel
            y = F.linear(norm(x) if norm is not None else x, self.fused.weight)  # (B, T, N): columns in pair order
            q = decode_rope_write(y.reshape(B * T, -1), *rope, tokens_per_row=T)
        else:
            q = None
        if q is not None:  # the caches written by the kernel
            q = q.view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, T, D)
            kv = ctx.shared["cla_kv"] = (state["k"], state["v"], None)
        else:
            q, kv = self._qkv_step(x, state, ctx, norm, q_pos)
        keys, values, k_pos = kv  # k_pos (B, S): absolute position in each key slot, -1 where empty; or None
        return self._attend_step(q, keys, values, k_pos, q_pos, ctx, residual)

    def step_fusion(
        self, B: int, T: int, dtype: torch.dtype, device: torch.device, norm: nn.Module | None
    ) -> str | None:
        """Which one-kernel path a step of B rows x T tokens in ``dtype`` takes for Q|K|V's RoPE and cache write,
        given the fused copy and a cache: "decode_qkv_rope" (the projection too: ``fused.qkv_kernel_for`` its rows,
        at most MAX_M of them, a norm the GEMV fuses), "decode_rope_write" (after a plain projection:
        ``fused.rope_write_for`` its rows, the copy in RoPE-pair order), or None (the plain ops). A path the
        settings ask for that the layer cannot take is logged with why (once; ``_unfused_why`` has the rest).

        Host values only: the step calls it eagerly and while traced (where it cannot log), and ``generate``
        calls it before it compiles or captures (``generation.explain_unfused``), so a compiled-only decode
        says why too."""
        rows = B * T
        if fused_mod.qkv_kernel_for(rows, device):
            why = self._unfused_why(T, dtype)
            if why is None and rows > MAX_M:
                why = f"{rows} rows > {MAX_M}"
            if why is None and not (norm is None or isinstance(norm, RMSNorm)):
                why = f"a {type(norm).__name__} before the projection, which the GEMV does not fuse (RMSNorm or none)"
            if self._take("decode_qkv_rope", why):
                return "decode_qkv_rope"
        if fused_mod.rope_write_for(rows, device):
            why = self._unfused_why(T, dtype)
            if why is None and self.fused.rope is None:
                why = "the fused Q|K|V copy's columns are not in RoPE-pair order"
            if self._take("decode_rope_write", why):
                return "decode_rope_write"
        return None

    def _unfused_why(self, T: int, dtype: torch.dtype) -> str | None:
        """Why Q|K|V's RoPE and cache write cannot run as one kernel on the fused copy (None: they can). No bias, one
        dtype; one token a row, or several (a speculative verify's (B, k+1) forward) into a global cache: a
        ring would have a later token of the row overwrite a slot an earlier one still reads."""
        f = self.fused
        if f.bias is not None:
            return "Q|K|V has a bias (the kernels take none)"
        if dtype != f.weight.dtype:
            return f"the input is {dtype} and the fused copy {f.weight.dtype}"
        if T > 1 and self.window is not None:
            return f"{T} tokens a row into a ring buffer (a later token could overwrite a slot an earlier one reads)"
        return None

    def has_fused_copy(self) -> bool:
        """The fused Q|K|V copy is made (a CLA member has none: it projects Q alone; none before ``refresh_fused``)."""
        return self.fused is not None and self.fused.weight is not None

    def _has_copy_and_cache(self, state: LayerState | None, ctx) -> bool:
        """The fused Q|K|V copy is read (``ctx.fused``) and made, and there is a cache to write; else the plain ops
        run, with nothing to log."""
        return ctx.fused and self.has_fused_copy() and state is not None

    @staticmethod
    def _take(op: str, why: str | None) -> bool:
        """True where ``why`` is None; else logs it (once, outside a trace: a traced step cannot log) with the plain
        path."""
        if why is not None and not torch.compiler.is_compiling():
            record(op, "unfused", f"Q|K|V, RoPE and the cache write run apart: {why}")
        return why is None

    def _qkv_step(self, x, state, ctx, norm, q_pos):
        """Q with RoPE (B, H, T, D), and the keys, values and key positions to attend over (the step's K / V written
        into the cache first): the projections through the fused copy or the layer's own, then ``apply_rope``."""
        B, T, _ = x.shape
        cos, sin = self.rope(q_pos, x.dtype)  # (B, T, D)
        if ctx.fused and self.fused is not None:
            q, k, v = self.fused(x, norm)
        else:
            x = norm(x) if norm is not None else x
            q = self.q_proj(x)
            k, v = (self.k_proj(x), self.v_proj(x)) if self.owns_kv else (None, None)
        q = apply_rope(q.reshape(B, T, self.n_heads, self.head_dim).transpose(1, 2), cos, sin)
        if self.owns_kv:
            k = k.view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B,Hkv,T,D)
            v = v.view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
            kv = self._write_step(apply_rope(k, cos, sin), v, q_pos, state)
            ctx.shared["cla_kv"] = kv  # members follow their leader: the latest one
        else:
            kv = ctx.shared["cla_kv"]
        return q, kv

    def _attend_step(self, q, keys, values, k_pos, q_pos, ctx, residual):
        """The step's attention over the cache and the output projection (see ``_decode``)."""
        B, _, T, _ = q.shape
        if use_decode_kernel(q, keys, self.window):
            # tokens seen, the step's last included; with T tokens a row (a verify) token i sees T - 1 - i fewer
            lengths = ctx.memoised(("decode_lengths",), lambda: q_pos[:, -1] + 1)
            if self.window is not None:
                o = decode_attention_ring(q[:, :, 0], keys, values, lengths, self.window)  # (B, H, D)
            elif T == 1:
                o = decode_attention(q[:, :, 0], keys, values, lengths)  # (B, H, D)
            else:
                o = decode_attention(q, keys, values, lengths).transpose(1, 2)  # (B, H, T, D) -> (B, T, H, D)
            return self._out(o.reshape(B, T, self.n_heads * self.head_dim), ctx, residual)

        def mask() -> torch.Tensor:
            kp = k_pos if k_pos is not None else self._slot_positions(q_pos, keys.shape[2])
            visible = (kp[:, None, :] <= q_pos[:, :, None]) & (kp[:, None, :] >= 0)
            if self.window is not None:
                visible &= kp[:, None, :] > q_pos[:, :, None] - self.window
            return step_mask(visible, self.n_heads // self.n_kv_heads, q.dtype)

        G = self.n_heads // self.n_kv_heads
        key = ("attention_mask", keys.shape[2], self.window, G, q.dtype)  # the same for every layer alike
        o = attend_cached(q, keys.to(q.dtype), values.to(q.dtype), ctx.memoised(key, mask))  # (B, H, T, D)
        return self._out(o.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim), ctx, residual)

    def _out(self, o: torch.Tensor, ctx, residual: torch.Tensor | None = None) -> torch.Tensor:
        """The output projection of a decode step (plus ``residual``): through ``decode_project`` where the step
        reads the fused copies (``generate``'s; the decode GEMV adds the residual in its epilogue), else
        ``o_proj`` itself."""
        if ctx.fused:
            return decode_project(o, self.o_proj.weight, self.o_proj.bias, residual=residual)
        out = self.o_proj(o)
        return with_residual(out, residual)

    def _slot_positions(self, q_pos: torch.Tensor, slots: int) -> torch.Tensor:
        """(B, slots) absolute position each buffer slot holds after a one-token step at q_pos (B, 1), -1 where
        empty: the slot index itself for a global buffer, the ring's layout for a window."""
        if self.window is None:
            return torch.arange(slots, device=q_pos.device).expand(q_pos.shape[0], slots)
        return ring_slot_positions(q_pos[:, -1], slots)

    def _write_step(self, k, v, q_pos, state: LayerState):
        """Write a step's K/V (B, Hkv, T, D) at positions q_pos (B, T); return keys, values and the key positions
        (B, S), or None where they follow from the buffer itself (``_slot_positions``): the decode kernel
        needs none, so a step that runs it builds none."""
        kb, vb = state["k"], state["v"]
        B, Hkv, T, _ = k.shape
        slots = kb.shape[2]
        rows = torch.arange(B, device=k.device)[:, None, None]
        heads = torch.arange(Hkv, device=k.device)[None, :, None]
        if self.window is None:
            idx = (rows, heads, q_pos[:, None, :])
            kb.index_put_(idx, k.detach().to(kb.dtype))
            vb.index_put_(idx, v.detach().to(vb.dtype))
            return kb, vb, None  # positions: the slots' own indices (_slot_positions), built only if a mask needs them
        if T == 1:  # the slot it overwrites held position pos - W, already outside the window
            idx = (rows, heads, torch.remainder(q_pos, slots)[:, None, :])
            kb.index_put_(idx, k.detach().to(kb.dtype))
            vb.index_put_(idx, v.detach().to(vb.dtype))
            return kb, vb, None  # positions: from each row's newest one (_slot_positions), only if a mask needs them
        # Several tokens: an earlier one may need a slot a later one overwrites, so attend over the
        # old ring plus the new keys, then write the last min(T, W) of them.
        k_pos = torch.cat([ring_slot_positions(q_pos[:, 0] - 1, slots), q_pos], dim=1)  # (B, W + T)
        keys, values = torch.cat([kb.to(k.dtype), k], dim=2), torch.cat([vb.to(v.dtype), v], dim=2)
        n = min(T, slots)
        idx = (rows, heads, torch.remainder(q_pos[:, -n:], slots)[:, None, :])
        kb.index_put_(idx, k[:, :, -n:].detach().to(kb.dtype))
        vb.index_put_(idx, v[:, :, -n:].detach().to(vb.dtype))
        return keys, values, k_pos

    def _with_cache(self, k, v, q_pos, state: LayerState | None, pos: int):
        """Write new K/V into the cache; return the keys, values and key positions to attend over.

        Cache buffers never carry autograd history (writes are detached). When gradients are
        wanted, the new keys join the cached ones by concatenation so they stay differentiable;
        otherwise attention reads the buffers in place.
        """
        if state is None:
            return k, v, None
        kb, vb = state["k"], state["v"]
        T, slots = k.shape[2], kb.shape[2]
        grad = torch.is_grad_enabled() and (k.requires_grad or v.requires_grad)
        if self.window is None:
            kb[:, :, pos : pos + T] = k.detach().to(kb.dtype)
            vb[:, :, pos : pos + T] = v.detach().to(vb.dtype)
            if pos == 0:
                return k, v, None
            k_pos = torch.arange(pos + T, device=k.device)
            if grad:
                keys = torch.cat([kb[:, :, :pos].to(k.dtype), k], dim=2)
                return keys, torch.cat([vb[:, :, :pos].to(v.dtype), v], dim=2), k_pos
            return kb[:, :, : pos + T].to(k.dtype), vb[:, :, : pos + T].to(v.dtype), k_pos
        # Ring buffer. One new token: write first, then attend over the buffer (the slot it
        # overwrites held position pos - W, already outside the window). Several new tokens: an
        # earlier one may still need a slot a later one overwrites, so attend over the old
        # buffer plus the new keys, then write.
        if T == 1 and not grad:
            kb[:, :, pos % slots] = k[:, :, 0].to(kb.dtype)
            vb[:, :, pos % slots] = v[:, :, 0].to(vb.dtype)
            return kb.to(k.dtype), vb.to(v.dtype), ring_positions(pos + 1, slots, k.device)
        if pos == 0:
            keys, values, k_pos = k, v, None
        else:
            keys = torch.cat([kb.to(k.dtype), k], dim=2)
            values = torch.cat([vb.to(v.dtype), v], dim=2)
            k_pos = torch.cat([ring_positions(pos, slots, k.device), q_pos])
        n = min(T, slots)
        idx = q_pos[-n:] % slots
        kb[:, :, idx] = k[:, :, -n:].detach().to(kb.dtype)
        vb[:, :, idx] = v[:, :, -n:].detach().to(vb.dtype)
        return keys, values, k_pos


def _kv_signature(m: AttentionConfig, d_model: int) -> tuple:
    return (m.n_kv_heads or m.n_heads, m.head_dim or d_model // m.n_heads, m.window, m.rope_theta)


def state_owners(cfg) -> list[int]:
    """For each layer, the index of the layer whose state it uses (itself unless CLA shares one).

    Cross-layer attention (Brandon et al., 2024): attention layers, in model order, form groups
    of ``cla_group``; every member reads the K/V of the group's first layer, which alone holds
    cache. A group closes early where the K/V geometry (KV heads, head dim, window, RoPE base)
    changes, so members can always read their leader's buffers. Layers of other families sit
    outside groups and do not break them.
    """
    owners = list(range(cfg.n_layers))
    leader, size, sig = None, 0, None
    for i, block in enumerate(cfg.blocks):
        m = block.mixer
        if not isinstance(m, AttentionConfig):
            continue
        s = _kv_signature(m, cfg.d_model)
        if leader is not None and size < cfg.blocks[leader].mixer.cla_group and s == sig:
            owners[i] = leader
            size += 1
        else:
            leader, size, sig = i, 1, s
    return owners
