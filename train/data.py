"""DistillDataModule: token rows from the run's data config, in an order fixed by the seed.

Rows are (block_len + 1) tokens overlapping their neighbour by one (``archzoo.data.pack_blocks``):
inputs ``rows[:, :-1]``, next-token targets ``rows[:, 1:]``. Each source of the run
(``archzoo.data.sources``: the Shakespeare training split, text the teacher generates, local text /
JSONL / Parquet files or a saved ``datasets`` folder, tokenised with the teacher's tokenizer;
``random`` and ``mqar`` for tests) is packed on its own, and a ``val_fraction`` of its rows, chosen
by the seed, is held out for validation (``val_rows_by_source``; ``max_val_blocks`` is shared by the
sources). The training rows of a mixture are one pass of the weighted mixture
(``archzoo.data.sources.mix_rows``: as many rows as the sources hold together, each source's share
in proportion to its weight); a single source's rows are used as they are.

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

from archzoo.data.sources import describe, mix_rows, source_blocks, split_heldout

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
    def __init__(self, run: RunConfig, tokenizer=None, vocab_size: int | None = None, teacher=None):
        super().__init__()
        self.run_cfg = run
        self.cfg = run.data
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self.teacher = teacher  # for teacher_generated sources
        self.train_rows: torch.Tensor | None = None
        self.val_rows: torch.Tensor | None = None
        self.val_rows_by_source: dict[str, torch.Tensor] = {}

    # ------------------------------------------------------------------ rows

    def setup(self, stage: str | None = None) -> None:
        if self.train_rows is not None:
            return
        cfg = self.cfg
        specs = cfg.source_list()
        cap = None if cfg.max_val_blocks is None else max(1, cfg.max_val_blocks // len(specs))
        train, val = [], {}
        for i, spec in enumerate(specs):
            rows = self._source_rows(i, spec)  # (N_i, block_len + 1)
            try:
                t, v = split_heldout(rows, cfg.val_fraction, cap, cfg.seed)
            except ValueError as e:
                raise self._error(i, spec, "data", str(e)) from None
            train.append(t)
            val[(spec.name or f"{i}:{spec.source}") if cfg.mixture else "val"] = v
        self.val_rows_by_source = val
        self.val_rows = torch.cat(list(val.values()))
        self.train_rows = mix_rows(train, [s.weight for s in specs], cfg.seed)

    def _error(self, i: int, spec, single_path: str, message: str):
        if not self.cfg.mixture:
            return self.run_cfg.error(single_path, message)
        return self.run_cfg.error(f"data.sources.{i}", f"{describe(spec)}: {message}")

    def _source_rows(self, i: int, spec) -> torch.Tensor:
        cfg = self.cfg
        if spec.source not in ("random", "mqar") and self.tokenizer is None:
            field = "data.source" if not cfg.mixture else f"data.sources.{i}.source"
            raise self.run_cfg.error(field, f"source {spec.source!r} needs a teacher with a tokenizer")
        if spec.source in ("random", "mqar") and self.vocab_size is None:
            raise ValueError(f"source {spec.source!r} needs vocab_size")
        if spec.source == "teacher_generated" and self.teacher is None:
            raise self._error(i, spec, "data.source", "source 'teacher_generated' needs the teacher (pass teacher=)")
        try:
            return source_blocks(
                spec,
                cfg.block_len,
                tokenizer=self.tokenizer,
                vocab_size=self.vocab_size,
                teacher=self.teacher,
                base_dir=self.run_cfg._base_dir,
            )
        except ValueError as e:
            if spec.source == "mqar":
                raise self._error(i, spec, "data.mqar_kv_pairs", str(e)) from None
            if "do not fill one block" in str(e):
                raise self._error(i, spec, "data.block_len", str(e)) from None
            if not cfg.mixture:
                raise
            raise self._error(i, spec, "", str(e)) from None
        except FileNotFoundError as e:
            if not cfg.mixture:
                raise
            raise self._error(i, spec, "", str(e)) from None

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

    @property
    def val_names(self) -> list[str]:
        """One name per validation loader: the sources of a mixture (``val/<name>/...`` metrics), else none."""
        return list(self.val_rows_by_source) if self.cfg.mixture else []

    def val_dataloader(self) -> DataLoader | list[DataLoader]:
        """The held-out rows; for a mixture one loader per source (its held-out split), so each source's
        perplexity and KL are logged apart, besides the totals."""
        trainer = self.trainer
        n_val = self.val_rows.shape[0]
        if 0 < n_val < trainer.world_size:
            raise self.run_cfg.error(
                "data.val_fraction", f"{n_val} validation blocks cannot be shared by {trainer.world_size} devices"
            )
        parts = list(self.val_rows_by_source.values()) if self.cfg.mixture else [self.val_rows]
        loaders = [
            DataLoader(
                _Rows(rows[trainer.global_rank :: trainer.world_size]),
                batch_size=self.cfg.batch_size,
                shuffle=False,
                num_workers=self.cfg.num_workers,
            )
            for rows in parts
        ]
        return loaders if self.cfg.mixture else loaders[0]
