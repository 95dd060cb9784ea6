"""Decode attention: one query token per row over a static K/V cache, each row up to its own length.

``decode_attention(q, k_cache, v_cache, lengths, scale=None)`` for a global cache, and the sibling
``decode_attention_ring(q, k_ring, v_ring, lengths, window, scale=None)`` for a sliding window's ring
buffer (a separate function; the same Triton kernel). Dispatch: the Triton kernels (``triton.py``,
flash-decoding) for CUDA tensors, and for CPU tensors under ``TRITON_INTERPRET=1``; the naive fp32
reference (``naive.py``) otherwise. ``archzoo.kernels.last_backend(name)`` says which one ran.
"""

from __future__ import annotations

import torch

from .._dispatch import kernel_failed, record, try_kernel, use_triton
from ._checks import check_decode, check_one_query, check_window
from .naive import naive_decode_attention, naive_decode_attention_ring


def decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    lengths: torch.Tensor,
    scale: float | None = None,
) -> torch.Tensor:
    """Softmax attention of one query token per row over the first ``lengths[b]`` positions of its cache.

    q (B, H, D); k_cache (B, H_kv, T_max, D); v_cache (B, H_kv, T_max, Dv); lengths (B,) integer tensor on
    the same device. H must be a multiple of H_kv: query head h reads KV head h // (H / H_kv) (GQA; K/V are
    never repeated). scale defaults to D ** -0.5. Returns (B, H, Dv) in q's dtype, computed in fp32.

    Positions at or past ``lengths[b]`` are never read (they may hold anything, NaN included). Lengths are
    read on the device, never on the host (the call is CUDA-graph capturable), so they are not checked:
    values above T_max act as T_max, negative ones as 0, and a row of length 0 returns zeros.
    q, k_cache and v_cache share one dtype: float16, bfloat16 or float32; head dims 1..512 (above 256 in
    tiles of 32 positions).

    Several query tokens a row (a speculative verify, a short chunk): q (B, H, Q, D) with Q <= 16, the row's Q
    newest tokens, the last at position lengths[b] - 1, each attending causally: query i sees positions
    [0, lengths[b] - (Q - 1 - i)). Returns (B, H, Q, Dv). The kernel reads each K/V tile once for all Q.
    """
    check_decode(q, k_cache, v_cache, lengths)
    if use_triton(q, k_cache, v_cache, lengths):
        from .triton import _run

        record("decode_attention", "triton")
        return _run(q, k_cache, v_cache, lengths, scale, 0, False)
    record("decode_attention", "naive")
    return naive_decode_attention(q, k_cache, v_cache, lengths, scale)


def decode_attention_ring(
    q: torch.Tensor,
    k_ring: torch.Tensor,
    v_ring: torch.Tensor,
    lengths: torch.Tensor,
    window: int,
    scale: float | None = None,
) -> torch.Tensor:
    """``decode_attention`` over a sliding window's ring buffer (the layout of ``layers/attention.py``).

    k_ring (B, H_kv, slots, D), v_ring (B, H_kv, slots, Dv); lengths (B,) counts the tokens each row has seen,
    the current one included, so its newest position is last = lengths[b] - 1. Slot s holds the latest
    position p <= last with p % slots == s, and is attended to when p >= 0 and p > last - window.
    window is a Python int >= 1 (a layer's constant). Otherwise as ``decode_attention``.
    """
    check_decode(q, k_ring, v_ring, lengths, "k_ring", "v_ring")
    check_one_query(q, "decode_attention_ring")
    check_window(window)
    if use_triton(q, k_ring, v_ring, lengths):
        from .triton import _run

        record("decode_attention_ring", "triton")
        return _run(q, k_ring, v_ring, lengths, scale, window, True)
    record("decode_attention_ring", "naive")
    return naive_decode_attention_ring(q, k_ring, v_ring, lengths, window, scale)


def decode_attention_mla(
    q: torch.Tensor,
    latent: torch.Tensor,
    lengths: torch.Tensor,
    rank: int,
    scale: float | None = None,
) -> torch.Tensor:
    """MLA's absorbed decode attention: every query head over one shared latent head, read once per position.

    q (B, H, R + DR): absorbed queries ``[q_lat | q_rope]``; latent (B, T_max, R + DR): the cache rows
    ``[c_kv | k_rope]``; rank R. The key of position t is its row, the value its first R columns. Returns
    (B, H, R), in q's dtype, over each row's first ``lengths[b]`` positions (as ``decode_attention``: never
    read beyond, a length of 0 gives zeros). Equal to ``decode_attention(q, latent[:, None], latent[:, None,
    :, :R], lengths, scale)``, without reading each row twice or padding R + DR as one dim (``mla.py``).
    """
    if latent.dim() != 3:
        raise ValueError(f"latent must be a (B, T_max, R + DR) tensor, got shape {tuple(latent.shape)}")
    if not isinstance(rank, int) or not 1 <= rank <= min(latent.shape[2], 512):
        raise ValueError(f"rank must be an int in 1..min(latent width {latent.shape[2]}, 512), got {rank!r}")
    k, v = latent[:, None], latent[:, None, :, :rank]
    check_decode(q, k, v, lengths, "latent", "latent[..., :rank]")
    check_one_query(q, "decode_attention_mla")
    if use_triton(q, latent, lengths):
        from .mla import decode_attention_mla as triton_mla
        from .triton import _run

        dev = q.device.type
        if not kernel_failed("decode_attention_mla", dev):
            out = try_kernel("decode_attention_mla", dev, lambda: triton_mla(q, latent, lengths, rank, scale))
            if out is not None:
                record("decode_attention_mla", "triton")
                return out
        # The MLA kernel is tested in the interpreter; where it does not compile, decode_attention over the
        # latent as one MQA head (the same result, each row read twice) runs, the reason logged once.
        record("decode_attention_mla", "triton-mqa", kernel_failed("decode_attention_mla", dev))
        return _run(q, k, v, lengths, scale, 0, False)
    record("decode_attention_mla", "naive")
    return naive_decode_attention(q, k, v, lengths, scale)


__all__ = [
    "decode_attention",
    "decode_attention_mla",
    "decode_attention_ring",
    "naive_decode_attention",
    "naive_decode_attention_ring",
]
