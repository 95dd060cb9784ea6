"""Held-out evaluation sets of several registers, none of them drawn from a training source's documents.

Named text sets (``HELDOUT_TEXT_SETS``), scored with ``archzoo.eval.evaluate(teacher, model, blocks)``:

- ``teacher-heldout``: the teacher's own samples from the held-out part of the built-in prompt set
  (``archzoo.data.prompts``), which no training corpus is generated from; cached like any
  teacher-generated corpus (``archzoo.data.teacher_corpus``).
- ``shakespeare-heldout``: the four held-out Shakespeare works (``archzoo.data.HELDOUT_WORKS``).
- ``python-docs``: human-written modern technical prose, the topic help of the Python documentation
  as CPython ships it in the standard library (``pydoc_data/topics.py``, the text of ``help("if")``
  and the other topics, about 465k characters): present with every Python, written by people, and
  in no training source.
- any other name is taken as a path: a user's text / JSONL / Parquet file or folder (``load_texts``).

MQAR (Zoology's multi-query associative recall) at sequence length 256 with 16, 32 and 64 key-value
pairs: ``HELDOUT_MQAR`` names them (``mqar-16``, ``mqar-32``, ``mqar-64``); ``mqar_set`` builds one,
scored with ``archzoo.eval.mqar_accuracy``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .mqar import mqar_examples
from .text import load_texts, pack_blocks, tokenize_texts

HELDOUT_TEXT_SETS: tuple[str, ...] = ("teacher-heldout", "shakespeare-heldout", "python-docs")
HELDOUT_MQAR: dict[str, int] = {"mqar-16": 16, "mqar-32": 32, "mqar-64": 64}
MQAR_SEQ_LEN = 256
MQAR_VOCAB = 8192  # Zoology's default vocabulary for MQAR
MQAR_SEED = 1234  # different from any training seed a run YAML uses by default
TEACHER_HELDOUT_TOKENS = 131_072


def python_docs_texts() -> list[str]:
    """The topic help of the Python documentation (``pydoc_data.topics``), one text per topic, by name."""
    try:
        from pydoc_data.topics import topics
    except ImportError:  # a few distributions strip it from the standard library
        raise ValueError(
            "the held-out set 'python-docs' needs pydoc_data.topics from Python's standard library, "
            "which this Python lacks"
        ) from None
    return [topics[k].replace("\r\n", "\n") for k in sorted(topics)]


def heldout_texts(
    name: str | Path, teacher=None, seed: int = 0, size_tokens: int = TEACHER_HELDOUT_TOKENS
) -> list[str]:
    """The documents of a held-out text set: a name of ``HELDOUT_TEXT_SETS`` or a path.

    ``teacher-heldout`` needs ``teacher`` (an ``ArchZooLM`` with its tokenizer) and samples
    ``size_tokens`` tokens with ``seed`` (cached).
    """
    if name == "teacher-heldout":
        if teacher is None:
            raise ValueError("the held-out set 'teacher-heldout' needs the teacher")
        from .generate import teacher_corpus

        return load_texts(teacher_corpus(teacher, size_tokens, seed=seed, split="heldout"))
    if name == "shakespeare-heldout":
        from .. import data as package  # looked up on the package, so tests can stand in for the download

        return package.shakespeare_texts("heldout")
    if name == "python-docs":
        return python_docs_texts()
    path = Path(name).expanduser()
    if not path.exists():
        raise ValueError(
            f"unknown held-out set {str(name)!r}; expected one of {', '.join(HELDOUT_TEXT_SETS)} or a file / folder"
        )
    return load_texts(path)


def heldout_blocks(
    name: str | Path,
    tokenizer,
    block_len: int = 512,
    max_blocks: int | None = None,
    teacher=None,
    seed: int = 0,
) -> torch.Tensor:
    """A held-out text set -> token rows (N, block_len + 1) for ``archzoo.eval.evaluate``.

    ``max_blocks`` keeps that many rows spread evenly over the set (not only its first document).
    """
    tokens = tokenize_texts(heldout_texts(name, teacher, seed), tokenizer)
    rows = pack_blocks(tokens, block_len)
    if max_blocks is not None and rows.shape[0] > max_blocks:
        rows = rows[torch.linspace(0, rows.shape[0] - 1, max_blocks).round().long()]
    return rows


def mqar_set(
    name_or_pairs: str | int,
    vocab_size: int = MQAR_VOCAB,
    n_examples: int = 256,
    seq_len: int = MQAR_SEQ_LEN,
    seed: int = MQAR_SEED,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A held-out MQAR set (``mqar-16`` | ``mqar-32`` | ``mqar-64``, or a number of pairs): (inputs, targets)
    of shape (n_examples, seq_len), tokens below ``vocab_size`` (use ``min(MQAR_VOCAB, model vocab)``)."""
    if isinstance(name_or_pairs, str):
        if name_or_pairs not in HELDOUT_MQAR:
            raise ValueError(f"unknown MQAR set {name_or_pairs!r}; expected one of {', '.join(HELDOUT_MQAR)}")
        pairs = HELDOUT_MQAR[name_or_pairs]
    else:
        pairs = name_or_pairs
    return mqar_examples(n_examples, vocab_size, seq_len, pairs, seed=seed)


__all__ = [
    "HELDOUT_MQAR",
    "HELDOUT_TEXT_SETS",
    "MQAR_SEQ_LEN",
    "heldout_blocks",
    "heldout_texts",
    "mqar_set",
    "python_docs_texts",
]
