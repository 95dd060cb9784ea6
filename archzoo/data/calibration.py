"""Calibration tokens for converters that fit to activations (``archzoo.convert``'s ``calibration`` option).

A run YAML (``student.convert.calibration``) or a suite names them by a small spec, so that the trainer and the
benchmark report build the same tokens for the same student:

    calibration: {source: teacher_generated, tokens: 8192, block_len: 512, seed: 0}

``teacher_generated`` (default): text the teacher samples from the built-in training prompts
(``teacher_corpus``, cached like a training corpus; never the held-out prompts), the register the shipped
students train on. ``shakespeare``: the Shakespeare training split (no generation). Either way the text is a
training source's, never a held-out set's.
"""

from __future__ import annotations

from typing import Any

import torch

SOURCES = ("teacher_generated", "shakespeare")
KEYS = {"source": "teacher_generated", "tokens": 8192, "block_len": 512, "seed": 0}


def calibration_ids(spec: dict[str, Any], teacher) -> torch.Tensor:
    """The spec -> token ids (N, block_len), N = tokens // block_len, in stream order; ``ValueError`` naming the
    key that is wrong."""
    from .text import pack_blocks, tokenize_texts

    if not isinstance(spec, dict):
        raise ValueError(f"calibration must be a mapping like {KEYS}, got {spec!r}")
    unknown = sorted(set(spec) - set(KEYS))
    if unknown:
        raise ValueError(f"calibration: unknown key(s) {unknown}; expected {', '.join(KEYS)}")
    s = {**KEYS, **spec}
    if s["source"] not in SOURCES:
        raise ValueError(f"calibration.source: {s['source']!r}; expected one of {', '.join(SOURCES)}")
    for key in ("tokens", "block_len"):
        if isinstance(s[key], bool) or not isinstance(s[key], int) or s[key] < 1:
            raise ValueError(f"calibration.{key} must be a positive integer, got {s[key]!r}")
    if s["tokens"] < s["block_len"]:
        raise ValueError(f"calibration.tokens ({s['tokens']}) must be at least one block ({s['block_len']})")
    tokenizer = getattr(teacher, "tokenizer", None)
    if tokenizer is None:
        raise ValueError("calibration needs the teacher's tokenizer; this teacher has none")
    if s["source"] == "shakespeare":
        from .shakespeare import shakespeare_texts

        texts = shakespeare_texts("train", "modern")
    else:
        from .generate import teacher_corpus
        from .text import load_texts

        texts = load_texts(teacher_corpus(teacher, s["tokens"] + s["block_len"], seed=int(s["seed"])))
    n = s["tokens"] // s["block_len"]
    rows = pack_blocks(tokenize_texts(texts, tokenizer), s["block_len"])[:n, : s["block_len"]]
    if rows.shape[0] < n:
        raise ValueError(f"calibration: the {s['source']} text gives {rows.shape[0]} blocks, not {n}")
    return rows


def resolve_calibration(options: dict[str, Any], teacher) -> dict[str, Any]:
    """``archzoo.convert`` options with a ``calibration`` spec (a mapping) replaced by its token ids."""
    spec = options.get("calibration")
    if isinstance(spec, dict):
        return {**options, "calibration": calibration_ids(spec, teacher)}
    return options
