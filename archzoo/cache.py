"""Inference state: one ``LayerState`` of static buffers per layer, written by index.

Buffers are preallocated by ``ArchZooLM.new_cache`` (gpt-fast's ``KVCache`` shape): nothing
grows with ``torch.cat``, so the shapes of a decode step stay static. Each mixer class owns its
state: ``new_state`` allocates it and the static ``state_bytes`` gives its size analytically;
``cache_bytes`` sums the latter and equals ``new_cache(...).nbytes()`` (a test holds us to it).

Layers that keep no state (a CLA layer that reads its group leader's K/V, an FFN) hold ``None``.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from .config import load_config
from .families import mixer_family
from .layers import state_owners
from .layers.base import LayerState, dtype_bytes


class Cache:
    """Per-layer inference state of an ``ArchZooLM``, and how many tokens each row holds.

    ``lengths`` (B,) is a device tensor: row ``b`` holds its sequence's first ``lengths[b]`` tokens,
    from position 0 (no left padding), so a batch may hold prompts of different lengths. The model
    reads and advances it on the device, never on the host, which keeps a decode step capturable
    (DESIGN.md, decode contract). ``seq_len`` is a convenience for users (the longest row; reading it
    synchronises with the device) and is never read inside a step.

    ``max_seq_len`` bounds layers whose state grows (global attention, MLA); a cache with only
    bounded layers (sliding window, recurrent) accepts any length, and ``capacity`` is then ``None``.
    ``nbytes`` counts the layers' state, which ``cache_bytes`` predicts; the (B,) int64 lengths are
    bookkeeping and not counted.
    """

    def __init__(
        self,
        layers: list[LayerState | None],
        batch_size: int,
        max_seq_len: int,
        capacity: int | None,
        device: torch.device | str | None = None,
    ):
        self.layers = layers
        self.batch_size = batch_size
        self.max_seq_len = max_seq_len
        self.capacity = capacity
        self.lengths = torch.zeros(batch_size, dtype=torch.long, device=device)
        # Host-side upper bound of ``lengths``, kept by eager forwards (no synchronisation) so they can
        # refuse to overrun ``capacity`` with a clear error. A compiled or captured step does not update
        # it: ``generate`` checks its whole budget before it starts.
        self.host_max_len = 0
        # Decode steps through this cache read the layers' fused projection copies (layers/fused.py);
        # whoever sets it keeps them fresh with ArchZooLM.refresh_fused() (generate does).
        self.fused_weights = False
        # Decode steps through this cache run the model's compiled step blocks when it has them
        # (ArchZooLM.compile_step_blocks). generate clears it for a call that does not compile, so that call
        # runs the plain blocks even after an earlier one compiled them.
        self.compiled_blocks = True

    @property
    def seq_len(self) -> int:
        """Tokens in the longest row (a host synchronisation)."""
        return int(self.lengths.max()) if self.batch_size else 0

    @seq_len.setter
    def seq_len(self, value: int) -> None:
        self.lengths.fill_(value)
        self.host_max_len = value

    def nbytes(self) -> int:
        """Bytes of every layer's state (K/V buffers, latents, recurrent states)."""
        return sum(s.nbytes() for s in self.layers if s is not None)

    def reset(self) -> Cache:
        """Empty every row: zero the buffers (recurrent states start from zero) and the lengths."""
        for s in self.layers:
            if s is not None:
                s.zero_()
        self.lengths.zero_()
        self.host_max_len = 0
        return self

    def rows(self, index: int | slice) -> Cache:
        """A view of some rows: its buffers and lengths are views into this cache's, so writing through
        it fills these rows (``generate`` prefills prompts of different lengths row by row this way)."""
        sl = slice(index, index + 1) if isinstance(index, int) else index
        layers = [
            None if s is None else LayerState(s.by_length, s.ring, **{k: v[sl] for k, v in s.buffers.items()})
            for s in self.layers
        ]
        view = Cache.__new__(Cache)
        view.layers, view.max_seq_len, view.capacity = layers, self.max_seq_len, self.capacity
        view.lengths = self.lengths[sl]
        view.batch_size = view.lengths.shape[0]
        view.host_max_len = self.host_max_len
        view.fused_weights = self.fused_weights
        view.compiled_blocks = self.compiled_blocks
        return view

    def empty_rows(self, n: int) -> Cache:
        """An empty cache of ``n`` rows laid out as this one: the same layers (a state shared by several layers
        stays shared), buffer shapes past the batch dimension and dtypes, zero lengths."""
        made: dict[int, LayerState] = {}
        layers = []
        for s in self.layers:
            if s is not None and id(s) not in made:
                zeros = {k: v.new_zeros((n, *v.shape[1:])) for k, v in s.buffers.items()}
                made[id(s)] = LayerState(s.by_length, s.ring, **zeros)
            layers.append(None if s is None else made[id(s)])
        out = Cache(layers, n, self.max_seq_len, self.capacity, self.device)
        out.fused_weights, out.compiled_blocks = self.fused_weights, self.compiled_blocks
        return out

    def put_rows(self, index: torch.Tensor, other: Cache) -> None:
        """Copy every row of ``other`` (``empty_rows(len(index))`` after a forward) into rows ``index`` of this
        cache, buffers and lengths, in place (the buffers keep their addresses)."""
        if len(other.layers) != len(self.layers) or other.batch_size != index.numel():
            raise ValueError(
                f"put_rows: {other.batch_size} rows of {len(other.layers)} layers into {index.numel()} rows of "
                f"{len(self.layers)} layers"
            )
        done: set[int] = set()
        for s, o in zip(self.layers, other.layers, strict=True):
            if s is None or id(s) in done:
                continue
            done.add(id(s))
            for k, v in s.buffers.items():
                v.index_copy_(0, index, o.buffers[k])
        self.lengths.index_copy_(0, index, other.lengths)

    @property
    def needs_snapshot(self) -> bool:
        """True when some layer holds a buffer that lowering ``lengths`` cannot rewind (see ``LayerState``)."""
        return any(s is not None and s.needs_snapshot for s in self.layers)

    def snapshot(self) -> list[dict[str, torch.Tensor] | None]:
        """Copies of every buffer that cannot be rewound by length; ``restore`` writes them back.
        ``lengths`` is not part of it: the caller sets the lengths it rewinds to."""
        return [None if s is None else s.snapshot() for s in self.layers]

    def restore(self, snapshot: list[dict[str, torch.Tensor] | None]) -> None:
        for s, snap in zip(self.layers, snapshot, strict=True):
            if s is not None:
                s.restore(snap)

    @property
    def device(self) -> torch.device:
        return self.lengths.device

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


def cache_read_bytes(cfg, batch_size: int, seq_len: int, dtype: torch.dtype = torch.bfloat16) -> int:
    """Cache bytes a decode step's layers read at ``seq_len`` tokens: each layer reads its state owner's buffers,
    so a CLA member reads its leader's K/V again (from HBM, unless it is still in L2). Equals ``cache_bytes``
    for every model without shared state."""
    cfg = load_config(cfg)
    sizes = cache_bytes_per_layer(cfg, batch_size, seq_len, dtype)
    return sum(sizes[owner] for owner in state_owners(cfg))


__all__ = ["Cache", "LayerState", "cache_bytes", "cache_bytes_per_layer", "cache_read_bytes", "dtype_bytes"]
