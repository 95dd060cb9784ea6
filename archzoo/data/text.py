"""Local text corpora -> token blocks, and held-out perplexity.

``load_texts`` reads what users bring: ``.txt`` (one document per file), ``.jsonl`` (one JSON
object per line, text in ``text_field``), ``.parquet`` (column ``text_field``; needs
``pyarrow``), a folder saved with ``datasets.Dataset.save_to_disk`` (needs ``datasets``), or a
plain folder of such files (read in file-name order).

``tokenize_texts`` concatenates documents into one token stream, an EOS token after each;
``pack_blocks`` cuts the stream into rows of ``block_len + 1`` tokens that overlap by one (row i
holds tokens ``i*block_len .. (i+1)*block_len``), so inputs are ``rows[:, :-1]``, targets
``rows[:, 1:]`` and every token of the stream after the first is a target exactly once. A seed
shuffles the rows reproducibly (``torch.Generator``, independent of the global RNG).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

TEXT_SUFFIXES = (".txt", ".jsonl", ".parquet")


def load_texts(src: str | Path | Sequence[str | Path], text_field: str = "text", split: str | None = None) -> list[str]:
    """Documents from a file, a folder or a list of them. ``split`` picks a split of a saved DatasetDict."""
    if isinstance(src, list | tuple):
        return [t for s in src for t in load_texts(s, text_field, split)]
    path = Path(src).expanduser()
    if not path.exists():
        raise FileNotFoundError(2, "no such file or folder", str(path))
    if path.is_dir():
        if (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file():
            return _load_saved_dataset(path, text_field, split)
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in TEXT_SUFFIXES)
        if not files:
            raise ValueError(f"{path}: no {', '.join(TEXT_SUFFIXES)} files and not a saved `datasets` folder")
        return [t for f in files for t in load_texts(f, text_field, split)]
    if path.suffix == ".txt":
        return [path.read_text(encoding="utf-8").replace("\r\n", "\n")]
    if path.suffix == ".jsonl":
        return _load_jsonl(path, text_field)
    if path.suffix == ".parquet":
        return _load_parquet(path, text_field)
    raise ValueError(f"{path}: unsupported file type {path.suffix!r}; expected one of {', '.join(TEXT_SUFFIXES)}")


def _load_jsonl(path: Path, text_field: str) -> list[str]:
    out = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not valid JSON: {e}") from None
            if not isinstance(record, dict) or text_field not in record:
                keys = ", ".join(record) if isinstance(record, dict) else type(record).__name__
                raise ValueError(f"{path}:{lineno}: no field {text_field!r} (has: {keys}); set text_field")
            if not isinstance(record[text_field], str):
                kind = type(record[text_field]).__name__
                raise ValueError(f"{path}:{lineno}: field {text_field!r} is {kind}, not str")
            out.append(record[text_field])
    return out


def _load_parquet(path: Path, text_field: str) -> list[str]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ImportError(f"{path}: reading Parquet needs pyarrow (pip install pyarrow)") from None
    names = pq.read_schema(path).names
    if text_field not in names:
        raise ValueError(f"{path}: no column {text_field!r} (has: {', '.join(names)}); set text_field")
    return [t for t in pq.read_table(path, columns=[text_field]).column(text_field).to_pylist() if t is not None]


def _load_saved_dataset(path: Path, text_field: str, split: str | None) -> list[str]:
    try:
        import datasets
    except ImportError:
        raise ImportError(f"{path}: reading a saved dataset needs `datasets` (pip install datasets)") from None
    ds = datasets.load_from_disk(str(path))
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise ValueError(f"{path}: pick a split with split=...; it has {', '.join(ds)} (got {split!r})")
        ds = ds[split]
    if text_field not in ds.column_names:
        raise ValueError(f"{path}: no column {text_field!r} (has: {', '.join(ds.column_names)}); set text_field")
    return [t for t in ds[text_field] if t is not None]


# ----------------------------------------------------------------------------- tokens


def tokenize_texts(texts: Iterable[str], tokenizer, add_eos: bool = True) -> torch.Tensor:
    """Documents -> one LongTensor stream (N,), each document followed by ``tokenizer.eos_token_id``."""
    eos = getattr(tokenizer, "eos_token_id", None)
    if add_eos and eos is None:
        raise ValueError("tokenizer has no eos_token_id; pass add_eos=False")
    texts = list(texts)
    if not texts:
        return torch.zeros(0, dtype=torch.long)
    ids = tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]
    stream = []
    for doc in ids:
        stream.extend(doc)
        if add_eos:
            stream.append(eos)
    return torch.tensor(stream, dtype=torch.long)


def pack_blocks(
    tokens: torch.Tensor, block_len: int, seed: int | None = None, max_blocks: int | None = None
) -> torch.Tensor:
    """A token stream (N,) -> rows (B, block_len + 1) overlapping by one token; the tail is dropped.

    ``seed`` shuffles the rows reproducibly (None keeps stream order); ``max_blocks`` keeps the
    first rows after shuffling.
    """
    if block_len < 1:
        raise ValueError(f"block_len must be >= 1, got {block_len}")
    if max_blocks is not None and max_blocks < 1:
        raise ValueError(f"max_blocks must be >= 1, got {max_blocks}")
    if tokens.dim() != 1:
        raise ValueError(f"tokens must be a 1-D stream, got shape {tuple(tokens.shape)}")
    n = (tokens.numel() - 1) // block_len
    if n < 1:
        raise ValueError(f"{tokens.numel()} tokens do not fill one block of {block_len} + 1")
    rows = tokens.unfold(0, block_len + 1, block_len)[:n]  # (B, block_len + 1)
    if seed is not None:
        rows = rows[torch.randperm(n, generator=torch.Generator().manual_seed(seed))]
    if max_blocks is not None:
        rows = rows[:max_blocks]
    return rows.contiguous()


def text_blocks(
    src: str | Path | Sequence[str | Path],
    tokenizer,
    block_len: int,
    seed: int | None = 0,
    max_blocks: int | None = None,
    text_field: str = "text",
    split: str | None = None,
) -> torch.Tensor:
    """``load_texts`` + ``tokenize_texts`` + ``pack_blocks``: a corpus -> LongTensor (B, block_len + 1)."""
    return pack_blocks(tokenize_texts(load_texts(src, text_field, split), tokenizer), block_len, seed, max_blocks)


# ------------------------------------------------------------------------ evaluation


@torch.no_grad()
def mean_nll(model, token_blocks: torch.Tensor, batch_size: int = 8) -> float:
    """Mean next-token negative log-likelihood (nats) over every target of (B, L + 1) blocks.

    ``model(ids)`` may return logits or an object with ``.logits`` (a transformers model).
    The model is put in eval mode for the call and restored afterwards.
    """
    if token_blocks.dim() != 2 or token_blocks.shape[1] < 2:
        raise ValueError(f"token_blocks must be (B, L + 1) with L >= 1, got {tuple(token_blocks.shape)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        for i in range(0, token_blocks.shape[0], batch_size):
            rows = token_blocks[i : i + batch_size].to(device)
            out = model(rows[:, :-1])
            logits = getattr(out, "logits", out)  # (b, L, V)
            logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # fp32 or wider, never narrower
            nll = F.cross_entropy(logits.flatten(0, 1), rows[:, 1:].flatten(), reduction="sum")
            total += nll.item()
            count += rows[:, 1:].numel()
    finally:
        model.train(was_training)
    return total / count


def perplexity(model, token_blocks: torch.Tensor, batch_size: int = 8) -> float:
    """exp(mean token NLL) over (B, L + 1) blocks; see ``mean_nll``."""
    return math.exp(mean_nll(model, token_blocks, batch_size))
