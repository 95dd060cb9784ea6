"""The Pareto benchmark suite's YAML schema (``configs/bench/<suite>.yaml``): the teacher, the models, the
evaluation sets, the decode and speculative settings (``Suite``; ``load_suite`` reads one). ``suite.py`` runs it."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
from pydantic import Field, ValidationError, field_validator, model_validator

from ..config import first_error, read_mapping
from ..errors import ConfigError
from ..layers.base import Strict, field_error
from .common import DTYPES
from .decode_input import LINEARS  # --decode-linear's forms, named in one place

SCHEMA_VERSION = 1


class ModelSpec(Strict):
    name: str = Field(min_length=1, description="display name in tables and charts")
    source: str = Field(
        min_length=1,
        description="model YAML (seeded random weights), saved student folder or distill run folder; with "
        "init: convert, a model YAML or a distill run YAML",
    )
    init: Literal["weights", "convert"] = Field(
        default="weights",
        description="weights: the source's own (seeded random for a model YAML); convert: archzoo.convert of the "
        "suite's teacher into the source's architecture, untrained: a distillation's starting point (a distill "
        "run YAML's student section gives the config, converter options and teacher layers). Beside a trained row "
        "of the same config it is that row's 'before': in the before -> after table, off the frontiers and charts",
    )
    layers: list[int] | None = Field(default=None, description="init: convert: the teacher layer of each layer")
    convert: dict[str, Any] = Field(default_factory=dict, description="init: convert: options of archzoo.convert")

    @model_validator(mode="after")
    def _convert_options(self) -> ModelSpec:
        if self.init != "convert":
            for key in ("layers", "convert"):
                if getattr(self, key):
                    raise field_error(key, f"{key} is for init: convert (the model is converted from the teacher)")
        return self


class TeacherSpec(Strict):
    name: str = Field(default="teacher", min_length=1)
    source: str = Field(min_length=1, description="teacher name, .gguf file, HF folder, saved folder or model YAML")


class TextSet(Strict):
    name: str = Field(min_length=1)
    block_len: int = Field(default=512, gt=0, description="tokens per scored block (targets shifted by one)")
    max_blocks: int = Field(default=64, gt=0)
    seed: int = 0


class ShakespeareSet(TextSet):
    """The held-out Shakespeare works (``archzoo.data.HELDOUT_WORKS``), never trained on."""

    type: Literal["shakespeare"] = "shakespeare"
    edition: Literal["all", "modern", "folio"] = "modern"


class FileSet(TextSet):
    """A user's text: a .txt / .jsonl / .parquet file or folder (``archzoo.data.load_texts``)."""

    type: Literal["file"] = "file"
    path: str = Field(min_length=1)
    text_field: str = "text"


class HeldoutSet(TextSet):
    """A built-in held-out set of ``archzoo.data.heldout`` that no training source contains: ``python-docs``
    (the Python documentation's topic help, human-written, shipped with Python), ``teacher-heldout``
    (the teacher's samples from the held-out prompts) or ``teacher-long-heldout`` (the teacher's long samples,
    up to 1,536 tokens, from the held-out prompts of the plain-text registers); the teacher's sets are
    generated once and cached, and need the teacher's tokenizer."""

    type: Literal["heldout"] = "heldout"
    set: Literal["python-docs", "teacher-heldout", "teacher-long-heldout"]


class RandomTokensSet(TextSet):
    """Uniformly random token ids: no text needed (tiny suites whose teacher has no tokenizer)."""

    type: Literal["random_tokens"] = "random_tokens"


def all_positive(v: list[int], what: str) -> list[int]:
    """A list-of-sizes field's check: every entry >= 1, or one error naming the field's unit."""
    if any(n < 1 for n in v):
        raise ValueError(f"every {what} must be >= 1, got {v}")
    return v


class MQARSet(Strict):
    """Multi-query associative recall (``archzoo.data.mqar_examples``) at several numbers of pairs."""

    type: Literal["mqar"] = "mqar"
    name: str = Field(default="mqar", min_length=1)
    num_kv_pairs: list[int] = Field(default=[4, 8, 16], min_length=1)
    seq_len: int = Field(default=256, gt=0)
    n_examples: int = Field(default=64, gt=0)
    seed: int = 0

    @field_validator("num_kv_pairs")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        return all_positive(v, "number of pairs")


EvalSet = Annotated[ShakespeareSet | FileSet | HeldoutSet | RandomTokensSet | MQARSet, Field(discriminator="type")]


class DecodeSettings(Strict):
    """The decode measurement. ``batch_size`` x ``prompt_len`` is the one the speed chart plots;
    ``batch_sizes`` x ``prompt_lens``, when given, are also measured (each combination once, the
    primary among them), each a column of the report."""

    batch_size: int = Field(default=64, gt=0)
    prompt_len: int = Field(default=4096, gt=0)
    batch_sizes: list[int] = Field(default_factory=list, description="more batch sizes (with prompt_lens)")
    prompt_lens: list[int] = Field(default_factory=list, description="more prompt lengths (with batch_sizes)")
    new_tokens: int = Field(default=128, gt=0)
    warmup: int = Field(default=1, ge=0)
    repeat: int = Field(default=1, gt=0)
    compile: bool | None = Field(default=None, description="passed to generate(compile=...); null: on for CUDA")
    decode_linear: Literal[LINEARS] = Field(
        default="cublas",
        description="how the step's projections run (archzoo bench decode --decode-linear): cublas (F.linear), "
        "kernel (the decode GEMV and its epilogues), kernel-pdl (the same with programmatic dependent launch), "
        "kernel-pdl-l2 (kernel-pdl, and each GEMV of 8 rows or more prefetching its weights into L2), "
        "kernel-pdl-m16 (kernel-pdl with x's rows in tiles of 16 a program), kernel-pdl-l2-m16 (both), "
        "auto (the GEMV up to layers.fused.AUTO_MAX_ROWS rows a step, cuBLAS above), auto-qkv (auto, and Q|K|V "
        "with RoPE and the cache write as one GEMV kernel up to 64 rows)",
    )

    @field_validator("batch_sizes", "prompt_lens")
    @classmethod
    def _positive_sizes(cls, v: list[int]) -> list[int]:
        if any(n < 1 for n in v):
            raise ValueError(f"every size must be >= 1, got {v}")
        return v

    def grid(self) -> list[tuple[int, int]]:
        """Every (batch, prompt) to measure, the primary first."""
        bs = self.batch_sizes or [self.batch_size]
        ps = self.prompt_lens or [self.prompt_len]
        extra = [(b, p) for b in bs for p in ps if (b, p) != (self.batch_size, self.prompt_len)]
        return [(self.batch_size, self.prompt_len), *extra]


class SpeculativeSettings(Strict):
    """Each student as a speculative draft for the teacher (``generate(draft=...)``): greedy, on prompts cut
    from the first text evaluation set; the acceptance rate and tokens per verify step go in its row."""

    num_draft_tokens: int = Field(default=4, gt=0)
    prompts: int = Field(default=8, gt=0, description="prompts: the first blocks of the first text set")
    prompt_len: int = Field(default=64, gt=0, description="tokens per prompt (at most the set's block_len + 1)")
    new_tokens: int = Field(default=64, gt=0)


class Suite(Strict):
    name: str = Field(default="suite", min_length=1)
    teacher: TeacherSpec
    models: list[ModelSpec] = Field(min_length=1)
    eval: list[EvalSet] = Field(min_length=1)
    tokenizer: Literal["teacher", "bytes"] = Field(
        default="teacher", description="teacher: the teacher's own; bytes: UTF-8 bytes as ids 0-255, EOS 256"
    )
    context_lengths: list[int] = Field(default=[4096, 32768], min_length=1)
    cache_context: int = Field(default=4096, gt=0, description="the length at which bytes per token are taken")
    decode: DecodeSettings | None = Field(
        default_factory=DecodeSettings, description="the decode measurement; null: none here (see decode_from)"
    )
    decode_from: str | None = Field(
        default=None,
        description="with decode: null, the results.json (or its folder) of another run of the same models whose "
        "decode / prefill speeds, peak memory and draft acceptance the report takes, by model name and config: "
        "speeds measured side by side in one run, quality measured where the trained weights are",
    )
    speculative: SpeculativeSettings | None = Field(
        default_factory=SpeculativeSettings, description="students as drafts for the teacher; null: not measured"
    )
    device: str = "cuda"
    dtype: str = "bf16"
    seed: int = Field(default=0, description="seeds random weights of model YAMLs, prompts and random sets")
    report_quality: bool = Field(
        default=True,
        description="false: a speed run of random weights; the report leaves out the quality tables and charts "
        "(still measured: a suite needs a text set) and shows cache size against speed. Not part of the settings "
        "hash: it changes what is shown, not what is measured",
    )

    @field_validator("teacher", mode="before")
    @classmethod
    def _teacher_shorthand(cls, v: Any) -> Any:
        return {"source": v} if isinstance(v, str) else v

    @field_validator("dtype")
    @classmethod
    def _dtype(cls, v: str) -> str:
        if v not in DTYPES:
            raise ValueError(f"unknown dtype {v!r}; expected one of {', '.join(DTYPES)}")
        return v

    @field_validator("context_lengths")
    @classmethod
    def _lengths(cls, v: list[int]) -> list[int]:
        return all_positive(v, "context length")

    @model_validator(mode="after")
    def _names(self) -> Suite:
        seen = {self.teacher.name}
        for i, m in enumerate(self.models):
            if m.name in seen:
                raise field_error(f"models.{i}.name", f"{m.name!r} is used twice (the teacher counts)")
            seen.add(m.name)
        sets = set()
        for i, e in enumerate(self.eval):
            if e.name in sets:
                raise field_error(f"eval.{i}.name", f"{e.name!r} is used twice")
            sets.add(e.name)
        if not any(not isinstance(e, MQARSet) for e in self.eval):
            raise field_error("eval", "needs at least one text set (shakespeare, file or random_tokens)")
        if self.decode_from is not None and self.decode is not None:
            raise field_error("decode_from", "give decode (measure here) or decode_from (take it from a run), not both")
        return self

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    def settings_hash(self) -> str:
        """Everything but the model list: a row measured under another hash is measured again."""
        return _hash(self.model_dump(mode="json", exclude={"models", "name", "report_quality"}))


def load_suite(src: str | Path | dict[str, Any]) -> Suite:
    """A suite YAML (path) or dict -> ``Suite``; ``ConfigError`` naming the file and the field path."""
    data, source = read_mapping(src, "a suite YAML path or a dict")
    try:
        return Suite.model_validate(data)
    except ValidationError as e:
        path, msg = first_error(e)
        raise ConfigError(msg, path, source) from None


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]
