"""DistillDataModule: token rows from the run's data config, in an order fixed by the seed.

Rows are (block_len + 1) tokens overlapping their neighbour by one (``archzoo.data.pack_blocks``):
inputs ``rows[:, :-1]``, next-token targets ``rows[:, 1:]``. Sources: the built-in Shakespeare
corpus (its ``train`` split only; the held-out works are kept for evaluation), local text /
JSONL / Parquet files or a saved ``datasets`` folder (``archzoo.data.load_texts``), tokenised
with the teacher's tokenizer; and ``random`` (uniform tokens of the student's vocabulary, for
tests). A ``val_fraction`` of the rows, chosen by the seed, is held out for validation.

Training order is a pure function of (seed, micro-batch index, rank): the row stream is one
seeded permutation of the training rows per pass, and micro-batch k on rank r of W takes stream
positions ``(k W + r) B ... (k W + r + 1) B``. The loader is rebuilt after a checkpoint is
restored and starts at micro-batch ``global_step x accumulate_grad_batches``, so a resumed run
sees exactly the batches an uninterrupted one would, with any number of workers.
"""

from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .config import RunConfig


class _Rows(Dataset):
    def __init__(self, rows: torch.Tensor):
        self.rows = rows

    def __len__(self) -> int:
        return self.rows.shape[0]

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.rows[i]


class StreamBatchSampler(Sampler[list[int]]):
    """Micro-batches ``start .. stop - 1`` of the seeded row stream for one rank (see module docstring).

    ``len()`` is ``stop``, the run's total number of micro-batches, not ``stop - start``: Lightning
    counts the batches of a resumed epoch from where the checkpoint left off.
    """

    def __init__(self, n_rows: int, batch_size: int, seed: int, rank: int, world: int, start: int, stop: int):
        if n_rows < 1:
            raise ValueError(f"n_rows must be >= 1, got {n_rows}")
        self.n, self.B, self.seed, self.rank, self.world = n_rows, batch_size, seed, rank, world
        self.start, self.stop = start, stop
        self._epoch, self._perm = -1, torch.empty(0, dtype=torch.long)

    def _index(self, p: int) -> int:
        epoch, i = divmod(p, self.n)
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch + 1)
            self._epoch, self._perm = epoch, torch.randperm(self.n, generator=g)
        return int(self._perm[i])

    def batch(self, k: int) -> list[int]:
        first = (k * self.world + self.rank) * self.B
        return [self._index(p) for p in range(first, first + self.B)]

    def __iter__(self):
        for k in range(self.start, self.stop):
            yield self.batch(k)

    def __len__(self) -> int:
        return self.stop


class _StepLoader(DataLoader):
    """A DataLoader whose position is set from the restored global step when it is built, so it has
    no state of its own to save (the empty state_dict tells Lightning it resumes mid-epoch exactly)."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class DistillDataModule(L.LightningDataModule):
    def __init__(self, run: RunConfig, tokenizer=None, vocab_size: int | None = None):
        super().__init__()
        self.run_cfg = run
        self.cfg = run.data
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self.train_rows: torch.Tensor | None = None
        self.val_rows: torch.Tensor | None = None

    # ------------------------------------------------------------------ rows

    def setup(self, stage: str | None = None) -> None:
        if self.train_rows is not None:
            return
        rows = self._all_rows()  # (N, block_len + 1)
        n = rows.shape[0]
        n_val = 0
        if self.cfg.val_fraction > 0:
            n_val = max(1, round(self.cfg.val_fraction * n))
            if self.cfg.max_val_blocks is not None:
                n_val = min(n_val, self.cfg.max_val_blocks)
        if n - n_val < 1:
            raise self.run_cfg.error(
                "data", f"{n} blocks of {self.cfg.block_len + 1} tokens leave none for training after validation"
            )
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(self.cfg.seed))
        self.val_rows, self.train_rows = rows[perm[:n_val]], rows[perm[n_val:]]

    def _all_rows(self) -> torch.Tensor:
        cfg = self.cfg
        if cfg.source == "random":
            if self.vocab_size is None:
                raise ValueError("source 'random' needs vocab_size")
            g = torch.Generator().manual_seed(cfg.seed)
            return torch.randint(self.vocab_size, (cfg.n_blocks, cfg.block_len + 1), generator=g)
        if cfg.source == "mqar":
            # Zoology's MQAR in the student's vocabulary; rows of block_len + 1 tokens.
            from archzoo.data import mqar_examples

            if self.vocab_size is None:
                raise ValueError("source 'mqar' needs vocab_size")
            try:
                inputs, _ = mqar_examples(
                    cfg.n_blocks, self.vocab_size, cfg.block_len + 1, cfg.mqar_kv_pairs, seed=cfg.seed
                )
            except ValueError as e:
                raise self.run_cfg.error("data.mqar_kv_pairs", str(e)) from None
            return inputs
        if self.tokenizer is None:
            raise self.run_cfg.error("data.source", f"source {cfg.source!r} needs a teacher with a tokenizer")
        from archzoo import data

        if cfg.source == "shakespeare":
            texts = data.shakespeare_texts("train", cfg.edition)  # never the held-out works
        else:
            texts = data.load_texts(self.run_cfg.resolve_path(cfg.path), cfg.text_field, cfg.split)
        tokens = self._tokenize(texts, data)
        try:
            return data.pack_blocks(tokens, cfg.block_len)
        except ValueError as e:
            raise self.run_cfg.error("data.block_len", str(e)) from None

    def _tokenize(self, texts: list[str], data) -> torch.Tensor:
        if self.cfg.max_tokens is None:
            return data.tokenize_texts(texts, self.tokenizer)
        parts, count = [], 0
        for text in texts:  # documents in order until max_tokens
            ids = data.tokenize_texts([text], self.tokenizer)
            parts.append(ids)
            count += ids.numel()
            if count >= self.cfg.max_tokens:
                break
        return torch.cat(parts)[: self.cfg.max_tokens]

    # --------------------------------------------------------------- loaders

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        accum = self.run_cfg.trainer.accumulate_grad_batches
        sampler = StreamBatchSampler(
            self.train_rows.shape[0],
            self.cfg.batch_size,
            self.cfg.seed,
            rank=trainer.global_rank,
            world=trainer.world_size,
            start=trainer.global_step * accum,
            stop=self.run_cfg.total_steps * accum,
        )
        return _StepLoader(
            _Rows(self.train_rows),
            batch_sampler=sampler,
            num_workers=self.cfg.num_workers,
            persistent_workers=self.cfg.num_workers > 0,
        )

    def val_dataloader(self) -> DataLoader:
        trainer = self.trainer
        n_val = self.val_rows.shape[0]
        if 0 < n_val < trainer.world_size:
            raise self.run_cfg.error(
                "data.val_fraction", f"{n_val} validation blocks cannot be shared by {trainer.world_size} devices"
            )
        rows = self.val_rows[trainer.global_rank :: trainer.world_size]
        return DataLoader(_Rows(rows), batch_size=self.cfg.batch_size, shuffle=False, num_workers=self.cfg.num_workers)
