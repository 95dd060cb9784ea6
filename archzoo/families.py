"""The family registry: one entry per mixer and FFN family, the one place that says what a family is.

An entry holds the family's name (the ``type`` a YAML writes), its config model and its layer class
(both in ``layers/<family>.py``), the letter ``archzoo inspect`` prints in a layer pattern, and a
line for the pattern's legend. ``config.py`` validates ``mixer`` / ``ffn`` against these entries,
``model.py`` builds layers from them, ``cache.py`` sizes their states, the CLI prints their letters
and ``convert/`` keys its initialisers by the same names (a test fails if a family has none).

Adding a family is one layer file, one converter file and one ``register`` call; a saved config
names a family, never a class. An unknown name is an error that lists the valid ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .layers.attention import Attention, AttentionConfig
from .layers.base import LayerConfig
from .layers.linear_attention import LinearAttention, LinearAttentionConfig
from .layers.mamba import Mamba, MambaConfig
from .layers.mla import MLA, MLAConfig
from .layers.mlp import NoFFNConfig, SwiGLU, SwiGLUConfig
from .layers.moe import MoE, MoEConfig
from .layers.s4 import S4D, S4Config

Kind = Literal["mixer", "ffn"]


@dataclass(frozen=True)
class Family:
    name: str
    kind: Kind
    config: type[LayerConfig]
    layer: type | None  # None: the family adds no module (``ffn: {type: none}``)
    letter: str  # "" for an FFN that shows no letter
    legend: str  # e.g. "A attention, W sliding window"

    def letter_for(self, cfg: LayerConfig) -> str:
        return cfg.pattern_letter(self.letter)


MIXERS: dict[str, Family] = {}
FFNS: dict[str, Family] = {}


def register(family: Family) -> Family:
    """Add ``family`` to the registry of its kind. Its config's ``type`` field must default to its name."""
    registry = MIXERS if family.kind == "mixer" else FFNS
    if family.name in registry:
        raise ValueError(f"{family.kind} family {family.name!r} is already registered")
    default = family.config.model_fields["type"].default
    if default != family.name:
        raise ValueError(f"{family.config.__name__}.type defaults to {default!r}, not the family name {family.name!r}")
    registry[family.name] = family
    return family


def unregister(kind: Kind, name: str) -> None:
    (MIXERS if kind == "mixer" else FFNS).pop(name, None)


def family(kind: Kind, name: str) -> Family:
    """The registry entry of ``name``; an unknown name raises ``ValueError`` listing the valid ones."""
    registry = MIXERS if kind == "mixer" else FFNS
    if name not in registry:
        raise ValueError(f"unknown {kind} {name!r}; expected one of {', '.join(registry)}")
    return registry[name]


def mixer_family(name: str) -> Family:
    return family("mixer", name)


def ffn_family(name: str) -> Family:
    return family("ffn", name)


def pattern_legend() -> str:
    """The key to ``archzoo inspect``'s layer pattern, built from the registry."""
    parts = [f.legend for f in (*MIXERS.values(), *FFNS.values()) if f.legend]
    return ", ".join(parts) + "; lower case: reads a CLA leader's cache"


register(Family("attention", "mixer", AttentionConfig, Attention, "A", "A attention, W sliding window"))
register(Family("mla", "mixer", MLAConfig, MLA, "L", "L MLA"))
register(Family("linear_attention", "mixer", LinearAttentionConfig, LinearAttention, "N", "N linear attention"))
register(Family("s4", "mixer", S4Config, S4D, "S", "S S4D"))
register(Family("mamba", "mixer", MambaConfig, Mamba, "M", "M Mamba"))
register(Family("swiglu", "ffn", SwiGLUConfig, SwiGLU, "", ""))
register(Family("moe", "ffn", MoEConfig, MoE, "E", "E MoE FFN"))
register(Family("none", "ffn", NoFFNConfig, None, "", ""))
