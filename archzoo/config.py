"""The model YAML schema (DESIGN.md, "Model YAML"), validated at the edge with pydantic.

Every component has one typed config; unknown keys are errors (``extra="forbid"``). ``mixer`` and
``ffn`` are validated by the config model of the family their ``type`` names in the registry
(``archzoo.families``); the family configs live beside their layers in ``layers/<family>.py``.
``load_config`` turns any validation failure into a :class:`ConfigError` that names the file and the dotted field path.

Per-layer ``layers`` overrides are resolved here, once, into ``ModelConfig.blocks``: a list of
``BlockConfig(mixer, ffn)``, one per layer. An override whose ``type`` equals the layer's
current type (or that omits ``type``) is merged key by key onto it; one with another ``type``
replaces it, so ``{type: mamba, d_state: 16}`` on an attention model needs no attention keys.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import Field, PlainValidator, PrivateAttr, SerializeAsAny, ValidationError, model_validator

from . import families
from .errors import ConfigError
from .layers.attention import AttentionConfig
from .layers.base import FieldError, LayerConfig, Strict, field_error
from .layers.linear_attention import LinearAttentionConfig
from .layers.mamba import MambaConfig, mamba_dims
from .layers.mla import MLAConfig
from .layers.mlp import NoFFNConfig, SwiGLUConfig
from .layers.moe import MoEConfig
from .layers.s4 import S4Config


def _family_field(kind: str) -> Any:
    """A ``mixer`` / ``ffn`` field validated against the family registry at validation time.

    The entry named by ``type`` supplies the config model, so a family registered after import
    (a plug-in, a test's toy family) validates like a built-in one. Errors keep the path the user
    wrote: ``mixer.n_kv_heads``, ``mixer.type: unknown mixer 'mamab'; expected one of ...``.
    """

    def validate(value: Any) -> LayerConfig:
        if isinstance(value, LayerConfig):
            families.family(kind, value.type)  # an instance of an unregistered family is an error too
            return value
        if not isinstance(value, dict):
            raise ValueError(f"expected a mapping with a 'type' key, got {type(value).__name__}")
        if "type" not in value:
            raise field_error("type", f"missing 'type'; expected one of {', '.join(_registry(kind))}")
        try:
            fam = families.family(kind, value["type"])
        except ValueError as e:
            raise field_error("type", str(e)) from None
        try:
            return fam.config.model_validate(value)
        except ValidationError as e:
            path, msg = first_error(e)
            raise field_error(path, msg) from None

    return Annotated[SerializeAsAny[LayerConfig], PlainValidator(validate)]


def _registry(kind: str) -> dict[str, families.Family]:
    return families.MIXERS if kind == "mixer" else families.FFNS


MixerConfig = _family_field("mixer")
FFNConfig = _family_field("ffn")

# ------------------------------------------------------------------------------ model


class LayerOverride(Strict):
    at: list[int] | int | str = Field(description="layer indices, or a Python slice string such as '1::2'")
    mixer: dict[str, Any] | None = None
    ffn: dict[str, Any] | None = None


class BlockConfig(Strict):
    mixer: MixerConfig
    ffn: FFNConfig


class ModelConfig(Strict):
    vocab_size: int = Field(gt=0)
    d_model: int = Field(gt=0)
    n_layers: int = Field(gt=0)
    tie_embeddings: bool = True
    norm_eps: float = Field(default=1e-5, gt=0)
    mixer: MixerConfig
    ffn: FFNConfig
    layers: list[LayerOverride] = Field(default_factory=list)
    init_std: float = Field(default=0.02, gt=0)

    _blocks: list[BlockConfig] = PrivateAttr(default_factory=list)

    @model_validator(mode="after")
    def _resolve(self) -> ModelConfig:
        self._blocks = _resolve_blocks(self)
        return self

    @property
    def blocks(self) -> list[BlockConfig]:
        """One resolved ``BlockConfig`` per layer, overrides applied."""
        return self._blocks

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_defaults=False)


def parse_layer_indices(at: list[int] | int | str, n_layers: int) -> list[int]:
    """``[3, 7]``, ``5``, ``"1::2"`` or ``"-1"`` -> sorted indices in ``range(n_layers)``."""
    if isinstance(at, int):
        at = [at]
    if isinstance(at, str):
        text = at.strip()
        if ":" not in text:
            try:
                at = [int(text)]
            except ValueError:
                raise ValueError(f"'{at}' is neither an index nor a slice such as '1::2'") from None
        else:
            parts = text.split(":")
            if len(parts) > 3:
                raise ValueError(f"'{at}' is not a slice such as '1::2'")
            try:
                nums = [int(p) if p.strip() else None for p in parts]
            except ValueError:
                raise ValueError(f"'{at}' is not a slice such as '1::2'") from None
            if len(nums) == 3 and nums[2] == 0:
                raise ValueError(f"slice '{at}' has step 0")
            return list(range(n_layers))[slice(*nums)]
    out = []
    for i in at:
        if not -n_layers <= i < n_layers:
            raise ValueError(f"layer index {i} is out of range for n_layers={n_layers}")
        out.append(i % n_layers)
    return sorted(set(out))


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    if "type" in override and override["type"] != base.get("type"):
        return copy.deepcopy(override)
    return {**base, **override}


def _resolve_blocks(cfg: ModelConfig) -> list[BlockConfig]:
    mixers = [cfg.mixer.model_dump()] * cfg.n_layers
    ffns = [cfg.ffn.model_dump()] * cfg.n_layers
    # Where each layer's mixer / ffn was last written, so an error names the key the user wrote.
    mixer_src = ["mixer"] * cfg.n_layers
    ffn_src = ["ffn"] * cfg.n_layers
    for k, ov in enumerate(cfg.layers):
        try:
            idx = parse_layer_indices(ov.at, cfg.n_layers)
        except ValueError as e:
            raise FieldError(f"layers.{k}.at", str(e)) from None
        if not idx:
            raise FieldError(f"layers.{k}.at", f"{ov.at!r} selects no layer of n_layers={cfg.n_layers}")
        for i in idx:
            if ov.mixer is not None:
                mixers[i] = _merge(mixers[i], ov.mixer)
                mixer_src[i] = f"layers.{k}.mixer"
            if ov.ffn is not None:
                ffns[i] = _merge(ffns[i], ov.ffn)
                ffn_src[i] = f"layers.{k}.ffn"
    blocks = []
    for i, (m, f) in enumerate(zip(mixers, ffns, strict=True)):
        try:
            blocks.append(BlockConfig(mixer=m, ffn=f))
        except ValidationError as e:
            path, msg = first_error(e)
            head, _, rest = path.partition(".")
            src = mixer_src[i] if head == "mixer" else ffn_src[i]
            where = f" (layer {i})" if cfg.layers else ""
            raise FieldError(".".join(p for p in (src, rest) if p), msg + where) from None
        _check_block(cfg, blocks[-1], i, mixer_src[i], ffn_src[i])
    return blocks


def _check_block(cfg: ModelConfig, block: BlockConfig, i: int, mixer_src: str, ffn_src: str) -> None:
    """Shape checks that need d_model, done per resolved layer by each family's ``check_dims``."""
    where = f" (layer {i})" if cfg.layers else ""
    for part, src in ((block.mixer, mixer_src), (block.ffn, ffn_src)):
        try:
            part.check_dims(cfg.d_model)
        except FieldError as e:
            raise FieldError(f"{src}.{e.path}", e.message + where) from None


# ------------------------------------------------------------------------- loading


def _loc_to_path(loc: tuple[Any, ...]) -> str:
    parts = []
    for p in loc:
        if isinstance(p, int):
            parts.append(str(p))
        elif p in ("function-after", "function-before", "function-plain"):
            continue  # pydantic names the validator in the location; the user never wrote it
        else:
            parts.append(str(p))
    return ".".join(parts)


def _describe(err: dict[str, Any]) -> str:
    msg = err["msg"]
    kind = err["type"]
    if kind == "extra_forbidden":
        return "unknown key (misspelt?)"
    if kind == "union_tag_invalid":
        ctx = err.get("ctx", {})
        return f"unknown type {ctx.get('tag')!r}; expected one of {ctx.get('expected_tags')}"
    if kind == "union_tag_not_found":
        return "missing 'type'"
    if kind == "missing":
        return "required key is missing"
    msg = msg.removeprefix("Value error, ")
    if "input" in err and kind not in ("value_error",):
        msg = f"{msg} (got {err['input']!r})"
    return msg


def first_error(e: ValidationError) -> tuple[str, str]:
    """The first error of a pydantic validation as (dotted field path the user wrote, message)."""
    err = e.errors()[0]
    path = _loc_to_path(err["loc"])
    inner = (err.get("ctx") or {}).get("error")
    if isinstance(inner, FieldError):
        path = inner.path if inner.absolute else ".".join(p for p in (path, inner.path) if p)
        return path, inner.message
    return path, _describe(err)


def load_config(src: str | Path | dict[str, Any] | ModelConfig) -> ModelConfig:
    """Load a model config from a YAML path, a dict or a ``ModelConfig``.

    Raises :class:`ConfigError` naming the file and the dotted field path, e.g.
    ``configs/models/gqa.yaml: mixer.n_kv_heads: n_kv_heads=3 must divide n_heads=4``.
    """
    if isinstance(src, ModelConfig):
        return src
    data, source = read_mapping(src, "a YAML path, a dict or a ModelConfig")
    return _validate(data, source)


def read_mapping(src: str | Path | dict[str, Any], expected: str) -> tuple[dict[str, Any], str | None]:
    """The top-level mapping of a YAML file (path) or a dict, and the file name for error messages.

    Shared by every config loader (model configs here, run configs in the trainer), so a missing
    file, bad YAML or a non-mapping reads the same everywhere: ``ConfigError`` naming the file.
    """
    source = None
    if isinstance(src, str | Path):
        source = str(src)
        path = Path(src)
        if not path.is_file():
            raise ConfigError("no such file", source=source)
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            raise ConfigError(f"not valid YAML: {e}".replace("\n", " "), source=source) from None
    elif isinstance(src, dict):
        data = src
    else:
        raise ConfigError(f"expected {expected}, got {type(src).__name__}")
    if not isinstance(data, dict):
        raise ConfigError(f"expected a mapping at the top level, got {type(data).__name__}", source=source)
    return data, source


def _validate(data: dict[str, Any], source: str | None) -> ModelConfig:
    try:
        return ModelConfig.model_validate(data)
    except ValidationError as e:
        path, msg = first_error(e)
        raise ConfigError(msg, path, source) from None


def default_head_dim(d_model: int, n_heads: int) -> int:
    return d_model // n_heads


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


__all__ = [  # the family configs are re-exported: `from archzoo.config import MambaConfig` keeps working
    "AttentionConfig",
    "BlockConfig",
    "ConfigError",
    "FFNConfig",
    "FieldError",
    "LayerOverride",
    "LinearAttentionConfig",
    "MLAConfig",
    "MambaConfig",
    "MixerConfig",
    "ModelConfig",
    "MoEConfig",
    "NoFFNConfig",
    "S4Config",
    "Strict",
    "SwiGLUConfig",
    "field_error",
    "first_error",
    "load_config",
    "mamba_dims",
    "parse_layer_indices",
    "read_mapping",
]
