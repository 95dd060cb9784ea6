"""Inference state: one ``LayerState`` of static buffers per layer, written by index.

Buffers are preallocated by ``ArchZooLM.new_cache`` (gpt-fast's ``KVCache`` shape): nothing
grows with ``torch.cat``, so the shapes of a decode step stay static. Each mixer class owns its
state: ``new_state`` allocates it and the static ``state_bytes`` gives its size analytically;
``cache_bytes`` sums the latter and equals ``new_cache(...).nbytes()`` (a test holds us to it).

Layers that keep no state (a CLA layer that reads its group leader's K/V, an FFN) hold ``None``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from .config import load_config
from .families import mixer_family
from .layers import state_owners
from .layers.base import LayerState, dtype_bytes


@dataclass
class Cache:
    """Per-layer inference state of an ``ArchZooLM``.

    ``seq_len`` counts the tokens seen so far. ``max_seq_len`` bounds layers whose state grows
    (global attention, MLA); a cache with only bounded layers (sliding window, recurrent) accepts
    any length, and ``capacity`` is then ``None``.
    """

    layers: list[LayerState | None]
    batch_size: int
    max_seq_len: int
    capacity: int | None
    seq_len: int = 0
    extra: dict[str, object] = field(default_factory=dict)

    def nbytes(self) -> int:
        """Bytes of every tensor the cache holds."""
        return sum(s.nbytes() for s in self.layers if s is not None)

    def reset(self) -> Cache:
        for s in self.layers:
            if s is not None:
                s.zero_()
        self.seq_len = 0
        return self

    def __iter__(self) -> Iterator[LayerState | None]:
        return iter(self.layers)

    def __len__(self) -> int:
        return len(self.layers)


def cache_bytes(cfg, batch_size: int, seq_len: int, dtype: torch.dtype = torch.bfloat16) -> int:
    """Analytic cache size of ``cfg`` for ``batch_size`` sequences of ``seq_len`` tokens.

    Equals ``build_model(cfg).new_cache(batch_size, seq_len, dtype).nbytes()``.
    """
    return sum(cache_bytes_per_layer(cfg, batch_size, seq_len, dtype))


def cache_bytes_per_layer(cfg, batch_size: int, seq_len: int, dtype: torch.dtype = torch.bfloat16) -> list[int]:
    """``cache_bytes`` layer by layer; 0 for a layer that reads another layer's state (CLA)."""
    cfg = load_config(cfg)
    owners = state_owners(cfg)
    sizes = []
    for i, block in enumerate(cfg.blocks):
        layer = mixer_family(block.mixer.type).layer
        sizes.append(layer.state_bytes(block.mixer, cfg.d_model, batch_size, seq_len, dtype) if owners[i] == i else 0)
    return sizes


__all__ = ["Cache", "LayerState", "cache_bytes", "cache_bytes_per_layer", "dtype_bytes"]
