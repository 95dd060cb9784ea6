"""Sliding-window attention over a whole sequence (training) through PyTorch's FlexAttention.

SDPA with a boolean window mask computes every query-key pair and discards most of them: its cost
grows with T^2 whatever the window. FlexAttention takes a block mask (causal and within ``window``)
and skips the blocks outside it, so the cost grows with T x window. GQA runs without repeating K/V
(``enable_gqa``). The compiled kernel is made once per (length, window, device) (``torch.compile`` of
``flex_attention``, block masks cached), forward and backward.

Where: CUDA tensors with gradients on (training). A prefill (no gradients) keeps SDPA with the mask: its
length changes with every prompt, and each new length would compile a new kernel. SDPA with the mask
stays the reference and the path everywhere else (FlexAttention has no backward on the CPU), and the
fallback: should FlexAttention fail to compile on a device, SDPA
runs from then on, the reason logged once. ``archzoo.kernels.last_backend("sliding_window_attention")``
says which ran ("flex" or "sdpa").
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F

from ..kernels._dispatch import record

# Tests set this to run FlexAttention (uncompiled, forward only) on CPU tensors against the SDPA path.
FLEX_ON_CPU = False
_BLOCK_MASKS: OrderedDict[tuple, object] = OrderedDict()
_COMPILED = None
_FAILED: dict[str, str] = {}


def window_mask(T: int, window: int, device) -> torch.Tensor:
    """(T, T) bool: query i sees key j when j <= i and i - j < window (the reference's mask)."""
    i = torch.arange(T, device=device)
    return (i[None, :] <= i[:, None]) & (i[:, None] - i[None, :] < window)


def sdpa_window(q, k, v, window: int, scale: float | None = None) -> torch.Tensor:
    """The reference: SDPA with the boolean window mask. q (B, H, T, D); k, v (B, Hkv, T, D*)."""
    gqa = q.shape[1] != k.shape[1]
    mask = window_mask(q.shape[2], window, q.device)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=gqa)


def window_attention(q, k, v, window: int, scale: float | None = None) -> torch.Tensor:
    """Causal attention of each position over the ``window`` latest positions (itself included).

    q (B, H, T, D); k, v (B, Hkv, T, D) / (B, Hkv, T, Dv), H a multiple of Hkv. Returns (B, H, T, Dv).
    FlexAttention on CUDA when training (see the module docstring), SDPA with a mask elsewhere.
    """
    dev = q.device.type
    # Training only: a prefill's length changes with every prompt, and each new length would compile a new
    # kernel (seconds), where SDPA with the mask needs none; a training run's length is its block length.
    use_flex = ((q.is_cuda and torch.is_grad_enabled()) or (FLEX_ON_CPU and not torch.is_grad_enabled())) and (
        dev not in _FAILED)  # fmt: skip
    if use_flex:
        try:
            out = _flex(q, k, v, window, scale)
        except torch.OutOfMemoryError:
            raise
        except Exception as e:  # a compile failure, before anything ran: fall back for good, say why
            first = str(e).splitlines()[0][:200] if str(e) else ""
            _FAILED[dev] = f"FlexAttention failed here ({type(e).__name__}: {first})"
            _note("sdpa", _FAILED[dev])
        else:
            _note("flex")
            return out
    elif dev in _FAILED:
        _note("sdpa", _FAILED[dev])
    elif q.is_cuda:
        _note("sdpa", "a prefill (no gradients) takes SDPA with the window mask: FlexAttention would compile anew "
                      "for every prompt length")  # fmt: skip
    else:
        _note("sdpa")
    return sdpa_window(q, k, v, window, scale)


def _note(backend: str, reason: str | None = None) -> None:
    """``last_backend("sliding_window_attention")``, the reason logged once; not while tracing (a compiled
    training step would break its graph at the host-side record)."""
    if not torch.compiler.is_compiling():
        record("sliding_window_attention", backend, reason)


def _flex(q, k, v, window: int, scale: float | None) -> torch.Tensor:
    global _COMPILED
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    T = q.shape[2]
    key = (T, window, str(q.device))
    block_mask = _BLOCK_MASKS.get(key)
    if block_mask is None:

        def in_window(b, h, q_idx, kv_idx):
            return (kv_idx <= q_idx) & (q_idx - kv_idx < window)

        block_mask = create_block_mask(in_window, None, None, T, T, device=q.device)
        _BLOCK_MASKS[key] = block_mask
        while len(_BLOCK_MASKS) > 16:
            _BLOCK_MASKS.popitem(last=False)
    else:
        _BLOCK_MASKS.move_to_end(key)
    gqa = q.shape[1] != k.shape[1]
    if not q.is_cuda:  # the CPU test path: eager, forward only
        return flex_attention(q, k, v, block_mask=block_mask, scale=scale, enable_gqa=gqa)
    if _COMPILED is None:
        _COMPILED = torch.compile(flex_attention, dynamic=False)
    return _COMPILED(q, k, v, block_mask=block_mask, scale=scale, enable_gqa=gqa)
