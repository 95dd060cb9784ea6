"""Held-out quality of a student against its teacher: ``archzoo.eval.evaluate``, which the benchmark
report uses too (the library holds it, so the report needs no trainer)."""

from __future__ import annotations

from archzoo.eval import evaluate

__all__ = ["evaluate"]
