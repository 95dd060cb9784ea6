"""``archzoo bench decode``'s input: the MODEL arguments resolved without loading weights (``resolve_source``),
the comma-separated flags parsed (``parse_sizes``, ``parse_linears``, ``parse_forms``, ``parse_inductor_options``),
and the kernel switches a row runs under (``decode_linear_form``, ``decode_attention_form``). ``decode.py`` runs
the rows."""

from __future__ import annotations

import json
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ..config import load_config
from ..errors import UserError
from ..layers import attention as attention_layer
from ..layers import fused as fused_layer


@dataclass
class ModelSource:
    """One MODEL argument, resolved far enough to check it without loading weights."""

    arg: str
    kind: str  # yaml | checkpoint | teacher
    cfg: object | None = None  # ModelConfig where it is cheap to read
    max_len: int | None = None  # most tokens the model holds (prompt + new), where known
    max_len_from: str = ""


# ``--decode-attention``: the form a one-token step's softmax / MLA attention runs where the Triton
# kernels run (``archzoo.layers.attention.DECODE_ATTENTION``), and the implementation name of its rows.
FORM_IMPLEMENTATION = {"kernel": "archzoo", "sdpa": "archzoo-sdpa"}
ATTENTION_OPS = ("decode_attention", "decode_attention_ring", "decode_attention_mla")


# ``--decode-linear``: how the step's projections run (``archzoo.layers.fused.DECODE_LINEAR``); a row of the
# GEMV kernel gets "-gemv" after its implementation name. "kernel-pdl": the same kernels launched with
# programmatic dependent launch (``archzoo.kernels._pdl``: each GEMV loads its weights while the kernel before
# finishes), "-gemv-pdl". "auto-qkv": "auto" with every attention layer's Q|K|V, RoPE and cache write through
# ``decode_qkv_rope`` up to 64 rows (``layers.fused.QKV_MAX_ROWS``), the other projections as "auto" has them.
# "kernel-pdl-l2": "kernel-pdl" with the GEMV's L2 prefetch on its tl.dot path (8 rows and more: each program asks
# L2 for its weight slice before it waits on the kernel before; ``decode_linear.triton.CUDA_CONFIG["L2_PREFETCH"]``).
# "kernel-pdl-m16": "kernel-pdl" with x's rows in tiles of 16 a program on the tl.dot path (``M_TILE``: at 64 rows
# four times the programs); "kernel-pdl-l2-m16" both.
LINEARS = ("cublas", "kernel", "kernel-pdl", "kernel-pdl-l2", "kernel-pdl-m16", "kernel-pdl-l2-m16", "auto", "auto-qkv")
# the GEMV configuration each form sets (``decode_linear.triton.CONFIG_OVERRIDE``; the plans are keyed on it)
GEMV_OVERRIDES = {
    "kernel-pdl-l2": {"L2_PREFETCH": True},
    "kernel-pdl-m16": {"M_TILE": 16},
    "kernel-pdl-l2-m16": {"L2_PREFETCH": True, "M_TILE": 16},
}


def parse_linears(text: Sequence[str] | str) -> list[str]:
    items = [f.strip() for f in text.split(",")] if isinstance(text, str) else list(text)
    if not items or any(f not in LINEARS for f in items):
        raise UserError(f"--decode-linear: expected a comma-separated list of {', '.join(LINEARS)}, got {text!r}")
    return list(dict.fromkeys(items))


@contextmanager
def decode_linear_form(form: str):
    """Run the decode step's projections as ``form`` (one of ``LINEARS``)."""
    from archzoo.kernels import _pdl
    from archzoo.kernels.decode_linear import MAX_M
    from archzoo.kernels.decode_linear import triton as gemv

    old, old_pdl, old_qkv = fused_layer.DECODE_LINEAR, _pdl.ENABLED, fused_layer.QKV_MAX_ROWS
    old_gemv = dict(gemv.CONFIG_OVERRIDE)
    pdl_form = form.startswith("kernel-pdl")
    # "auto": the GEMV up to AUTO_MAX_ROWS; "auto-qkv" also Q|K|V with RoPE and the cache write up to 64 rows
    fused_layer.DECODE_LINEAR = "kernel" if pdl_form else {"auto-qkv": "auto"}.get(form, form)
    if form == "auto-qkv":
        fused_layer.QKV_MAX_ROWS = MAX_M
    gemv.CONFIG_OVERRIDE.update(GEMV_OVERRIDES.get(form, {}))  # the GEMV's plans are keyed on it: no cache to clear
    # kernel-pdl*: PDL asked for; kernel and cublas: without it (the rows it is measured against); auto: the
    # library's default (PDL wherever it can run)
    _pdl.ENABLED = True if pdl_form else {"auto": None, "auto-qkv": None}.get(form, False)
    try:
        yield
    finally:
        fused_layer.DECODE_LINEAR, _pdl.ENABLED, fused_layer.QKV_MAX_ROWS = old, old_pdl, old_qkv
        gemv.CONFIG_OVERRIDE.clear()
        gemv.CONFIG_OVERRIDE.update(old_gemv)


def parse_forms(text: Sequence[str] | str) -> list[str]:
    forms = [f.strip() for f in text.split(",")] if isinstance(text, str) else list(text)
    bad = [f for f in forms if f not in FORM_IMPLEMENTATION]
    if not forms or bad:
        raise UserError(
            f"--decode-attention: expected a comma-separated list of {', '.join(FORM_IMPLEMENTATION)}, got {text!r}"
        )
    return list(dict.fromkeys(forms))


def parse_inductor_options(text: Sequence[dict] | str | None) -> list[dict]:
    """``--inductor-options``: option sets separated by ';', each KEY=VALUE pairs separated by ',' (values
    1 / 0 / true / false / integers / strings; an empty set is inductor's defaults), e.g.
    ``";coordinate_descent_tuning=1;max_autotune=1,coordinate_descent_tuning=1"``."""
    if text is None:
        return [{}]
    if not isinstance(text, str):
        return [dict(d) for d in text] or [{}]
    import torch._inductor.config as inductor_config

    sets = []
    for part in text.split(";"):
        opts: dict = {}
        for item in filter(None, (s.strip() for s in part.split(","))):
            key, sep, value = item.partition("=")
            if not sep or not key or not hasattr(inductor_config, key):
                raise UserError(f"--inductor-options: {item!r} is not KEY=VALUE with KEY an inductor config option")
            v = value.strip()
            low = v.lower()
            opts[key] = (
                True if low in ("1", "true") else False if low in ("0", "false") else int(v) if v.isdigit() else v
            )
        sets.append(opts)
    return sets


@contextmanager
def decode_attention_form(form: str):
    """Run the decode step's attention in ``form`` ("kernel" or "sdpa") inside the block."""
    old = attention_layer.DECODE_ATTENTION
    attention_layer.DECODE_ATTENTION = form
    try:
        yield
    finally:
        attention_layer.DECODE_ATTENTION = old


def parse_sizes(flag: str, text: str | Sequence[int]) -> list[int]:
    """``"1,16,64"`` -> [1, 16, 64]; anything but positive integers is a ``UserError`` naming the flag."""
    items = text.split(",") if isinstance(text, str) else list(text)
    out = []
    for item in items:
        try:
            value = int(str(item).strip())
        except ValueError:
            value = 0
        if value < 1:
            raise UserError(f"{flag}: expected comma-separated positive integers, got {text!r}")
        if value not in out:
            out.append(value)
    if not out:
        raise UserError(f"{flag}: expected comma-separated positive integers, got {text!r}")
    return out


def _hf_context(folder: Path) -> int | None:
    try:
        raw = json.loads((folder / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None  # from_hf reports a broken config.json when it loads the folder
    n = raw.get("max_position_embeddings")
    return int(n) if isinstance(n, int) and n > 0 else None


def _gguf_context(path: Path) -> int | None:
    """``<arch>.context_length`` from a GGUF header (needs the ``gguf`` package, as reading the file does)."""
    try:
        from gguf import GGUFReader

        reader = GGUFReader(str(path))
        arch = reader.fields["general.architecture"]
        arch = bytes(arch.parts[arch.data[0]]).decode()
        field = reader.fields.get(f"{arch}.context_length")
        return int(field.parts[field.data[0]][0]) if field is not None else None
    except Exception:  # no gguf package, or a file from_hf will refuse with its own message
        return None


def resolve_source(arg: str) -> ModelSource:
    """Which kind of MODEL ``arg`` is; ``UserError`` (``ConfigError`` for a bad YAML) when it is none."""
    from ..teacher import TEACHERS

    path = Path(arg).expanduser()
    if path.is_file() and path.suffix in (".yaml", ".yml"):
        return ModelSource(arg, "yaml", load_config(path))
    if path.is_dir() and (path / "config.yaml").is_file() and (path / "model.safetensors").is_file():
        return ModelSource(arg, "checkpoint", load_config(path / "config.yaml"))
    if path.is_dir() and (path / "config.json").is_file():
        n = _hf_context(path)
        return ModelSource(arg, "teacher", None, n, "max_position_embeddings in config.json" if n else "")
    if path.is_file() and path.suffix == ".gguf":
        n = _gguf_context(path)
        return ModelSource(arg, "teacher", None, n, "context_length in the GGUF header" if n else "")
    if arg in TEACHERS and not path.exists():
        return ModelSource(arg, "teacher")
    what = "no such file or folder" if not path.exists() else "not a model"
    raise UserError(
        f"{arg}: {what}; expected a model YAML, a saved student folder (config.yaml + model.safetensors), "
        f"a teacher name ({', '.join(TEACHERS)}), a .gguf file or a Hugging Face folder (config.json)"
    )


def _check_length(src: ModelSource, prompt_len: int, new_tokens: int) -> None:
    need = prompt_len + new_tokens
    if src.max_len is not None and need > src.max_len:
        raise UserError(
            f"{src.arg}: a {prompt_len}-token prompt + {new_tokens} new tokens = {need} tokens; "
            f"the model holds {src.max_len} ({src.max_len_from})"
        )


def _model_limit(model) -> tuple[int | None, str]:
    """A length limit the model itself declares, if any (``max_seq_len`` on the model or its config)."""
    for owner, name in ((model, "model"), (getattr(model, "cfg", None), "config")):
        for attr in ("max_seq_len", "max_position_embeddings"):
            n = getattr(owner, attr, None)
            if isinstance(n, int) and n > 0:
                return n, f"{name}.{attr}"
    return None, ""


# ``--prompts``: "random" (seeded token ids, the default: speed does not depend on the text) or real text, a
# held-out set of ``archzoo.data.heldout`` or a user's file, cut into one window per row (``common.text_prompts``).
# Speculative rows need real text: how often a draft agrees with its target is a property of the text, and on
# random token ids both models continue noise.
RANDOM_PROMPTS = "random"


def parse_prompts(name: str, sources: Sequence[ModelSource]) -> str:
    """``--prompts`` checked before anything is written: ``random``, a held-out set name or a path, and a tokenizer
    for every MODEL that will read text (a model YAML has none; a student folder has one if saved with it)."""
    if name == RANDOM_PROMPTS:
        return name
    from ..data.heldout import HELDOUT_TEXT_SETS

    if name not in HELDOUT_TEXT_SETS and not Path(name).expanduser().exists():
        raise UserError(
            f"--prompts {name!r}: expected {RANDOM_PROMPTS}, a held-out text set ({', '.join(HELDOUT_TEXT_SETS)}) "
            "or a text / JSONL / Parquet file or folder"
        )
    for src in sources:
        if src.kind == "yaml":
            raise UserError(
                f"--prompts {name}: {src.arg} is a model YAML (random weights, no tokenizer); text prompts need a "
                "teacher or a student folder saved with its tokenizer, or use --prompts random"
            )
        if src.kind == "checkpoint" and not (Path(src.arg).expanduser() / "tokenizer").is_dir():
            raise UserError(
                f"--prompts {name}: the student folder {src.arg} has no tokenizer/ (it was saved without one); "
                "use --prompts random"
            )
    return name
