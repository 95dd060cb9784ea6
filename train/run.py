"""``run_distill``: one run YAML -> a Lightning fit writing everything under ``output_dir``.

output_dir/run.yaml                 the run config as given
output_dir/checkpoints/last.ckpt    full training state (``--resume`` continues from it); one
                                    file, gathered by rank 0 under FSDP too
output_dir/student/                 the student, ``save_pretrained`` (every export.every_n_steps
                                    and at the end; written atomically by rank 0, full tensors)
output_dir/logs/metrics.csv         train/loss, train/kl, train/ce, train/aux, train/align,
                                    train/tokens_per_s, train/model_tflops, train/lr, val/* (CSVLogger)
output_dir/logs/tensorboard/        with logging.tensorboard: true

Throughput (``StepThroughput``): each optimizer step is timed from its first micro-batch's start to
the end of its optimizer step (synchronised on CUDA), before the checkpoint and export callbacks
run; loading the batch, validation and checkpoint / export writes fall outside. ``train/tokens_per_s``
is the step's tokens over all devices / that time; ``train/model_tflops`` the step's model FLOPs
(``DistillModule.model_flops_per_token``: 6 N_student + 2 N_teacher per KD token) / that time. The
run's summary (``run_distill``'s metrics, the line ``archzoo distill`` prints) holds the medians of
both over the run's steps and ``train/model_flops``, the model FLOPs of all its steps.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import statistics
import sys
import time
import warnings
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import lightning as L
import torch
import yaml
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, RichProgressBar
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.model_summary import get_human_readable_count

from archzoo.config import ConfigError
from archzoo.data import resolve_calibration
from archzoo.saving import atomic_write

from .config import RunConfig, load_run_config
from .data import DistillDataModule
from .module import DistillModule
from .sharding import FSDP2Strategy, is_sharded, save_student

RESUME_KEYS = ("teacher", "student", "data", "seed")  # must not change between a run and its resumption


class ExportStudent(Callback):
    """``student.save_pretrained(path)`` every ``every_n_steps`` optimizer steps and at the end of training.

    Rank 0 writes; a sharded student is first gathered to full tensors, which every rank takes part in."""

    def __init__(self, path: Path, every_n_steps: int | None):
        self.path, self.every = path, every_n_steps
        self._last: int | None = None

    def _export(self, trainer: L.Trainer, module: DistillModule) -> None:
        module.check_finite_now()  # a diverged student is not exported (sync_every > 1)
        if trainer.global_step != self._last and (trainer.is_global_zero or is_sharded(module.student)):
            save_student(module.student, self.path, trainer.is_global_zero)
        self._last = trainer.global_step

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if self.every and step > 0 and step % self.every == 0 and step != self._last:
            self._export(trainer, module)

    def on_train_end(self, trainer, module) -> None:
        self._export(trainer, module)


class FinishRun(Callback):
    """At the last optimizer step: validate (via ``should_stop``, which makes Lightning run the
    validation loop for this batch) and save ``last.ckpt`` if the periodic checkpoint missed it."""

    def __init__(self, last: Path, every_n_steps: int):
        self.last, self.every = last, every_n_steps
        self._done = False

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if self._done or step < trainer.max_steps:
            return
        self._done = True
        trainer.should_stop = True
        if step % self.every:  # ModelCheckpoint saves at multiples of every, right after this hook
            trainer.save_checkpoint(self.last, weights_only=False)


class AtomicCheckpointIO(TorchCheckpointIO):
    """torch.save to a temporary file beside the target, then os.replace: a crash never leaves a
    half-written last.ckpt where a good one was."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp")
        super().save_checkpoint(checkpoint, tmp, storage_options)
        os.replace(tmp, path)


class StepThroughput(Callback):
    """``train/tokens_per_s`` and ``train/model_tflops`` of every optimizer step, and the run's medians.

    It must run before the callbacks that write checkpoints or the student (``build_trainer`` puts it
    first; Lightning runs ModelCheckpoint last), so that a step's time ends before their writes. Under
    gradient accumulation a step's time is the sum over its micro-batches.

    ``sync_every`` > 1 (``speed.sync_every``): the host waits for the device only at the end of a window of
    that many steps (or earlier, at a step that checkpoints or exports, so their writes stay outside the
    timing); each window logs its average and counts once in the medians."""

    def __init__(self, sync_every: int = 1, stops: tuple[int | None, ...] = ()) -> None:
        self.sync_every = sync_every
        self.stops = tuple(s for s in stops if s)  # steps at multiples of these close a window
        self._open = False
        self._steps = 0
        self.tokens_per_s: list[float] = []  # one per optimizer step of this fit (per window with sync_every > 1)
        self.model_tflops: list[float] = []
        self.model_flops = 0.0
        self._start = 0.0
        self._step = -1
        self._time = 0.0
        self._tokens = 0
        self._flops = 0.0

    @staticmethod
    def _sync(module) -> None:
        if module.device.type == "cuda":
            torch.cuda.synchronize(module.device)

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if not self._open:
            self._sync(module)
            self._start = time.perf_counter()
            self._open = True
        self._step = trainer.global_step

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        tokens = batch[:, :-1].numel() * trainer.world_size
        stage = module.run_cfg.stage_at(self._step)[0]
        self._tokens += tokens
        self._flops += module.model_flops_per_token(stage) * tokens
        if self.sync_every == 1:  # every micro-batch timed on its own: gaps between them are not counted
            self._sync(module)
            self._time += time.perf_counter() - self._start
            self._open = False
        if trainer.global_step == self._step:  # accumulating: the optimizer step has not run yet
            return
        self._steps += 1
        step = trainer.global_step
        if self.sync_every > 1:
            closes = self._steps >= self.sync_every or step >= (trainer.max_steps or step)
            if not (closes or any(step % s == 0 for s in self.stops)):
                return
            self._sync(module)
            self._time = time.perf_counter() - self._start
            self._open = False
        self._steps = 0
        tokens_per_s = self._tokens / max(self._time, 1e-9)
        tflops = self._flops / max(self._time, 1e-9) / 1e12
        self.tokens_per_s.append(tokens_per_s)
        self.model_tflops.append(tflops)
        self.model_flops += self._flops
        module.log("train/tokens_per_s", tokens_per_s, batch_size=batch.shape[0])
        module.log("train/model_tflops", tflops, batch_size=batch.shape[0])
        self._time, self._tokens, self._flops = 0.0, 0, 0.0

    def summary(self) -> dict[str, float]:
        """Medians over this fit's optimizer steps, and the model FLOPs of all of them."""
        if not self.tokens_per_s:
            return {}
        return {
            "train/tokens_per_s": statistics.median(self.tokens_per_s),
            "train/model_tflops": statistics.median(self.model_tflops),
            "train/model_flops": self.model_flops,
        }


class RunSummary(Callback):
    """What the run trains, printed once at the start in place of Lightning's model summary (whose FLOPs
    column needs an ``example_input_array`` and read 0): parameters and model FLOPs per token."""

    @rank_zero_only
    def on_fit_start(self, trainer, module) -> None:
        run, student, teacher = module.run_cfg, module.student, module.teacher
        tokens = run.data.batch_size * run.data.block_len * trainer.world_size * run.trainer.accumulate_grad_batches

        def count(n: float) -> str:
            return get_human_readable_count(int(n)).strip()

        stages = ", ".join(f"{st.name} {count(module.model_flops_per_token(i))}" for i, st in enumerate(run.stages))
        print(
            f"student {type(student).__name__}: {count(student.num_parameters())} parameters; "
            f"teacher {type(teacher).__name__}: {count(teacher.num_parameters())} (frozen, not checkpointed)\n"
            f"model FLOPs per token: {stages} (kd: 6 N_student + 2 N_teacher, N = matmul parameters); "
            f"{tokens} tokens per optimizer step",
            flush=True,
        )


class _NoLightningTips(logging.Filter):
    """Drops Lightning's advertising lines ("💡 Tip: ... try installing litlogger / litmodels ...")."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip")


def _quiet_lightning_tips() -> None:
    log = logging.getLogger("lightning.pytorch.utilities.rank_zero")  # Lightning's rank_zero_info
    if not any(isinstance(f, _NoLightningTips) for f in log.filters):
        log.addFilter(_NoLightningTips())


class PrintProgress(Callback):
    """One line per ``log_every_n_steps`` on stdout, for logs that are not a terminal."""

    KEYS = {
        "align": ("train/loss", "train/align", "train/lr", "train/tokens_per_s"),
        "kd": ("train/loss", "train/kl", "train/ce", "train/aux", "train/lr", "train/tokens_per_s"),
    }

    def __init__(self, every: int, total: int):
        self.every, self.total, self._last = every, total, -1

    @staticmethod
    def _fmt(metrics: dict[str, Any], keys) -> str:
        out = []
        for k in keys:
            if k in metrics:
                out.append(f"{k.split('/', 1)[1]} {float(metrics[k]):.4g}")
        return "  ".join(out)

    def on_train_start(self, trainer, module) -> None:
        self._last = trainer.global_step  # nothing to print before the first step (of this run or resumption)

    @rank_zero_only
    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step != self._last and (step % self.every == 0 or step == self.total):
            self._last = step
            stage = module.run_cfg.stages[module.run_cfg.stage_at(max(step - 1, 0))[0]]
            line = self._fmt(trainer.callback_metrics, self.KEYS[stage.type])
            print(f"step {step}/{self.total} [{stage.name}]  {line}", flush=True)

    @rank_zero_only
    def on_validation_end(self, trainer, module) -> None:
        if trainer.sanity_checking:
            return
        keys = [k for k in trainer.callback_metrics if k.startswith("val/")]
        print(f"step {trainer.global_step} validation  {self._fmt(trainer.callback_metrics, keys)}", flush=True)


# --------------------------------------------------------------------------- build


def build_student(run: RunConfig, teacher: torch.nn.Module) -> torch.nn.Module:
    """The student as ``student.init`` says: converted from the teacher, random, or a checkpoint."""
    import archzoo

    init = run.student.init
    cfg = run.student_config
    if init == "random":
        torch.manual_seed(run.seed)
        student = archzoo.build_model(cfg)
    elif init == "convert":
        try:
            from archzoo.convert import convert
        except ImportError as e:
            raise run.error("student.init", f"init: convert needs archzoo.convert, which failed to import: {e}") from e
        if "layers" in run.student.convert:
            raise run.error("student.convert.layers", "set student.teacher_layers instead (align stages use it too)")
        options = dict(run.student.convert)
        if run.student.teacher_layers is not None:
            options["layers"] = list(run.student.teacher_layers)
        try:  # a calibration spec becomes its token ids (archzoo.data.calibration), as the benchmark builds them
            options = resolve_calibration(options, teacher)
        except ValueError as e:
            raise run.error("student.convert.calibration", str(e)) from None
        try:
            student = convert(teacher, cfg, **options)
        except ValueError as e:
            raise run.error("student", f"cannot convert the teacher into this student: {e}") from None
    else:
        student = archzoo.from_pretrained(run.resolve_path(init))
        if cfg is not None and student.cfg.to_dict() != cfg.to_dict():
            raise run.error("student.config", f"differs from the config of the init checkpoint {init!r}; omit one")
    student = student.float().train()
    if getattr(student, "tokenizer", None) is None:
        student.tokenizer = getattr(teacher, "tokenizer", None)
    return student


def default_layer_map(run: RunConfig, n_teacher: int, n_student: int) -> list[int] | None:
    """Teacher layer of each student layer where the run does not list them (None: cannot tell)."""
    if n_teacher == n_student:
        return list(range(n_student))
    if run.student.init == "convert":
        from archzoo.convert import default_layer_map as convert_map

        return convert_map(n_teacher, n_student)
    return None


def _loggers(run: RunConfig, out: Path, resume_step: int | None):
    csv_logger = CSVLogger(save_dir=str(out), name="logs", version="")
    if resume_step is not None:
        _replay_metrics(csv_logger, out / "logs" / "metrics.csv", resume_step)
    loggers = [csv_logger]
    if run.logging.tensorboard:
        from lightning.pytorch.loggers import TensorBoardLogger

        loggers.append(TensorBoardLogger(save_dir=str(out), name="logs", version="tensorboard"))
    return loggers


def _check_environment(run: RunConfig) -> None:
    """What the run needs beyond archzoo's own dependencies, checked before the teacher loads."""
    if run.logging.tensorboard and not (find_spec("tensorboard") or find_spec("tensorboardX")):
        raise run.error("logging.tensorboard", "needs the tensorboard package (pip install tensorboard)")


def _replay_metrics(logger: CSVLogger, path: Path, resume_step: int) -> None:
    """Keep the rows a resumed run had logged up to its checkpoint in the one metrics.csv."""
    if not path.is_file():
        return
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    path.unlink()  # CSVLogger would delete it anyway, with a warning
    for row in rows:
        step = int(row.pop("step"))
        if step >= resume_step:
            continue
        metrics = {k: float(v) for k, v in row.items() if v not in ("", None)}
        if metrics:
            logger.log_metrics(metrics, step)


def _progress(run: RunConfig) -> tuple[list[Callback], bool]:
    want = run.trainer.enable_progress_bar
    tty = sys.stdout.isatty()
    if want is None:
        want = tty
    if want and tty:
        return [RichProgressBar()], True
    if want:
        return [], True  # Lightning's default (tqdm) bar
    return [PrintProgress(run.trainer.log_every_n_steps, run.total_steps)], False


def build_trainer(run: RunConfig, out: Path, resume_step: int | None = None) -> L.Trainer:
    t = run.trainer
    every = run.checkpoint.every_n_steps
    ckpt = ModelCheckpoint(
        dirpath=out / "checkpoints",
        every_n_train_steps=every,
        save_top_k=0,
        monitor=None,
        save_last=True,
        enable_version_counter=False,
    )
    progress, bar = _progress(run)
    callbacks = [
        # first: a step's time ends before the callbacks below write anything
        StepThroughput(run.speed.sync_every, (every, run.export.every_n_steps)),
        RunSummary(),
        ckpt,
        FinishRun(out / "checkpoints" / "last.ckpt", every),
        ExportStudent(out / "student", run.export.every_n_steps),
        *progress,
    ]
    kw: dict[str, Any] = dict(
        max_steps=run.total_steps,
        max_epochs=-1,
        accelerator=t.accelerator,
        devices=t.devices,
        num_nodes=t.num_nodes,
        strategy=FSDP2Strategy() if t.strategy == "fsdp" else t.strategy,
        precision=t.precision,
        accumulate_grad_batches=t.accumulate_grad_batches,
        gradient_clip_val=t.gradient_clip_val,
        gradient_clip_algorithm=t.gradient_clip_algorithm,
        log_every_n_steps=t.log_every_n_steps,
        num_sanity_val_steps=t.num_sanity_val_steps,
        deterministic=t.deterministic,
        default_root_dir=str(out),
        logger=_loggers(run, out, resume_step),
        callbacks=callbacks,
        enable_progress_bar=bar,
        enable_model_summary=False,  # RunSummary prints parameters and model FLOPs instead
        use_distributed_sampler=False,  # DistillDataModule shards by rank itself
        plugins=[AtomicCheckpointIO()],
    )
    if t.val_check_interval is not None:
        kw["val_check_interval"] = t.val_check_interval
    if t.limit_val_batches is not None:
        kw["limit_val_batches"] = t.limit_val_batches
    if run.data.val_fraction == 0:
        kw["limit_val_batches"] = 0
    _quiet_lightning_tips()
    return L.Trainer(**kw)


# ------------------------------------------------------------------------------ run


def _check_output_dir(run: RunConfig, out: Path, resume: bool) -> Path | None:
    last = out / "checkpoints" / "last.ckpt"
    saved = out / "run.yaml"
    if not resume:
        if last.exists():  # a run.yaml alone is an attempt that stopped before its first checkpoint
            raise ConfigError(
                "already holds a run; pass --resume to continue it, or choose another --output-dir", source=str(out)
            )
        return None
    if not last.exists():
        raise ConfigError("no checkpoint to resume from (checkpoints/last.ckpt is missing)", source=str(out))
    if saved.exists():
        before = yaml.safe_load(saved.read_text()) or {}
        now = _run_dict(run)
        changed = [k for k in RESUME_KEYS if before.get(k) != now.get(k)]
        if changed:
            raise ConfigError(
                f"{', '.join(changed)} differ from the run being resumed ({saved}); start a new --output-dir",
                source=run.source,
            )
    return last


def _run_dict(run: RunConfig) -> dict[str, Any]:
    return run.model_dump(mode="json")


def run_distill(config_path: str | Path | dict | RunConfig, output_dir: str | Path, resume: bool = False) -> dict:
    """Distil the run's student from its teacher; returns the final metrics and the output paths.

    Everything a user can get wrong is checked before anything is written: the run config and the
    student's model config, the output folder, the teacher (loaded), the student (built or converted),
    the stages against both models and the data (loaded and packed). Only then does rank 0 create
    ``output_dir`` and write ``run.yaml``.

    ``resume=True`` continues exactly from ``output_dir/checkpoints/last.ckpt`` (same data order,
    optimizer and schedule state); the run config's teacher, student, data and seed must not change.
    """
    run = load_run_config(config_path)
    _check_environment(run)
    out = Path(output_dir)
    if rank_zero_only.rank == 0:
        ckpt_path = _check_output_dir(run, out, resume)
    else:  # a DDP / FSDP child re-running the command: rank 0 has checked and prepared output_dir
        ckpt_path = out / "checkpoints" / "last.ckpt" if resume else None
    start_step = 0
    if ckpt_path is not None:
        start_step = int(torch.load(ckpt_path, map_location="cpu", weights_only=False, mmap=True)["global_step"])

    L.seed_everything(run.seed, workers=True, verbose=False)
    module, data = _prepare(run, start_step)
    if rank_zero_only.rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        if not resume:
            (out / "run.yaml").write_text(yaml.safe_dump(_run_dict(run), sort_keys=False))
    trainer = build_trainer(run, out, start_step if ckpt_path is not None and rank_zero_only.rank == 0 else None)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)` is deprecated.*")
        t0 = time.perf_counter()
        trainer.fit(module, datamodule=data, ckpt_path=str(ckpt_path) if ckpt_path else None)
        fit_seconds = time.perf_counter() - t0
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}  # the last step's values
    (throughput,) = (cb for cb in trainer.callbacks if isinstance(cb, StepThroughput))
    metrics.update(throughput.summary())  # medians over the steps, total model FLOPs
    result = {
        "metrics": metrics,
        "global_step": trainer.global_step,
        "is_global_zero": trainer.is_global_zero,
        "student": str(out / "student"),
        "checkpoint": str(out / "checkpoints" / "last.ckpt"),
        "metrics_csv": str(out / "logs" / "metrics.csv"),
    }
    if trainer.is_global_zero:
        _write_summary(out, run, result, fit_seconds, start_step, trainer.world_size)
    return result


SUMMARY = "summary.json"


def _write_summary(
    out: Path, run: RunConfig, result: dict, fit_seconds: float, start_step: int, world_size: int
) -> None:
    """``output_dir/summary.json`` (atomic): what the run ended with, for reports that read run folders
    (``archzoo bench`` suites give a distilled student's tokens and training time from it). A resumed run
    appends its fit to ``fits``; ``fit_seconds`` sums them (validation, checkpoint and export writes included,
    process start-up, data preparation and the teacher's loading not)."""
    path = out / SUMMARY
    fits = []
    if start_step > 0 and path.is_file():
        try:
            fits = json.loads(path.read_text()).get("fits", [])
        except (json.JSONDecodeError, AttributeError):
            fits = []
    fits.append({"from_step": start_step, "to_step": result["global_step"], "seconds": fit_seconds})
    per_step = run.data.batch_size * run.data.block_len * run.trainer.accumulate_grad_batches * world_size
    summary = {
        "global_step": result["global_step"],
        "tokens_per_step": per_step,
        "tokens_trained": result["global_step"] * per_step,
        "fit_seconds": sum(f["seconds"] for f in fits),
        "fits": fits,
        "metrics": result["metrics"],
    }
    atomic_write(path, json.dumps(summary, indent=2) + "\n")


def _prepare(run: RunConfig, start_step: int) -> tuple[DistillModule, DistillDataModule]:
    """The teacher, the student, the module and the data rows, each checked; nothing is written.

    A source that cannot be read (a teacher file transformers or gguf refuses, a JSONL line that is
    not JSON) becomes a ``ConfigError`` naming the run YAML's field, so the CLI prints one line."""
    from archzoo.teacher import resolve_teacher

    try:
        teacher = resolve_teacher(run.teacher_src())
    except ConfigError:
        raise
    except (ValueError, ImportError) as e:
        raise run.error("teacher", f"{run.teacher}: {e}") from None
    student = build_student(run, teacher)
    layer_map = default_layer_map(run, teacher.cfg.n_layers, student.cfg.n_layers)
    module = DistillModule(run, teacher, student, layer_map, start_step=start_step)
    data = DistillDataModule(
        run, tokenizer=getattr(teacher, "tokenizer", None), vocab_size=student.cfg.vocab_size, teacher=teacher
    )
    try:
        data.setup("fit")  # load, tokenise and pack now (fit's own setup call then finds the rows ready)
    except ConfigError:
        raise
    except (ValueError, FileNotFoundError) as e:
        raise run.error("data.path" if run.data.path is not None else "data", str(e)) from None
    return module, data
