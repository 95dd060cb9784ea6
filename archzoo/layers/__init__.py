"""Layer families: one module per family, holding its config model, its layer and its cache state.

Every mixer is an ``nn.Module`` with this interface (see ``attention.Attention`` for the model):

    __init__(cfg, d_model, layer_idx, kv_source)   kv_source: the layer whose state it reads (CLA)
    forward(x (B, T, d_model), state: LayerState | None, ctx: ForwardContext) -> (B, T, d_model)
    new_state(batch_size, max_seq_len, dtype, device) -> LayerState | None
    state_bytes(cfg, d_model, batch_size, seq_len, dtype) -> int      (staticmethod, analytic)
    bounded_state(cfg) -> bool  (staticmethod; True when the state stops growing with length)

An FFN is an ``nn.Module`` built by ``from_config(cfg, d_model)`` with ``forward(x) -> x``.
``forward`` with ``state=None`` is the training path; with a state it reads and writes the
buffers for positions ``ctx.pos .. ctx.pos + T``. Which class serves which family name is
``archzoo.families``' business: this package knows no registry.
"""

from __future__ import annotations

from .attention import state_owners
from .base import FieldError, ForwardContext, LayerConfig, LayerState, dtype_bytes, field_error

__all__ = ["FieldError", "ForwardContext", "LayerConfig", "LayerState", "dtype_bytes", "field_error", "state_owners"]
