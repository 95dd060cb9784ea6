"""Layer families and their registries.

Every mixer is an ``nn.Module`` with this interface (see ``attention.Attention`` for the model):

    __init__(cfg, d_model, layer_idx, kv_source)   kv_source: the layer whose state it reads (CLA)
    forward(x (B, T, d_model), state: LayerState | None, ctx: ForwardContext) -> (B, T, d_model)
    new_state(batch_size, max_seq_len, dtype, device) -> LayerState | None
    state_bytes(cfg, d_model, batch_size, seq_len, dtype) -> int      (staticmethod, analytic)
    bounded_state(cfg) -> bool  (staticmethod; True when the state stops growing with length)

``forward`` with ``state=None`` is the training path; with a state it reads and writes the
buffers for positions ``ctx.pos .. ctx.pos + T``. Registries are plain dicts of import paths,
so a saved config names a family, never a class, and an unknown name lists the valid ones.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any

from ..config import AttentionConfig, ModelConfig

MIXERS: dict[str, str] = {
    "attention": "archzoo.layers.attention:Attention",
    "mla": "archzoo.layers.mla:MLA",
    "linear_attention": "archzoo.layers.linear_attention:LinearAttention",
    "s4": "archzoo.layers.s4:S4D",
    "mamba": "archzoo.layers.mamba:Mamba",
}

FFNS: dict[str, str] = {
    "swiglu": "archzoo.layers.mlp:SwiGLU",  # FFN classes build with from_config(cfg, d_model)
    "moe": "archzoo.layers.moe:MoE",
}


def _load(registry: dict[str, str], kind: str, name: str) -> Any:
    if name not in registry:
        raise ValueError(f"unknown {kind} {name!r}; expected one of {', '.join(registry)}")
    module, attr = registry[name].split(":")
    return getattr(importlib.import_module(module), attr)


def mixer_class(name: str) -> type:
    return _load(MIXERS, "mixer", name)


def ffn_class(name: str) -> type:
    return _load(FFNS, "ffn", name)


@dataclass
class ForwardContext:
    """What the layers of one forward call share.

    pos: absolute position of the first new token (the cache's ``seq_len``, 0 without a cache).
    shared: state produced in this call by a layer for the layers that read it (CLA group
    members read their leader's keys and values from here).
    """

    pos: int = 0
    shared: dict[int, Any] = field(default_factory=dict)


def _kv_signature(m: AttentionConfig, d_model: int) -> tuple:
    return (m.n_kv_heads or m.n_heads, m.head_dim or d_model // m.n_heads, m.window, m.rope_theta)


def state_owners(cfg: ModelConfig) -> list[int]:
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
