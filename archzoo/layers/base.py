"""What every layer family shares: the config base class, the per-layer cache state and the
forward context. Nothing here knows any family; ``archzoo.families`` registers them.

A family's config model lives beside its layer (``layers/<family>.py``) and derives from
``LayerConfig``: pydantic with ``extra="forbid"``, so a misspelt key is an error, and frozen, so a
resolved config can be shared. ``check_dims`` runs the checks that need the model width.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict


class FieldError(ValueError):
    """A config error whose user-facing field path is known.

    ``absolute=False``: ``path`` is relative to the model being validated (a key of that layer's
    config); the loader prefixes where that config sits in the YAML (``mixer``, ``layers.2.mixer``).
    """

    def __init__(self, path: str, message: str, absolute: bool = True):
        self.path, self.message, self.absolute = path, message, absolute
        super().__init__(message)


def field_error(name: str, message: str) -> FieldError:
    """An error about one key of the config being validated."""
    return FieldError(name, message, absolute=False)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LayerConfig(Strict):
    """Base of every mixer / FFN config. Subclasses declare ``type: Literal["<family name>"]``."""

    type: str

    def check_dims(self, d_model: int) -> None:
        """Raise ``field_error(key, message)`` when this config cannot work at width ``d_model``."""

    def pattern_letter(self, letter: str) -> str:
        """The letter ``archzoo inspect`` shows for this layer; a family's variant may differ (``W``)."""
        return letter


def dtype_bytes(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


class LayerState:
    """The named buffers of one layer, e.g. ``k``/``v`` for attention or ``conv``/``ssm`` for Mamba.

    ``by_length`` names the buffers indexed by position whose entries beyond a row's length are never
    read (global attention K/V, MLA latents): forgetting tokens there means lowering ``Cache.lengths``.
    Every other buffer (a ring buffer that overwrites slots, a recurrent state) cannot be rewound by
    index; speculative decoding keeps a ``snapshot`` of those and ``restore``s it. The default, no
    name, is the safe one for a new family: everything is snapshotted.

    ``ring`` names, among the others, the ring buffers (B, H, slots, D) that hold position p in slot p % slots and
    are written one slot per position: a rollback of the positions after some p needs only the slots they
    overwrote, so speculative decoding keeps those few slots, not the whole buffer (``speculative._RingSlots``).
    """

    def __init__(
        self, by_length: tuple[str, ...] | frozenset[str] = (), ring: tuple[str, ...] | frozenset[str] = (),
        **buffers: torch.Tensor,
    ):  # fmt: skip
        self.buffers: dict[str, torch.Tensor] = buffers
        self.by_length: frozenset[str] = frozenset(by_length)
        self.ring: frozenset[str] = frozenset(ring)

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.buffers[name]

    def __setitem__(self, name: str, value: torch.Tensor) -> None:
        self.buffers[name] = value

    def __contains__(self, name: str) -> bool:
        return name in self.buffers

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.buffers.values())

    def zero_(self) -> LayerState:
        for t in self.buffers.values():
            t.zero_()
        return self

    @property
    def needs_snapshot(self) -> bool:
        """True when some buffer cannot be rewound by lowering the row lengths."""
        return any(name not in self.by_length for name in self.buffers)

    def snapshot(self) -> dict[str, torch.Tensor]:
        """Copies of the buffers that cannot be rewound by length (empty when all can)."""
        return {k: v.clone() for k, v in self.buffers.items() if k not in self.by_length}

    def restore(self, snapshot: dict[str, torch.Tensor]) -> None:
        """Write a ``snapshot`` back in place (the buffers keep their addresses)."""
        for k, v in snapshot.items():
            self.buffers[k].copy_(v)

    def __repr__(self) -> str:
        inner = ", ".join(
            f"{k}={tuple(v.shape)}:{str(v.dtype).removeprefix('torch.')}" for k, v in self.buffers.items()
        )
        return f"LayerState({inner})"


class TakesNormAndResidual:
    """A mixer whose decode step takes the block's norm and residual (``Block.forward``): on the fused path
    (``ctx.fused``) the block hands it the un-normed input and its RMSNorm, and, where the decode GEMV runs
    (``fused.gemv_for``), the residual too; the mixer returns ``residual + out``. Projecting through
    ``fused.decode_project`` fuses the norm into the first GEMV and the residual add into the last one's epilogue:
    at batch 1 a step is bound by its launches, and these are two a layer. Its ``forward`` takes
    ``(x, state, ctx, norm=None, residual=None)``; elsewhere it applies ``norm`` first and adds ``residual`` last
    (``with_residual``)."""

    TAKES_NORM = True
    TAKES_RESIDUAL = True


def with_residual(out: torch.Tensor, residual: torch.Tensor | None) -> torch.Tensor:
    """``residual + out``, or ``out`` without a residual (a mixer the block did not hand one)."""
    return out if residual is None else residual + out


# What a decode step derives from its positions or its weights alone is made once, not in every layer: the new
# tokens' positions once a forward call (``ForwardContext.positions``), a Mamba layer's A once a refresh of the
# fused copies (``layers/mamba.py:DecodeA``). Each was an Inductor kernel a layer between the PDL-launched decode
# kernels (docs/decode.md). False: the form before, for the A/B (``tools/decode_profile.py --once on,off``).
ONCE_A_STEP = True


@dataclass
class ForwardContext:
    """What the layers of one forward call share.

    pos: absolute position of the first new token when the host knows it and every row shares it
        (0 without a cache; a prefill); ``None`` in a decode step, which must not depend on host
        values: the layers then read the positions from ``lengths``.
    lengths: (B,) device tensor, tokens each row of the cache held before this call (None without
        a cache). Row ``b``'s new tokens sit at positions ``lengths[b] + t``.
    shared: state produced in this call by a layer for the layers that read it (CLA group
        members read their leader's keys and values from here).
    memo: tensors derived from the positions alone, shared by the layers (``memoised``).
    """

    pos: int | None = 0
    lengths: torch.Tensor | None = None
    shared: dict[Any, Any] = field(default_factory=dict)
    memo: dict[tuple, torch.Tensor] = field(default_factory=dict)
    fused: bool = False  # a decode step that reads the layers' fused projections (layers/fused.py)

    def memoised(self, key: tuple, build) -> torch.Tensor:
        """``build()`` once per forward call for ``key``: what every layer alike needs (a decode step's
        attention mask), computed by the first layer and read by the others."""
        if key not in self.memo:
            self.memo[key] = build()
        return self.memo[key]

    @property
    def decoding(self) -> bool:
        """True in a capturable step: positions live on the device (``lengths``), not on the host."""
        return self.pos is None

    def positions(self, T: int, device: torch.device) -> torch.Tensor:
        """Positions of the new tokens: (B, T) from ``lengths`` in a decode step, else (T,) from ``pos``.

        In a decode step once per forward call (``memoised``), not once per attention layer: computed in each layer
        it was a kernel of its own in every compiled block (``lengths[:, None] + arange``, 30 a step for the
        teacher), which, launched without PDL between the down GEMV of one layer and the Q|K|V GEMV of the next,
        also kept the second from loading its weights while the first finished (docs/decode.md)."""
        if self.pos is None and not ONCE_A_STEP:  # the form before (A/B: tools/decode_profile.py --once off)
            return self.lengths[:, None] + torch.arange(T, device=device)
        if self.pos is None:
            lengths = self.lengths
            return self.memoised(("positions", T, device), lambda: lengths[:, None] + torch.arange(T, device=device))
        return torch.arange(T, device=device) + self.pos
