"""Corpora, tokenisation + packing, data sources and mixtures, held-out sets, MQAR, passkey retrieval, and
teacher-generated text.

Sources (``archzoo.data.sources``): ``SourceConfig``, ``parse_sources``, ``source_blocks``,
``split_heldout``, ``mix_rows``. Held-out sets (``archzoo.data.heldout``): ``heldout_blocks`` for the
text sets of ``HELDOUT_TEXT_SETS`` or a path, ``mqar_set`` for ``HELDOUT_MQAR``.
"""

from .calibration import calibration_ids, resolve_calibration
from .generate import generate_texts, teacher_corpus, write_jsonl
from .heldout import HELDOUT_MQAR, HELDOUT_TEXT_SETS, heldout_blocks, heldout_texts, mqar_set, python_docs_texts
from .mqar import mqar_accuracy, mqar_examples
from .passkey import passkey_accuracy, passkey_examples
from .prompts import Prompt, format_prompt, prompt_set
from .shakespeare import HELDOUT_WORKS, fetch_shakespeare, shakespeare_texts, split_files
from .sources import SourceConfig, mix_rows, parse_sources, source_blocks, split_heldout
from .text import load_texts, mean_nll, pack_blocks, perplexity, text_blocks, tokenize_texts

__all__ = [
    "HELDOUT_MQAR",
    "HELDOUT_TEXT_SETS",
    "HELDOUT_WORKS",
    "Prompt",
    "SourceConfig",
    "calibration_ids",
    "fetch_shakespeare",
    "format_prompt",
    "generate_texts",
    "heldout_blocks",
    "heldout_texts",
    "load_texts",
    "mean_nll",
    "mix_rows",
    "mqar_accuracy",
    "mqar_examples",
    "mqar_set",
    "pack_blocks",
    "passkey_accuracy",
    "passkey_examples",
    "parse_sources",
    "perplexity",
    "prompt_set",
    "python_docs_texts",
    "resolve_calibration",
    "shakespeare_texts",
    "source_blocks",
    "split_files",
    "split_heldout",
    "teacher_corpus",
    "text_blocks",
    "tokenize_texts",
    "write_jsonl",
]
