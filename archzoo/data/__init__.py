"""Corpora, tokenisation + packing, held-out evaluation, MQAR, and teacher-generated text."""

from .generate import generate_texts, write_jsonl
from .mqar import mqar_accuracy, mqar_examples
from .shakespeare import HELDOUT_WORKS, fetch_shakespeare, shakespeare_texts, split_files
from .text import load_texts, mean_nll, pack_blocks, perplexity, text_blocks, tokenize_texts

__all__ = [
    "HELDOUT_WORKS",
    "fetch_shakespeare",
    "load_texts",
    "generate_texts",
    "mean_nll",
    "mqar_accuracy",
    "mqar_examples",
    "pack_blocks",
    "perplexity",
    "shakespeare_texts",
    "split_files",
    "text_blocks",
    "tokenize_texts",
    "write_jsonl",
]
