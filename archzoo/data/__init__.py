"""Corpora, tokenisation + packing, and held-out evaluation (MQAR comes later)."""

from .shakespeare import HELDOUT_WORKS, fetch_shakespeare, shakespeare_texts, split_files
from .text import load_texts, mean_nll, pack_blocks, perplexity, text_blocks, tokenize_texts

__all__ = [
    "HELDOUT_WORKS",
    "fetch_shakespeare",
    "load_texts",
    "mean_nll",
    "pack_blocks",
    "perplexity",
    "shakespeare_texts",
    "split_files",
    "text_blocks",
    "tokenize_texts",
]
