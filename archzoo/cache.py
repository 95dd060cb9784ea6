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

from .config import ModelConfig, load_config


class LayerState:
    """The named buffers of one layer, e.g. ``k``/``v`` for attention or ``conv``/``ssm`` for Mamba."""

    def __init__(self, **buffers: torch.Tensor):
        self.buffers: dict[str, torch.Tensor] = buffers

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.buffers[name]

    def __setitem__(self, name: str, value: torch.Tensor) -> None:
        self.buffers[name] = value

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.buffers.values())

    def zero_(self) -> LayerState:
        for t in self.buffers.values():
            t.zero_()
        return self

    def __repr__(self) -> str:
        inner = ", ".join(
            f"{k}={tuple(v.shape)}:{str(v.dtype).removeprefix('torch.')}" for k, v in self.buffers.items()
        )
        return f"LayerState({inner})"


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


def dtype_bytes(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def cache_bytes(cfg, batch_size: int, seq_len: int, dtype: torch.dtype = torch.bfloat16) -> int:
    """Analytic cache size of ``cfg`` for ``batch_size`` sequences of ``seq_len`` tokens.

    Equals ``build_model(cfg).new_cache(batch_size, seq_len, dtype).nbytes()``.
    """
    from .layers import mixer_class, state_owners

    cfg = load_config(cfg)
    owners = state_owners(cfg)
    total = 0
    for i, block in enumerate(cfg.blocks):
        if owners[i] != i:
            continue  # reads another layer's state (CLA)
        total += mixer_class(block.mixer.type).state_bytes(block.mixer, cfg.d_model, batch_size, seq_len, dtype)
    return total


def cache_bytes_per_layer(cfg: ModelConfig, batch_size: int, seq_len: int, dtype: torch.dtype) -> list[int]:
    from .layers import mixer_class, state_owners

    owners = state_owners(cfg)
    return [
        mixer_class(b.mixer.type).state_bytes(b.mixer, cfg.d_model, batch_size, seq_len, dtype) if owners[i] == i else 0
        for i, b in enumerate(cfg.blocks)
    ]
