"""GGUF files (llama.cpp's format) read once for ``archzoo.hf.from_hf``: the header, metadata and tensor table
parsed here (``read_gguf``), the transformers-style config (``gguf_hf_config``), the weights dequantised by the
``gguf`` package with llama.cpp's Q/K row permutation undone (``gguf_state``), and the tokenizer
(``gguf_tokenizer``), so that the tensors equal the ones transformers' own GGUF loader would load."""

from __future__ import annotations

import math
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .config import ConfigError, ModelConfig

GGUF_ARCHITECTURES = ("llama", "mistral", "qwen2")  # general.architecture values we accept

_GGUF_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_GGUF_STRING, _GGUF_ARRAY = 8, 9

# llama.cpp tensor names -> ArchZooLM names (the Llama-family layout; anything else is refused)
_GGUF_TOP = {
    "token_embd.weight": "embed.weight",
    "output_norm.weight": "norm.weight",
    "output.weight": "lm_head.weight",
}
_GGUF_LAYER_RE = re.compile(r"blk\.(\d+)\.(.+)")
_GGUF_LAYER = {
    "attn_norm.weight": "mixer_norm.weight",
    "ffn_norm.weight": "ffn_norm.weight",
    "attn_output.weight": "mixer.o_proj.weight",
    **{f"attn_{p}.{w}": f"mixer.{p}_proj.{w}" for p in "qkv" for w in ("weight", "bias")},
    **{f"ffn_{p}.weight": f"ffn.{p}_proj.weight" for p in ("gate", "up", "down")},
}
# GGUF metadata key (after "<arch>.") -> transformers config key, as transformers' own GGUF loader maps them
_GGUF_CONFIG = {
    "context_length": "max_position_embeddings",
    "block_count": "num_hidden_layers",
    "feed_forward_length": "intermediate_size",
    "embedding_length": "hidden_size",
    "rope.freq_base": "rope_theta",
    "attention.head_count": "num_attention_heads",
    "attention.head_count_kv": "num_key_value_heads",
    "attention.layer_norm_rms_epsilon": "rms_norm_eps",
    "vocab_size": "vocab_size",
}


@dataclass(frozen=True)
class GGUFTensor:
    name: str
    shape: tuple[int, ...]  # torch order (GGUF lists the fastest-moving dimension first)
    ggml_type: int
    offset: int  # bytes from the start of the data section


@dataclass(frozen=True)
class GGUFFile:
    """One read of a GGUF file: all metadata (string arrays such as the vocabulary included) and the
    tensor table. Tensor data stays on disk until ``gguf_state`` maps and dequantises it."""

    path: Path
    metadata: dict[str, Any]
    tensors: tuple[GGUFTensor, ...]
    data_start: int

    @property
    def architecture(self) -> str:
        return str(self.metadata["general.architecture"])


def read_gguf(path: str | Path) -> GGUFFile:
    """Parse a GGUF (v2/v3) header once: every metadata key and the tensor table, no tensor data.

    A plain struct reader over a memory map (the vocabulary's ~100k strings take well under a second,
    where ``gguf.GGUFReader`` builds a numpy view per string). Raises :class:`ConfigError` for a file
    that is not GGUF, too old, or cut short.
    """
    import mmap

    path = Path(path)
    with open(path, "rb") as f:
        try:
            buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except ValueError:  # empty file
            raise ConfigError("not a GGUF file (bad magic)", source=str(path)) from None
    with buf:
        if buf[:4] != b"GGUF":
            raise ConfigError("not a GGUF file (bad magic)", source=str(path))
        try:
            return _parse_gguf(path, buf)
        except (struct.error, UnicodeDecodeError, KeyError, IndexError) as e:
            raise ConfigError(f"corrupt or truncated GGUF file ({type(e).__name__}: {e})", source=str(path)) from None


def _parse_gguf(path: Path, buf) -> GGUFFile:
    version, n_tensors, n_kv = struct.unpack_from("<IQQ", buf, 4)
    if version < 2:
        raise ConfigError(f"GGUF version {version} is too old (need 2+)", source=str(path))
    pos = 24

    def read_str() -> str:
        nonlocal pos
        (n,) = struct.unpack_from("<Q", buf, pos)
        pos += 8 + n
        return buf[pos - n : pos].decode("utf-8")

    def read_value(kind: int) -> Any:
        nonlocal pos
        if kind == _GGUF_STRING:
            return read_str()
        if kind == _GGUF_ARRAY:
            item, count = struct.unpack_from("<IQ", buf, pos)
            pos += 12
            if item in _GGUF_SCALARS:
                fmt = f"<{count}{_GGUF_SCALARS[item]}"
                values = list(struct.unpack_from(fmt, buf, pos))
                pos += struct.calcsize(fmt)
                return values
            return [read_value(item) for _ in range(count)]
        fmt = "<" + _GGUF_SCALARS[kind]
        (value,) = struct.unpack_from(fmt, buf, pos)
        pos += struct.calcsize(fmt)
        return value

    metadata: dict[str, Any] = {}
    for _ in range(n_kv):
        key = read_str()
        (kind,) = struct.unpack_from("<I", buf, pos)
        pos += 4
        metadata[key] = read_value(kind)
    if "general.architecture" not in metadata:
        raise ConfigError("GGUF file has no general.architecture", source=str(path))
    tensors = []
    for _ in range(n_tensors):
        name = read_str()
        (n_dims,) = struct.unpack_from("<I", buf, pos)
        dims = struct.unpack_from(f"<{n_dims}Q", buf, pos + 4)
        ggml_type, offset = struct.unpack_from("<IQ", buf, pos + 4 + 8 * n_dims)
        pos += 4 + 8 * n_dims + 12
        tensors.append(GGUFTensor(name, tuple(int(d) for d in reversed(dims)), ggml_type, offset))
    align = int(metadata.get("general.alignment", 32))
    return GGUFFile(path, metadata, tuple(tensors), -(-pos // align) * align)


def gguf_architecture(path: Path) -> str:
    """``general.architecture`` of a GGUF file."""
    return read_gguf(path).architecture


def gguf_hf_config(gguf: GGUFFile) -> dict[str, Any]:
    """The transformers-style config dict (``config.json`` keys) of a Llama-family GGUF file.

    The same keys and values transformers' GGUF loader derives (float metadata are float32, so e.g.
    rms_norm_eps 1e-5 arrives as 9.99999975e-06 in both), so ``config_from_hf`` applies its checks.
    RoPE scaling and sliding windows, which that loader would drop silently, are passed on or refused.
    """
    md, arch, source = gguf.metadata, gguf.architecture, str(gguf.path)
    hf: dict[str, Any] = {"model_type": arch}
    for key, name in _GGUF_CONFIG.items():
        if f"{arch}.{key}" in md:
            hf[name] = md[f"{arch}.{key}"]
    rope_dim, key_dim = md.get(f"{arch}.rope.dimension_count"), md.get(f"{arch}.attention.key_length")
    if arch != "qwen2" and rope_dim is not None:
        hf["head_dim"] = rope_dim  # transformers maps rope.dimension_count to head_dim (not for Qwen2)
    if rope_dim is not None and key_dim is not None and rope_dim != key_dim:
        raise ConfigError(
            f"partial rotary embeddings are not supported (rope dim {rope_dim}, head dim {key_dim})",
            f"{arch}.rope.dimension_count",
            source,
        )
    scaling = md.get(f"{arch}.rope.scaling.type")
    if scaling not in (None, "none"):
        hf["rope_scaling"] = {"rope_type": scaling}  # config_from_hf refuses it, naming the type
    if f"{arch}.attention.sliding_window" in md:
        raise ConfigError("sliding-window GGUF models are not supported", f"{arch}.attention.sliding_window", source)
    names = {t.name for t in gguf.tensors}
    hf["tie_word_embeddings"] = "output.weight" not in names  # llama.cpp writes the head only when untied
    if "vocab_size" not in hf and "tokenizer.ggml.tokens" in md:
        hf["vocab_size"] = len(md["tokenizer.ggml.tokens"])
    return hf


def gguf_state(gguf: GGUFFile, cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Dequantised fp32 tensors of a Llama-family GGUF file under ArchZooLM names, each in storage it owns.

    Blocks are dequantised by the ``gguf`` package (the function transformers' loader calls), and for
    the ``llama`` architecture Q/K rows are put back from llama.cpp's interleaved RoPE layout into the
    rotate-half one, as transformers does, so the tensors equal the ones transformers would load.
    Unknown tensors raise :class:`ConfigError` naming them.
    """
    import numpy as np
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
    from gguf.quants import dequantize

    source = str(gguf.path)
    unknown = []
    for t in gguf.tensors:
        m = _GGUF_LAYER_RE.fullmatch(t.name)
        if not (t.name in _GGUF_TOP or (m and m.group(2) in _GGUF_LAYER)):
            unknown.append(t.name)
    if unknown:
        raise ConfigError(
            f"unsupported tensors in the GGUF file: {', '.join(unknown[:5])}{' ...' * (len(unknown) > 5)}",
            source=source,
        )
    attn = cfg.blocks[0].mixer
    heads = {"attn_q": attn.n_heads, "attn_k": attn.n_kv_heads or attn.n_heads}
    data = np.memmap(gguf.path, dtype=np.uint8, mode="r")
    out: dict[str, torch.Tensor] = {}
    for t in gguf.tensors:
        try:
            qtype = GGMLQuantizationType(t.ggml_type)
            block, size = GGML_QUANT_SIZES[qtype]
        except (ValueError, KeyError):
            raise ConfigError(f"tensor {t.name}: unknown GGML type {t.ggml_type}", source=source) from None
        row_bytes = t.shape[-1] // block * size
        start = gguf.data_start + t.offset
        raw = data[start : start + row_bytes * math.prod(t.shape[:-1])].reshape(*t.shape[:-1], row_bytes)
        try:
            w = dequantize(raw, qtype).reshape(t.shape)
        except NotImplementedError as e:
            raise ConfigError(f"tensor {t.name}: {e}", source=source) from None
        m = _GGUF_LAYER_RE.fullmatch(t.name)
        kind = m.group(2).split(".")[0] if m else None
        if gguf.architecture == "llama" and kind in heads:  # undo llama.cpp's Q/K row permutation
            n = heads[kind]
            w = w.reshape(n, w.shape[0] // n // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(t.shape)
        tensor = torch.empty(t.shape, dtype=torch.float32)  # owned, allocator-aligned storage
        np.copyto(tensor.numpy(), w, casting="same_kind")
        out[_GGUF_TOP[t.name] if m is None else f"blocks.{m.group(1)}.{_GGUF_LAYER[m.group(2)]}"] = tensor
    del data
    if cfg.tie_embeddings:
        out.pop("lm_head.weight", None)
    return out


def gguf_tokenizer(gguf: GGUFFile):
    """The file's tokenizer as a ``PreTrainedTokenizerFast``, built from the metadata already read
    (the vocabulary and merges through transformers' GGUF tokenizer converter); None without one."""
    md = gguf.metadata
    if "tokenizer.ggml.tokens" not in md:
        return None
    from transformers import PreTrainedTokenizerFast
    from transformers.modeling_gguf_pytorch_utils import GGUF_TOKENIZER_MAPPING

    try:  # transformers >= 5
        from transformers.integrations.gguf import convert_gguf_tokenizer
    except ImportError:  # transformers 4.x
        from transformers.integrations.ggml import convert_gguf_tokenizer

    tok, tok_config = (
        {
            name: md[f"tokenizer.{key}"]
            for key, name in GGUF_TOKENIZER_MAPPING[group].items()
            if f"tokenizer.{key}" in md
        }
        for group in ("tokenizer", "tokenizer_config")
    )
    if tok.get("tokenizer_type") == "llama":  # llama.cpp adds BOS to a sentencepiece vocabulary unless told not to
        tok_config.setdefault("add_bos_token", True)
    tokens = tok["tokens"]
    for name, key in (
        ("bos", "bos_token_id"),
        ("eos", "eos_token_id"),
        ("unk", "unknown_token_id"),
        ("pad", "padding_token_id"),
    ):
        token_id = md.get(f"tokenizer.ggml.{key}")
        tok_config[f"{name}_token"] = tokens[token_id] if token_id is not None else None
    backend, extra = convert_gguf_tokenizer(gguf.architecture, tok)
    return PreTrainedTokenizerFast(tokenizer_object=backend, **{**tok_config, **extra})


def _require_teacher_extra() -> None:
    import importlib.util

    if importlib.util.find_spec("gguf") is None:
        raise ImportError("reading GGUF files needs the gguf package: pip install 'archzoo[teacher]'")
