"""The model YAML schema (DESIGN.md, "Model YAML"), validated at the edge with pydantic.

Every component has one typed config; unknown keys are errors (``extra="forbid"``) and the
family is picked by a discriminated union on ``type``. ``load_config`` turns any validation
failure into a :class:`ConfigError` that names the file and the dotted field path.

Per-layer ``layers`` overrides are resolved here, once, into ``ModelConfig.blocks``: a list of
``BlockConfig(mixer, ffn)``, one per layer. An override whose ``type`` equals the layer's
current type (or that omits ``type``) is merged key by key onto it; one with another ``type``
replaces it, so ``{type: mamba, d_state: 16}`` on an attention model needs no attention keys.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator

from .errors import ConfigError


class _FieldError(ValueError):
    """Raised inside validators with the user-facing field path already known."""

    def __init__(self, path: str, message: str, absolute: bool = True):
        self.path, self.message, self.absolute = path, message, absolute
        super().__init__(message)


def _field(name: str, message: str) -> _FieldError:
    """An error about one key of the model being validated (its path is relative to that model)."""
    return _FieldError(name, message, absolute=False)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ----------------------------------------------------------------------------- mixers


class AttentionConfig(_Strict):
    """Softmax attention: MHA (n_kv_heads = n_heads), GQA, MQA (n_kv_heads = 1), sliding window, CLA."""

    type: Literal["attention"] = "attention"
    n_heads: int = Field(gt=0)
    n_kv_heads: int | None = Field(default=None, gt=0, description="default n_heads (MHA)")
    head_dim: int | None = Field(default=None, gt=0, description="default d_model / n_heads")
    rope_theta: float = Field(default=10000.0, gt=0)
    window: int | None = Field(default=None, ge=1, description="sliding window in tokens; null = global")
    cla_group: int = Field(default=1, ge=1, description="layers per group sharing the first one's K/V")
    qkv_bias: bool = False

    @model_validator(mode="after")
    def _check(self) -> AttentionConfig:
        kv = self.n_kv_heads or self.n_heads
        if self.n_heads % kv:
            raise _field("n_kv_heads", f"n_kv_heads={kv} must divide n_heads={self.n_heads}")
        return self


class MLAConfig(_Strict):
    """Multi-head latent attention (DeepSeek-V2) with a decoupled, head-shared RoPE key."""

    type: Literal["mla"] = "mla"
    n_heads: int = Field(gt=0)
    q_lora_rank: int | None = Field(default=None, gt=0, description="null = full-rank query projection")
    kv_lora_rank: int = Field(gt=0)
    qk_nope_head_dim: int = Field(gt=0)
    qk_rope_head_dim: int = Field(gt=0)
    v_head_dim: int = Field(gt=0)
    rope_theta: float = Field(default=10000.0, gt=0)
    kv_norm: bool = Field(default=True, description="RMSNorm on the latent (DeepSeek-V2); off keeps conversion exact")

    @model_validator(mode="after")
    def _check(self) -> MLAConfig:
        if self.qk_rope_head_dim % 2:
            raise _field(
                "qk_rope_head_dim", f"qk_rope_head_dim={self.qk_rope_head_dim} must be even (RoPE rotates pairs)"
            )
        return self


FeatureMap = Literal["identity", "elu", "relu", "taylor", "hedgehog"]


class LinearAttentionConfig(_Strict):
    """Causal linear attention phi(q) (sum phi(k) v^T) / phi(q) (sum phi(k)); BASED uses feature_map=taylor."""

    type: Literal["linear_attention"] = "linear_attention"
    n_heads: int = Field(gt=0)
    head_dim: int | None = Field(default=None, gt=0, description="value head dim; default d_model / n_heads")
    feature_map: FeatureMap = "elu"
    feature_dim: int | None = Field(
        default=None, gt=0, description="query/key dim fed to the feature map; default head_dim"
    )
    chunk_size: int = Field(default=64, gt=0, description="chunk length of the parallel (training) form")
    eps: float = Field(default=1e-6, gt=0)


class S4Config(_Strict):
    """S4D: a diagonal state-space layer with input-independent step sizes."""

    type: Literal["s4"] = "s4"
    d_state: int = Field(default=64, gt=0)
    init: Literal["lin", "inv", "real"] = "lin"
    dt_min: float = Field(default=1e-3, gt=0)
    dt_max: float = Field(default=1e-1, gt=0)

    @model_validator(mode="after")
    def _check(self) -> S4Config:
        if self.dt_min > self.dt_max:
            raise _field("dt_min", f"dt_min={self.dt_min} must not exceed dt_max={self.dt_max}")
        return self


class MambaConfig(_Strict):
    """The Mamba (selective SSM) block."""

    type: Literal["mamba"] = "mamba"
    d_state: int = Field(default=16, gt=0)
    d_conv: int = Field(default=4, ge=2, le=8, description="depthwise causal conv width (2..8)")
    expand: float = Field(default=2, gt=0)
    dt_rank: int | None = Field(default=None, gt=0, description="default ceil(d_model / 16)")
    dt_min: float = Field(default=1e-3, gt=0)
    dt_max: float = Field(default=1e-1, gt=0)
    dt_init_floor: float = Field(default=1e-4, gt=0)
    conv_bias: bool = True
    bias: bool = False

    @model_validator(mode="after")
    def _check(self) -> MambaConfig:
        if self.dt_min > self.dt_max:
            raise _field("dt_min", f"dt_min={self.dt_min} must not exceed dt_max={self.dt_max}")
        return self


MixerConfig = Annotated[
    AttentionConfig | MLAConfig | LinearAttentionConfig | S4Config | MambaConfig,
    Field(discriminator="type"),
]
MIXER_TYPES = ("attention", "mla", "linear_attention", "s4", "mamba")

# ------------------------------------------------------------------------------- FFNs


class SwiGLUConfig(_Strict):
    type: Literal["swiglu"] = "swiglu"
    d_ff: int = Field(gt=0)


class MoEConfig(_Strict):
    """Top-k softmax-routed experts (SwiGLU each); capacity limits act in training only by default."""

    type: Literal["moe"] = "moe"
    n_experts: int = Field(gt=0)
    top_k: int = Field(default=2, gt=0)
    d_ff: int = Field(gt=0)
    capacity_factor: float | None = Field(default=1.25, gt=0, description="null = dropless")
    capacity_at_inference: bool = Field(default=False, description="apply capacity in eval mode too")
    aux_loss_coef: float = Field(default=1e-2, ge=0)
    z_loss_coef: float = Field(default=1e-3, ge=0)
    n_shared_experts: int = Field(default=0, ge=0)
    norm_topk_prob: bool = True

    @model_validator(mode="after")
    def _check(self) -> MoEConfig:
        if self.top_k > self.n_experts:
            raise _field("top_k", f"top_k={self.top_k} must not exceed n_experts={self.n_experts}")
        return self


class NoFFNConfig(_Strict):
    type: Literal["none"] = "none"


FFNConfig = Annotated[SwiGLUConfig | MoEConfig | NoFFNConfig, Field(discriminator="type")]
FFN_TYPES = ("swiglu", "moe", "none")

# ------------------------------------------------------------------------------ model


class LayerOverride(_Strict):
    at: list[int] | int | str = Field(description="layer indices, or a Python slice string such as '1::2'")
    mixer: dict[str, Any] | None = None
    ffn: dict[str, Any] | None = None


class BlockConfig(_Strict):
    mixer: MixerConfig
    ffn: FFNConfig


class ModelConfig(_Strict):
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
            raise _FieldError(f"layers.{k}.at", str(e)) from None
        if not idx:
            raise _FieldError(f"layers.{k}.at", f"{ov.at!r} selects no layer of n_layers={cfg.n_layers}")
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
            path, msg = _first_error(e)
            head, _, rest = path.partition(".")
            src = mixer_src[i] if head == "mixer" else ffn_src[i]
            where = f" (layer {i})" if cfg.layers else ""
            raise _FieldError(".".join(p for p in (src, rest) if p), msg + where) from None
        _check_block(cfg, blocks[-1], i, mixer_src[i])
    return blocks


def _check_block(cfg: ModelConfig, block: BlockConfig, i: int, src: str) -> None:
    """Shape checks that need d_model, done per resolved layer."""
    m = block.mixer
    where = f" (layer {i})" if cfg.layers else ""
    if isinstance(m, AttentionConfig | LinearAttentionConfig) and m.head_dim is None and cfg.d_model % m.n_heads:
        raise _FieldError(
            f"{src}.n_heads", f"d_model={cfg.d_model} is not divisible by n_heads={m.n_heads}; set head_dim{where}"
        )
    if isinstance(m, AttentionConfig):
        hd = m.head_dim or cfg.d_model // m.n_heads
        if hd % 2:
            raise _FieldError(f"{src}.head_dim", f"head_dim={hd} must be even (RoPE rotates pairs){where}")
    if isinstance(m, MambaConfig) and int(m.expand * cfg.d_model) < 1:
        raise _FieldError(f"{src}.expand", f"expand={m.expand} gives an empty inner dimension{where}")


# ------------------------------------------------------------------------- loading


def _loc_to_path(loc: tuple[Any, ...]) -> str:
    parts = []
    for p in loc:
        if isinstance(p, int):
            parts.append(str(p))
        elif p in MIXER_TYPES + FFN_TYPES or p in ("function-after", "function-before"):
            continue  # pydantic names the union member in the location; the user never wrote it
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


def _first_error(e: ValidationError) -> tuple[str, str]:
    err = e.errors()[0]
    path = _loc_to_path(err["loc"])
    inner = (err.get("ctx") or {}).get("error")
    if isinstance(inner, _FieldError):
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
        path, msg = _first_error(e)
        raise ConfigError(msg, path, source) from None


def dump_config(cfg: ModelConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def default_head_dim(d_model: int, n_heads: int) -> int:
    return d_model // n_heads


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def mamba_dims(d_model: int, m: MambaConfig) -> tuple[int, int]:
    """(d_inner, dt_rank) of a Mamba block."""
    return int(m.expand * d_model), m.dt_rank or math.ceil(d_model / 16)
