"""The decode-step kernels as PyTorch custom ops, so a compiled step keeps them whole.

``torch.compile`` cannot trace the Triton launcher (its plan cache, its once-logs), and a graph break
inside a decode step would split the CUDA graph. Registered as custom ops (``archzoo::...``) the
update kernels are opaque nodes to the compiler: it calls them as they are, and a CUDA graph
captures their launches. Eager calls skip the op layer and go straight to the dispatcher.

The ops mutate their state argument in place (declared in ``mutates_args``) and return a new tensor.
"""

from __future__ import annotations

import torch

from .causal_conv1d import causal_conv1d_update as _conv_update
from .decode_attention import decode_attention as _decode_attention
from .decode_attention import decode_attention_mla as _decode_attention_mla
from .decode_attention import decode_attention_ring as _decode_attention_ring
from .decode_linear import decode_linear as _decode_linear
from .decode_linear import decode_linear_conv as _decode_linear_conv
from .decode_linear import decode_qkv_rope as _decode_qkv_rope
from .decode_linear import decode_rope_write as _decode_rope_write
from .linear_attention import linear_attention_update as _la_update
from .selective_scan import selective_state_update as _state_update

COPY_OUTPUTS = False  # True: the form before, every output copied (the A/B: tools/decode_profile.py --once off)


def _fresh(out: torch.Tensor, *inputs: torch.Tensor | None) -> torch.Tensor:
    """``out``, or a copy where it shares memory with an input: a custom op may not return an alias of one. The
    kernels return new tensors, so no copy runs: the ``clone()`` these ops made always was a device-to-device copy
    of each output, two a Mamba layer in every decode step (31 ``Memcpy DtoD`` in the Mamba student's batch-1 step
    on an H100, docs/results/decode/profile_h100_mamba_step_ab.log), each also a break in the PDL chain."""
    ptr = out.untyped_storage().data_ptr()
    if COPY_OUTPUTS or any(t is not None and t.untyped_storage().data_ptr() == ptr for t in inputs):
        return out.clone()
    return out


@torch.library.custom_op("archzoo::selective_state_update", mutates_args=("state",))
def _state_update_op(
    state: torch.Tensor,
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None,
    z: torch.Tensor | None,
    dt_bias: torch.Tensor | None,
    dt_softplus: bool,
) -> torch.Tensor:
    return _fresh(_state_update(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus), state, x, dt, B, C, z)


@_state_update_op.register_fake
def _(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus):
    return torch.empty_like(x)


@torch.library.custom_op("archzoo::causal_conv1d_update", mutates_args=("conv_state",))
def _conv_update_op(
    x: torch.Tensor,
    conv_state: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    activation: str | None,
) -> torch.Tensor:
    return _fresh(_conv_update(x, conv_state, weight, bias, activation), x, conv_state)


@_conv_update_op.register_fake
def _(x, conv_state, weight, bias, activation):
    return torch.empty_like(x)


def selective_state_update(
    state: torch.Tensor,
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    dt_softplus: bool = False,
) -> torch.Tensor:
    """mamba_ssm's ``selective_state_update`` (see ``archzoo.kernels.selective_scan``); traceable."""
    if torch.compiler.is_compiling():
        return _state_update_op(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus)
    return _state_update(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus)


def causal_conv1d_update(
    x: torch.Tensor,
    conv_state: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str | None = None,
) -> torch.Tensor:
    """causal-conv1d's ``causal_conv1d_update`` (see ``archzoo.kernels.causal_conv1d``); traceable."""
    if torch.compiler.is_compiling():
        return _conv_update_op(x, conv_state, weight, bias, activation)
    return _conv_update(x, conv_state, weight, bias, activation)


@torch.library.custom_op("archzoo::decode_attention", mutates_args=())
def _decode_attention_op(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    lengths: torch.Tensor,
    scale: float | None,
    window: int | None,
) -> torch.Tensor:
    if window is None:
        return _decode_attention(q, k_cache, v_cache, lengths, scale)
    return _decode_attention_ring(q, k_cache, v_cache, lengths, window, scale)


@_decode_attention_op.register_fake
def _(q, k_cache, v_cache, lengths, scale, window):
    return q.new_empty((*q.shape[:-1], v_cache.shape[3]))  # (B, H, Dv), or (B, H, Q, Dv) for Q tokens a row


def decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    lengths: torch.Tensor,
    scale: float | None = None,
) -> torch.Tensor:
    """Attention of one query token per row (or Q of them, q (B, H, Q, D)) over its cache's valid length (see
    ``archzoo.kernels.decode_attention``); traceable."""
    if torch.compiler.is_compiling():
        return _decode_attention_op(q, k_cache, v_cache, lengths, scale, None)
    return _decode_attention(q, k_cache, v_cache, lengths, scale)


def decode_attention_ring(
    q: torch.Tensor,
    k_ring: torch.Tensor,
    v_ring: torch.Tensor,
    lengths: torch.Tensor,
    window: int,
    scale: float | None = None,
) -> torch.Tensor:
    """Sliding-window decode over a ring buffer (see ``archzoo.kernels.decode_attention``); traceable."""
    if torch.compiler.is_compiling():
        return _decode_attention_op(q, k_ring, v_ring, lengths, scale, window)
    return _decode_attention_ring(q, k_ring, v_ring, lengths, window, scale)


@torch.library.custom_op("archzoo::linear_attention_update", mutates_args=("S", "z"))
def _la_update_op(
    S: torch.Tensor, z: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, normalize: bool, eps: float
) -> torch.Tensor:
    return _la_update(S, z, q, k, v, normalize, eps)  # a new tensor: o never aliases the state


@_la_update_op.register_fake
def _(S, z, q, k, v, normalize, eps):
    return q.new_empty((*q.shape[:2], v.shape[2]))


def linear_attention_update(
    S: torch.Tensor,
    z: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    normalize: bool = True,
    eps: float = 1e-6,
) -> torch.Tensor:
    """One linear-attention decode step, the state updated in place (see
    ``archzoo.kernels.linear_attention.linear_attention_update``); traceable."""
    if torch.compiler.is_compiling():
        return _la_update_op(S, z, q, k, v, normalize, eps)
    return _la_update(S, z, q, k, v, normalize, eps)


@torch.library.custom_op("archzoo::decode_attention_mla", mutates_args=())
def _decode_attention_mla_op(
    q: torch.Tensor, latent: torch.Tensor, lengths: torch.Tensor, rank: int, scale: float | None
) -> torch.Tensor:
    return _decode_attention_mla(q, latent, lengths, rank, scale)


@_decode_attention_mla_op.register_fake
def _(q, latent, lengths, rank, scale):
    return q.new_empty((*q.shape[:2], rank))


def decode_attention_mla(
    q: torch.Tensor, latent: torch.Tensor, lengths: torch.Tensor, rank: int, scale: float | None = None
) -> torch.Tensor:
    """MLA's absorbed decode attention (see ``archzoo.kernels.decode_attention.decode_attention_mla``); traceable."""
    if torch.compiler.is_compiling():
        return _decode_attention_mla_op(q, latent, lengths, rank, scale)
    return _decode_attention_mla(q, latent, lengths, rank, scale)


@torch.library.custom_op("archzoo::decode_linear", mutates_args=())
def _decode_linear_op(
    x: torch.Tensor,
    weight: torch.Tensor,
    norm_weight: torch.Tensor | None,
    eps: float,
    residual: torch.Tensor | None,
    swiglu: bool,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    # a new tensor, never a view of an input
    return _decode_linear(x, weight, norm_weight, eps, residual, swiglu, bias)


@_decode_linear_op.register_fake
def _(x, weight, norm_weight, eps, residual, swiglu, bias=None):
    from .decode_linear._checks import check_decode_linear

    # bad shapes fail at trace time, as in eager
    M, _, N = check_decode_linear(x, weight, norm_weight, eps, residual, swiglu, bias)
    return x.new_empty((M, N // 2 if swiglu else N))


def decode_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    norm_weight: torch.Tensor | None = None,
    eps: float = 1e-5,
    residual: torch.Tensor | None = None,
    swiglu: bool = False,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """A projection of a few rows with the RMSNorm before it fused in, and optionally a bias, a residual add or
    SwiGLU after it (see ``archzoo.kernels.decode_linear.decode_linear``); traceable."""
    if torch.compiler.is_compiling():
        return _decode_linear_op(x, weight, norm_weight, float(eps), residual, bool(swiglu), bias)
    return _decode_linear(x, weight, norm_weight, eps, residual, swiglu, bias)


@torch.library.custom_op("archzoo::decode_linear_conv", mutates_args=("conv_state",))
def _decode_linear_conv_op(
    x: torch.Tensor,
    weight: torch.Tensor,
    norm_weight: torch.Tensor | None,
    eps: float,
    bias: torch.Tensor | None,
    conv_state: torch.Tensor,
    conv_weight: torch.Tensor,
    conv_bias: torch.Tensor | None,
) -> torch.Tensor:
    # a new tensor; the conv state written in place
    return _decode_linear_conv(x, weight, norm_weight, eps, bias, conv_state, conv_weight, conv_bias)


@_decode_linear_conv_op.register_fake
def _(x, weight, norm_weight, eps, bias, conv_state, conv_weight, conv_bias):
    return x.new_empty((x.shape[0], weight.shape[0]))


def decode_linear_conv(
    x: torch.Tensor,
    weight: torch.Tensor,
    norm_weight: torch.Tensor | None,
    eps: float,
    bias: torch.Tensor | None,
    conv_state: torch.Tensor,
    conv_weight: torch.Tensor,
    conv_bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """A Mamba layer's decode-step in_proj with its conv step in the GEMV's epilogue (see
    ``archzoo.kernels.decode_linear.decode_linear_conv``); traceable (the conv state is declared mutated)."""
    args = (x, weight, norm_weight, float(eps), bias, conv_state, conv_weight, conv_bias)
    if torch.compiler.is_compiling():
        return _decode_linear_conv_op(*args)
    return _decode_linear_conv(*args)


@torch.library.custom_op("archzoo::decode_qkv_rope", mutates_args=("k_cache", "v_cache"))
def _decode_qkv_rope_op(
    x: torch.Tensor,
    weight: torch.Tensor,
    norm_weight: torch.Tensor | None,
    eps: float,
    positions: torch.Tensor,
    inv_freq: torch.Tensor,
    n_heads: int,
    n_kv_heads: int,
    head_dim: int,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    tokens_per_row: int = 1,
) -> torch.Tensor:
    args = (positions, inv_freq, n_heads, n_kv_heads, head_dim, k_cache, v_cache)
    # a new tensor; the caches written in place
    return _decode_qkv_rope(x, weight, norm_weight, eps, *args, tokens_per_row=tokens_per_row)


@_decode_qkv_rope_op.register_fake
def _(x, weight, norm_weight, eps, positions, inv_freq, n_heads, n_kv_heads, head_dim, k_cache, v_cache,
      tokens_per_row=1):  # fmt: skip
    return x.new_empty((x.shape[0], n_heads * head_dim))


def decode_qkv_rope(
    x: torch.Tensor,
    weight: torch.Tensor,
    norm_weight: torch.Tensor | None,
    eps: float,
    positions: torch.Tensor,
    inv_freq: torch.Tensor,
    n_heads: int,
    n_kv_heads: int,
    head_dim: int,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    tokens_per_row: int = 1,
) -> torch.Tensor:
    """An attention layer's decode-step Q|K|V projection with RoPE and the K/V cache write in one kernel (see
    ``archzoo.kernels.decode_linear.decode_qkv_rope``; ``tokens_per_row`` tokens a cache row); traceable (the
    caches are declared mutated)."""
    args = (positions, inv_freq, int(n_heads), int(n_kv_heads), int(head_dim), k_cache, v_cache, int(tokens_per_row))
    if torch.compiler.is_compiling():
        return _decode_qkv_rope_op(x, weight, norm_weight, float(eps), *args)
    return _decode_qkv_rope(x, weight, norm_weight, eps, *args[:-1], tokens_per_row=args[-1])


@torch.library.custom_op("archzoo::decode_rope_write", mutates_args=("k_cache", "v_cache"))
def _decode_rope_write_op(
    y: torch.Tensor,
    positions: torch.Tensor,
    inv_freq: torch.Tensor,
    n_heads: int,
    n_kv_heads: int,
    head_dim: int,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    tokens_per_row: int = 1,
) -> torch.Tensor:
    # a new tensor; the caches written in place
    return _decode_rope_write(y, positions, inv_freq, n_heads, n_kv_heads, head_dim, k_cache, v_cache, tokens_per_row)


@_decode_rope_write_op.register_fake
def _(y, positions, inv_freq, n_heads, n_kv_heads, head_dim, k_cache, v_cache, tokens_per_row=1):
    return y.new_empty((y.shape[0], n_heads * head_dim))


def decode_rope_write(
    y: torch.Tensor,
    positions: torch.Tensor,
    inv_freq: torch.Tensor,
    n_heads: int,
    n_kv_heads: int,
    head_dim: int,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    tokens_per_row: int = 1,
) -> torch.Tensor:
    """RoPE and the K/V cache write on the fused Q|K|V copy's output, one kernel (see
    ``archzoo.kernels.decode_linear.decode_rope_write``); traceable (the caches are declared mutated)."""
    args = (y, positions, inv_freq, int(n_heads), int(n_kv_heads), int(head_dim), k_cache, v_cache, int(tokens_per_row))
    if torch.compiler.is_compiling():
        return _decode_rope_write_op(*args)
    return _decode_rope_write(*args)
