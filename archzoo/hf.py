"""Import Llama-family decoders from Hugging Face folders or GGUF files (weights + tokenizer).

Supported: Llama (Touvron et al. 2023; incl. SmolLM / SmolLM2), Mistral (Jiang et al. 2023;
``sliding_window`` -> ``window``) and Qwen2 (Yang et al. 2024; Q/K/V biases -> ``qkv_bias``,
per-layer sliding windows via ``layer_types``). All are
pre-norm decoders with RMSNorm, GQA attention with RoPE in the rotate-half layout and a SwiGLU
MLP, which is exactly ArchZooLM's attention + swiglu block, so weights copy over unchanged.

GGUF files are parsed once (``read_gguf``): the config, the weights and the tokenizer are all
built from that one read. Blocks are dequantised by the ``gguf`` package (``pip install
archzoo[teacher]``) and llama.cpp's Q/K row permutation is undone, as transformers' own GGUF
loader does, so the tensors equal the ones transformers would load.

Anything outside that family is refused with a ``ConfigError`` naming what is unsupported:
other architectures, scaled RoPE (``rope_scaling``: linear, dynamic, yarn, llama3, ...),
biases other than Qwen2's Q/K/V ones, activations other than SiLU.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .config import AttentionConfig, ConfigError, ModelConfig, SwiGLUConfig, load_config

# GGUF files are read by gguf_file.py; gguf_architecture is imported for callers of archzoo.hf.
from .gguf_file import (
    GGUF_ARCHITECTURES,
    _require_teacher_extra,
    gguf_architecture,  # noqa: F401
    gguf_hf_config,
    gguf_state,
    gguf_tokenizer,
    read_gguf,
)

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")

_LAYER_RE = re.compile(r"model\.layers\.(\d+)\.(.+)")
_LAYER_MAP = {
    "input_layernorm.weight": "mixer_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    **{f"self_attn.{p}_proj.{w}": f"mixer.{p}_proj.{w}" for p in "qkvo" for w in ("weight", "bias")},
    **{f"mlp.{p}_proj.weight": f"ffn.{p}_proj.weight" for p in ("gate", "up", "down")},
}
_TOP_MAP = {
    "model.embed_tokens.weight": "embed.weight",
    "model.norm.weight": "norm.weight",
    "lm_head.weight": "lm_head.weight",
}


# ------------------------------------------------------------------------------ config


def _get(hf: Any, key: str, default: Any = None) -> Any:
    return hf.get(key, default) if isinstance(hf, Mapping) else getattr(hf, key, default)


def _rope_theta(hf: Any, source: str | None) -> float:
    """The RoPE base; refuses any rope type other than plain (unscaled) RoPE."""
    params = _get(hf, "rope_parameters")  # transformers >= 5
    if params is None:  # transformers 4.x: rope_theta + rope_scaling
        params = {**(_get(hf, "rope_scaling") or {}), "rope_theta": _get(hf, "rope_theta", 10000.0)}
    if params and all(isinstance(v, Mapping) for v in params.values()):  # one entry per layer type
        distinct = {json.dumps(dict(v), sort_keys=True) for v in params.values()}
        if len(distinct) != 1:
            raise ConfigError("different RoPE settings per layer type are not supported", "rope_parameters", source)
        params = next(iter(params.values()))
    rope_type = params.get("rope_type", params.get("type")) or "default"
    if rope_type != "default":
        raise ConfigError(
            f"RoPE scaling type {rope_type!r} is not supported (only plain RoPE, rope_type 'default')",
            "rope_scaling.rope_type",
            source,
        )
    if (params.get("partial_rotary_factor") or 1.0) != 1.0 or (_get(hf, "partial_rotary_factor") or 1.0) != 1.0:
        raise ConfigError("partial rotary embeddings are not supported", "partial_rotary_factor", source)
    return float(params.get("rope_theta", _get(hf, "rope_theta", 10000.0)))


def _layer_windows(hf: Any, model_type: str, n_layers: int) -> list[int | None]:
    window = _get(hf, "sliding_window")
    if model_type == "llama" or window is None:
        return [None] * n_layers
    if model_type == "mistral":
        return [int(window)] * n_layers
    if model_type == "qwen2" and not _get(hf, "use_sliding_window", False):
        return [None] * n_layers
    types = _get(hf, "layer_types")
    if types is None:  # transformers 4.x Qwen2: layers from max_window_layers on slide
        first = _get(hf, "max_window_layers", n_layers)
        types = ["sliding_attention" if i >= first else "full_attention" for i in range(n_layers)]
    return [int(window) if t == "sliding_attention" else None for t in types]


def _check_model_type(hf: Any, source: str | None) -> None:
    model_type = _get(hf, "model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        archs = "/".join(_get(hf, "architectures") or []) or "?"
        raise ConfigError(
            f"architecture {model_type!r} ({archs}) is not supported; "
            f"expected model_type one of {', '.join(SUPPORTED_MODEL_TYPES)}",
            "model_type",
            source,
        )


def config_from_hf(hf: Any, source: str | None = None) -> ModelConfig:
    """A transformers config (object or ``config.json`` dict) of a Llama / Mistral / Qwen2 -> ModelConfig.

    Raises :class:`ConfigError` naming the unsupported field.
    """
    model_type = _get(hf, "model_type")
    _check_model_type(hf, source)
    act = _get(hf, "hidden_act", "silu")
    if act not in ("silu", "swish"):
        raise ConfigError(f"activation {act!r} is not supported (SwiGLU needs silu)", "hidden_act", source)
    if _get(hf, "mlp_bias", False):
        raise ConfigError("MLP biases are not supported", "mlp_bias", source)
    if model_type != "qwen2" and _get(hf, "attention_bias", False):
        raise ConfigError(
            "attention biases (incl. o_proj) are not supported; only Qwen2's Q/K/V biases", "attention_bias", source
        )
    if (_get(hf, "pretraining_tp") or 1) != 1:
        raise ConfigError("pretraining_tp > 1 is not supported", "pretraining_tp", source)
    d_model, n_heads = int(_get(hf, "hidden_size")), int(_get(hf, "num_attention_heads"))
    n_layers = int(_get(hf, "num_hidden_layers"))
    attn = {
        "type": "attention",
        "n_heads": n_heads,
        "n_kv_heads": int(_get(hf, "num_key_value_heads") or n_heads),
        "head_dim": int(_get(hf, "head_dim") or d_model // n_heads),
        "rope_theta": _rope_theta(hf, source),
        "qkv_bias": model_type == "qwen2",
    }
    windows = _layer_windows(hf, model_type, n_layers)
    uniform = len(set(windows)) == 1
    attn["window"] = windows[0] if uniform else None
    layers = []
    if not uniform:
        for w in sorted({w for w in windows if w is not None}):
            layers.append({"at": [i for i, x in enumerate(windows) if x == w], "mixer": {"window": w}})
    data = {
        "vocab_size": int(_get(hf, "vocab_size")),
        "d_model": d_model,
        "n_layers": n_layers,
        "tie_embeddings": bool(_get(hf, "tie_word_embeddings", False)),
        "norm_eps": float(_get(hf, "rms_norm_eps", 1e-6)),
        "mixer": attn,
        "ffn": {"type": "swiglu", "d_ff": int(_get(hf, "intermediate_size"))},
        "layers": layers,
        "init_std": float(_get(hf, "initializer_range", 0.02) or 0.02),
    }
    try:
        return load_config(data)
    except ConfigError as e:
        raise ConfigError(e.message, e.path, source) from None


def to_hf_config(cfg: ModelConfig):
    """The transformers config (LlamaConfig, MistralConfig or Qwen2Config) of a plain attention + SwiGLU model.

    Raises ValueError when ``cfg`` is not expressible as one of those (another mixer or FFN,
    CLA sharing, per-layer differences other than Qwen2-style sliding windows).
    """
    import transformers

    for i, b in enumerate(cfg.blocks):
        if not isinstance(b.mixer, AttentionConfig) or not isinstance(b.ffn, SwiGLUConfig):
            raise ValueError(f"to_hf_config: layer {i} is {b.mixer.type} + {b.ffn.type}; needs attention + swiglu")
        if b.mixer.cla_group != 1:
            raise ValueError(f"to_hf_config: layer {i} has cla_group={b.mixer.cla_group}; HF models have no CLA")
    first = cfg.blocks[0].mixer
    for i, b in enumerate(cfg.blocks):
        a, f = b.mixer, b.ffn
        if a.model_copy(update={"window": None}) != first.model_copy(update={"window": None}) or f != cfg.blocks[0].ffn:
            raise ValueError(f"to_hf_config: layer {i} differs from layer 0 in more than its window")
    windows = [b.mixer.window for b in cfg.blocks]
    sizes = {w for w in windows if w is not None}
    if len(sizes) > 1:
        raise ValueError(f"to_hf_config: several window sizes {sorted(sizes)}; HF models take one")
    common = dict(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.d_model,
        intermediate_size=cfg.blocks[0].ffn.d_ff,
        num_hidden_layers=cfg.n_layers,
        num_attention_heads=first.n_heads,
        num_key_value_heads=first.n_kv_heads or first.n_heads,
        head_dim=first.head_dim or cfg.d_model // first.n_heads,
        rms_norm_eps=cfg.norm_eps,
        tie_word_embeddings=cfg.tie_embeddings,
        rope_parameters={"rope_type": "default", "rope_theta": first.rope_theta},
        hidden_act="silu",
        initializer_range=cfg.init_std,
    )
    if first.qkv_bias or (sizes and len(set(windows)) > 1):
        if not first.qkv_bias:
            raise ValueError("to_hf_config: windows on some layers only need Qwen2, which has Q/K/V biases")
        kinds = ["sliding_attention" if w is not None else "full_attention" for w in windows]
        return transformers.Qwen2Config(
            **common,
            use_sliding_window=bool(sizes),
            sliding_window=next(iter(sizes), None),
            layer_types=kinds,
            max_window_layers=cfg.n_layers,
        )
    if sizes:
        return transformers.MistralConfig(**common, sliding_window=next(iter(sizes)))
    return transformers.LlamaConfig(**common, attention_bias=False, mlp_bias=False)


# ----------------------------------------------------------------------------- weights


def state_from_hf(state: Mapping[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Rename a transformers state dict to ArchZooLM names; refuses tensors it does not know."""
    out: dict[str, torch.Tensor] = {}
    unknown = []
    for name, t in state.items():
        m = _LAYER_RE.fullmatch(name)
        if name in _TOP_MAP:
            out[_TOP_MAP[name]] = t
        elif m and m.group(2) in _LAYER_MAP:
            out[f"blocks.{m.group(1)}.{_LAYER_MAP[m.group(2)]}"] = t
        elif name.endswith("rotary_emb.inv_freq"):
            continue  # recomputed from rope_theta
        else:
            unknown.append(name)
    if unknown:
        raise ValueError(
            f"unsupported tensors in the checkpoint: {', '.join(unknown[:5])}{' ...' * (len(unknown) > 5)}"
        )
    if cfg.tie_embeddings:
        out.pop("lm_head.weight", None)
    return out


def state_to_hf(model) -> dict[str, torch.Tensor]:
    """ArchZooLM state dict -> transformers names (the inverse of ``state_from_hf``)."""
    inv_top = {v: k for k, v in _TOP_MAP.items()}
    inv_layer = {v: k for k, v in _LAYER_MAP.items()}
    out = {}
    for name, t in model.state_dict().items():
        if name in inv_top:
            out[inv_top[name]] = t
            continue
        _, i, rest = name.split(".", 2)
        out[f"model.layers.{i}.{inv_layer[rest]}"] = t
    return out


def to_hf(model):
    """An ArchZooLM of plain attention + SwiGLU blocks -> the equivalent transformers model (fp32, CPU)."""
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_config(to_hf_config(model.cfg), dtype=torch.float32)
    missing, unexpected = hf.load_state_dict(state_to_hf(model), strict=False)
    missing = [k for k in missing if not (model.cfg.tie_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise RuntimeError(f"to_hf: weights did not map: missing {missing[:5]}, unexpected {unexpected[:5]}")
    if model.cfg.tie_embeddings:
        hf.tie_weights()
    return hf.eval()


def _read_safetensors(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    index = folder / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    else:
        shards = sorted(p.name for p in folder.glob("*.safetensors"))
    if not shards:
        bins = sorted(folder.glob("pytorch_model*.bin"))
        if not bins:
            raise ConfigError("no *.safetensors (or pytorch_model*.bin) weights in this folder", source=str(folder))
        state = {}
        for b in bins:
            state.update(torch.load(b, map_location="cpu", weights_only=True))
        return state
    state = {}
    for shard in shards:
        if not (folder / shard).is_file():
            raise ConfigError(f"weight shard {shard} is missing", source=str(folder))
        state.update(load_file(str(folder / shard)))
    return state


# ------------------------------------------------------------------------------- entry


def from_hf(
    src: str | Path | Any,
    dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
    load_tokenizer: bool | None = None,
):
    """A Llama-family Hugging Face model -> ArchZooLM whose logits equal transformers' own.

    ``src``: a folder with ``config.json`` and safetensors weights (sharded or not), a ``.gguf``
    file (read once, see ``read_gguf``), or an already loaded transformers model (its weights
    are copied). ``dtype`` defaults to float32; ``device`` to CPU. ``load_tokenizer``: None
    loads the tokenizer when the source has one, True requires it, False skips it; the result
    is ``model.tokenizer``. Missing files and unsupported architectures raise
    :class:`archzoo.ConfigError` (a ValueError) naming the path and what is unsupported.
    """
    dtype = dtype or torch.float32
    tokenizer = None
    if not isinstance(src, str | Path):
        if not (hasattr(src, "config") and hasattr(src, "state_dict")):
            raise ValueError(f"src must be a folder, a .gguf file or a transformers model, got {type(src).__name__}")
        if load_tokenizer:
            raise ValueError("load_tokenizer=True needs a folder or a .gguf file, not an in-memory model")
        cfg = config_from_hf(src.config, type(src).__name__)
        state = {k: v.detach().to(dtype, copy=True) for k, v in src.state_dict().items()}
        return _build(cfg, state_from_hf(state, cfg), dtype, device, None)
    path = Path(src).expanduser()
    source = str(src)
    if not path.exists():
        raise ConfigError("no such file or folder", source=source)
    if path.is_file():
        if path.suffix != ".gguf":
            raise ConfigError("expected a Hugging Face folder or a .gguf file", source=source)
        gguf = read_gguf(path)  # the one parse: config, weights and tokenizer all come from it
        if gguf.architecture not in GGUF_ARCHITECTURES:
            raise ConfigError(
                f"GGUF architecture {gguf.architecture!r} is not supported; "
                f"expected one of {', '.join(GGUF_ARCHITECTURES)}",
                "general.architecture",
                source,
            )
        _require_teacher_extra()
        cfg = config_from_hf(gguf_hf_config(gguf), source)
        state = gguf_state(gguf, cfg)
        if load_tokenizer is not False:
            tokenizer = gguf_tokenizer(gguf)
            if tokenizer is None and load_tokenizer:
                raise ConfigError("the GGUF file holds no tokenizer (tokenizer.ggml.tokens)", source=source)
        return _build(cfg, state, dtype, device, tokenizer)
    if not (path / "config.json").is_file():
        raise ConfigError("not a Hugging Face folder: config.json is missing", source=source)
    try:
        raw = json.loads((path / "config.json").read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"config.json is not valid JSON: {e}", source=source) from None
    _check_model_type(raw, source)  # refuse unsupported models before transformers sees them
    from transformers import AutoConfig, AutoTokenizer

    cfg = config_from_hf(AutoConfig.from_pretrained(str(path), local_files_only=True), source)
    state = state_from_hf(_read_safetensors(path), cfg)
    has_tok = any((path / f).is_file() for f in TOKENIZER_FILES)
    if load_tokenizer and not has_tok:
        raise ConfigError(f"no tokenizer files ({', '.join(TOKENIZER_FILES)})", source=source)
    if has_tok and load_tokenizer is not False:
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    return _build(cfg, state, dtype, device, tokenizer)


def _build(cfg: ModelConfig, state: dict[str, torch.Tensor], dtype, device, tokenizer):
    """``state``: ArchZooLM names (``state_from_hf`` / ``gguf_state``)."""
    from .checkpoint import model_from_state

    device = torch.device(device or "cpu")
    state = {k: v.to(device=device, dtype=dtype) for k, v in state.items()}
    model = model_from_state(cfg, state, device)
    model.tokenizer = tokenizer
    return model.eval()
