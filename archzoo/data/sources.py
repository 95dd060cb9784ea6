"""Data sources: the schema of one source, and the loader that turns it into token blocks.

A source is one corpus of a run's data (``data.sources`` in a run YAML, or the single-source form
``data.source``) or of a benchmark suite; the trainer and the report read the same schema here,
so neither imports the other. Source types:

- ``shakespeare``: the built-in Shakespeare training split (``edition``); never the held-out works.
- ``text`` | ``jsonl`` | ``parquet`` | ``datasets``: a user's local file or folder (``path``,
  ``text_field``, ``split``), read by ``archzoo.data.load_texts``.
- ``teacher_generated``: text the teacher samples from the built-in training prompts
  (``archzoo.data.teacher_corpus``; ``size_tokens``, ``seed``, the sampling settings and optionally
  ``registers``, the prompt registers to sample from), cached and regenerated where missing.
- ``random`` (uniform tokens, for tests) and ``mqar`` (Zoology's recall task): ``n_blocks`` rows.

The public API, small on purpose::

    spec = SourceConfig(source="jsonl", path="corpus.jsonl", weight=0.3)   # or parse_sources(list, ...)
    rows = source_blocks(spec, block_len, tokenizer=tok, teacher=teacher)  # (N, block_len + 1)
    train, heldout = split_heldout(rows, fraction=0.05, max_rows=64, seed=0)
    mixed = mix_rows([train_a, train_b], [0.7, 0.3], seed=0)               # one pass of the mixture

Blocks are rows of ``block_len + 1`` tokens as ``archzoo.data.pack_blocks`` cuts them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field, TypeAdapter, ValidationError, field_validator, model_validator

from ..config import ConfigError, Strict, field_error, first_error
from .prompts import check_registers
from .text import load_texts, pack_blocks, tokenize_texts

SourceType = Literal["shakespeare", "text", "jsonl", "parquet", "datasets", "teacher_generated", "random", "mqar"]
PATH_SOURCES = ("text", "jsonl", "parquet", "datasets")
SUFFIXES = {"text": ".txt", "jsonl": ".jsonl", "parquet": ".parquet"}


class SourceFields(Strict):
    """The keys of one source besides its type and weight (shared with the single-source run form)."""

    path: str | None = Field(default=None, description="file or folder for text | jsonl | parquet | datasets")
    text_field: str = Field(default="text", description="column / key holding the text (jsonl, parquet, datasets)")
    split: str | None = Field(default=None, description="split of a saved DatasetDict (source: datasets)")
    edition: Literal["all", "modern", "folio"] = Field(default="all", description="Shakespeare edition(s)")
    max_tokens: int | None = Field(default=None, gt=0, description="stop tokenising after this many tokens")
    seed: int = Field(default=0, description="seed of the source's own sampling (teacher_generated, random, mqar)")
    n_blocks: int = Field(default=256, gt=0, description="blocks of uniform random tokens or MQAR examples")
    mqar_kv_pairs: int = Field(default=8, gt=0, description="key-value pairs per MQAR example (source: mqar)")
    size_tokens: int = Field(default=20_000_000, gt=0, description="teacher_generated: tokens of the corpus")
    max_new_tokens: int = Field(default=256, gt=0, description="teacher_generated: tokens sampled per prompt")
    temperature: float = Field(default=1.0, gt=0, description="teacher_generated: sampling temperature")
    top_p: float | None = Field(default=0.95, gt=0, le=1, description="teacher_generated: nucleus sampling")
    generate_batch_size: int = Field(default=128, gt=0, description="teacher_generated: prompts decoded together")
    registers: list[str] | None = Field(
        default=None,
        description="teacher_generated: the prompt registers to sample from (archzoo.data.prompts.REGISTERS); "
        "default: the default set, which leaves out the extra registers",
    )

    @field_validator("registers")
    @classmethod
    def _known_registers(cls, v: list[str] | None) -> list[str] | None:
        return None if v is None else list(check_registers(v))  # REGISTERS order: the order written is no matter


def check_source_fields(source: str, fields: SourceFields) -> None:
    """The rules that tie a source's keys to its type (raised as field errors)."""
    needs_path = source in PATH_SOURCES
    if needs_path and fields.path is None:
        raise field_error("path", f"source {source!r} needs a path")
    if not needs_path and fields.path is not None:
        raise field_error("path", f"source {source!r} takes no path")
    if fields.split is not None and source != "datasets":
        raise field_error("split", f"only a saved `datasets` folder has splits, not source {source!r}")
    if fields.registers is not None and source != "teacher_generated":
        raise field_error("registers", f"only source 'teacher_generated' has prompt registers, not {source!r}")


class SourceConfig(SourceFields):
    """One weighted source of a mixture."""

    source: SourceType
    weight: float = Field(default=1.0, gt=0, description="share of the mixture, relative to the others' weights")
    name: str | None = Field(default=None, min_length=1, description="label in logs; default: describe(source)")

    @model_validator(mode="after")
    def _check(self) -> SourceConfig:
        check_source_fields(self.source, self)
        return self


def describe(spec: SourceConfig) -> str:
    """A short label naming the source: its name, else its type and path (``jsonl 'corpus.jsonl'``)."""
    if spec.name:
        return spec.name
    if spec.path is not None:
        return f"{spec.source} {spec.path!r}"
    if spec.source == "teacher_generated":
        chosen = f", registers {', '.join(spec.registers)}" if spec.registers is not None else ""
        return f"teacher_generated ({spec.size_tokens} tokens, seed {spec.seed}{chosen})"
    return spec.source


def parse_sources(value: Any, where: str = "sources", source_file: str | None = None) -> list[SourceConfig]:
    """A list of source mappings -> SourceConfigs; errors are ``ConfigError`` naming ``source_file`` and
    the field (``<where>.1.weight``) and, in the message, the source."""
    try:
        return TypeAdapter(list[SourceConfig]).validate_python(value)
    except ValidationError as e:
        path, msg = first_error(e)
        parts = path.split(".")
        if parts[0].isdigit() and isinstance(value, list):
            item = value[int(parts[0])]
            if isinstance(item, dict) and "source" in item:
                msg = f"{item.get('name') or item['source']}: {msg}"
        raise ConfigError(msg, ".".join(p for p in (where, path) if p), source_file) from None


def check_path(spec: SourceConfig, base_dir: Path | None = None) -> str | None:
    """What is wrong with a source's path (None if nothing): missing, or the wrong kind of file."""
    if spec.path is None:
        return None
    path = resolve(spec.path, base_dir)
    if not path.exists():
        return f"{spec.path!r}: no such file or folder"
    suffix = SUFFIXES.get(spec.source)
    if path.is_file() and path.suffix != suffix:
        want = f"a {suffix} file or a folder" if suffix else "a folder saved with datasets.save_to_disk"
        return f"source {spec.source!r} needs {want}, got {spec.path!r}"
    return None


def resolve(p: str, base_dir: Path | None) -> Path:
    path = Path(p).expanduser()
    return path if path.is_absolute() or base_dir is None else base_dir / path


# ----------------------------------------------------------------------------- loading


def source_texts(spec: SourceConfig, teacher=None, base_dir: Path | None = None) -> list[str]:
    """The documents of a text source (not ``random`` / ``mqar``)."""
    if spec.source == "shakespeare":
        from .. import data as package  # looked up on the package, so tests can stand in for the download

        return package.shakespeare_texts("train", spec.edition)  # never the held-out works
    if spec.source == "teacher_generated":
        if teacher is None:
            raise ValueError("source 'teacher_generated' needs the teacher")
        from .generate import teacher_corpus

        path = teacher_corpus(
            teacher,
            spec.size_tokens,
            seed=spec.seed,
            max_new_tokens=spec.max_new_tokens,
            batch_size=spec.generate_batch_size,
            temperature=spec.temperature,
            top_p=spec.top_p,
            registers=spec.registers,
        )
        return load_texts(path)
    if spec.source in PATH_SOURCES:
        return load_texts(resolve(spec.path, base_dir), spec.text_field, spec.split)
    raise ValueError(f"source {spec.source!r} has no texts")


def tokenize_limited(texts: list[str], tokenizer, max_tokens: int | None) -> torch.Tensor:
    """``tokenize_texts``, documents in order until ``max_tokens`` (then cut there)."""
    if max_tokens is None:
        return tokenize_texts(texts, tokenizer)
    parts, count = [], 0
    for text in texts:
        ids = tokenize_texts([text], tokenizer)
        parts.append(ids)
        count += ids.numel()
        if count >= max_tokens:
            break
    return torch.cat(parts)[:max_tokens] if parts else torch.zeros(0, dtype=torch.long)


def source_blocks(
    spec: SourceConfig,
    block_len: int,
    tokenizer=None,
    vocab_size: int | None = None,
    teacher=None,
    base_dir: Path | None = None,
) -> torch.Tensor:
    """One source -> token rows (N, block_len + 1), in stream order.

    ``tokenizer`` for text sources, ``vocab_size`` for ``random`` / ``mqar``, ``teacher`` for
    ``teacher_generated``; ``base_dir`` resolves relative paths. Raises ``ValueError`` (e.g. a source
    with fewer tokens than one block) and ``FileNotFoundError``.
    """
    if spec.source in ("random", "mqar"):
        if vocab_size is None:
            raise ValueError(f"source {spec.source!r} needs vocab_size")
        if spec.source == "random":
            g = torch.Generator().manual_seed(spec.seed)
            return torch.randint(vocab_size, (spec.n_blocks, block_len + 1), generator=g)
        from .mqar import mqar_examples

        inputs, _ = mqar_examples(spec.n_blocks, vocab_size, block_len + 1, spec.mqar_kv_pairs, seed=spec.seed)
        return inputs
    if tokenizer is None:
        raise ValueError(f"source {spec.source!r} needs a teacher with a tokenizer")
    tokens = tokenize_limited(source_texts(spec, teacher, base_dir), tokenizer, spec.max_tokens)
    return pack_blocks(tokens, block_len)


def split_heldout(
    rows: torch.Tensor, fraction: float, max_rows: int | None = None, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (train rows, held-out rows): ``round(fraction * N)`` rows (at least one when fraction > 0,
    at most ``max_rows``) chosen by a seeded permutation. Raises ``ValueError`` if none is left to train."""
    n = rows.shape[0]
    n_val = 0
    if fraction > 0:
        n_val = max(1, round(fraction * n))
        if max_rows is not None:
            n_val = min(n_val, max_rows)
    if n - n_val < 1:
        raise ValueError(f"{n} blocks of {rows.shape[1]} tokens leave none for training after validation")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return rows[perm[n_val:]], rows[perm[:n_val]]


def mix_counts(sizes: list[int], weights: list[float]) -> list[int]:
    """Rows each source contributes to one pass of the mixture: as many rows as all sources hold
    together, shared in proportion to the weights (at least one each)."""
    total, wsum = sum(sizes), sum(weights)
    return [max(1, round(total * w / wsum)) for w in weights]


def mix_rows(parts: list[torch.Tensor], weights: list[float], seed: int = 0) -> torch.Tensor:
    """One pass of a weighted mixture (see ``mix_counts``): a source with more rows than its share gives
    a seeded choice of them, one with fewer repeats (every row as often, give or take one); a single
    source is returned as is. The trainer shuffles the pass."""
    if len(parts) != len(weights) or not parts:
        raise ValueError(f"need one weight per source, got {len(parts)} sources and {len(weights)} weights")
    if any(w <= 0 for w in weights):
        raise ValueError(f"weights must be > 0, got {weights}")
    if len(parts) == 1:
        return parts[0]
    out = []
    for i, (rows, c) in enumerate(zip(parts, mix_counts([p.shape[0] for p in parts], weights), strict=True)):
        g = torch.Generator().manual_seed(seed * 1_000_003 + i)
        reps = -(-c // rows.shape[0])
        idx = torch.cat([torch.randperm(rows.shape[0], generator=g) for _ in range(reps)])[:c]
        out.append(rows[idx])
    return torch.cat(out)


__all__ = [
    "PATH_SOURCES",
    "SourceConfig",
    "SourceFields",
    "check_path",
    "check_source_fields",
    "describe",
    "mix_counts",
    "mix_rows",
    "parse_sources",
    "source_blocks",
    "source_texts",
    "split_heldout",
    "tokenize_limited",
]
