"""DistillModule: a frozen teacher, a trained student, stages chosen by the global step.

Stages (``RunConfig.stages``, in order, each ``steps`` optimizer steps long):

- ``align``: the teacher runs up to the deepest aligned layer with forward hooks recording each
  mixer's input (its block's ``mixer_norm`` output) and output. Each aligned student mixer gets
  the teacher's input to the teacher layer it maps to and regresses that layer's mixer output
  (normalised MSE summed over layers); no full student forward runs. LoLCATs' attention transfer
  (Zhang et al. 2024) and MOHAWK's hidden-state alignment (Bick et al. 2024).
- ``kd``: end-to-end logit distillation (chunked, train/losses.py) + ce_weight * next-token CE +
  aux_weight * ``student.aux_loss`` (MoE balance and z losses).

Each stage names its trainable parameters by globs on the student's parameter names; the others
get ``requires_grad=False`` for that stage. The optimizer holds every student parameter, so its
state survives stage changes and resumes exactly; a frozen parameter has no gradient and AdamW
leaves it alone.

The teacher is kept outside the module's registered children: it is not saved in checkpoints,
not wrapped by DDP or sharded by FSDP and not cast by Lightning's precision plugin; ``on_fit_start``
moves it to the student's device.

With ``trainer.strategy: fsdp``, ``configure_model`` shards the student with FSDP2 (train/sharding.py
says how and why); the steps below run unchanged on the shards.
"""

from __future__ import annotations

import math
import re
from fnmatch import fnmatchcase

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import nn

from archzoo.generation import allow_recompiles
from archzoo.layers import ForwardContext

from .config import AlignStage, KDStage, RunConfig
from .forward import final_hidden, teacher_mixer_io
from .losses import align_loss, distill_loss, fused_distill_loss
from .optim import param_groups
from .sharding import FSDP2Strategy, gathered, init_root, is_sharded, reshard, shard_student


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite; the run stops and the last checkpoint stays."""


def lr_factor(run: RunConfig, step: int) -> float:
    """Learning-rate multiplier of optimizer.lr at global optimizer step ``step``.

    Each stage restarts the schedule: linear warmup to the stage's peak (stage.lr or
    optimizer.lr), then cosine to min_lr_ratio x peak, WSD (constant, then a linear decay over
    the final ``decay_fraction`` of the stage; Hu et al. 2024), or constant.
    """
    opt = run.optimizer
    i, s = run.stage_at(step)
    stage = run.stages[i]
    peak = (stage.lr or opt.lr) / opt.lr
    warm = opt.warmup_steps if stage.warmup_steps is None else stage.warmup_steps
    n = stage.steps
    if s < warm:
        return peak * (s + 1) / (warm + 1)
    lo = opt.min_lr_ratio
    if opt.schedule == "constant":
        return peak
    if opt.schedule == "cosine":
        progress = (s - warm) / max(1, n - warm)
        return peak * (lo + (1 - lo) * 0.5 * (1 + math.cos(math.pi * progress)))
    decay_start = max(warm, n - math.ceil(opt.decay_fraction * n))  # wsd
    if s < decay_start:
        return peak
    progress = (s - decay_start + 1) / max(1, n - decay_start)
    return peak * (1 - (1 - lo) * progress)


def param_names(model: nn.Module) -> dict[int, list[str]]:
    """id(parameter) -> every name it has (tied weights have two)."""
    names: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), []).append(name)
    return names


class DistillModule(L.LightningModule):
    def __init__(
        self,
        run: RunConfig,
        teacher: nn.Module,
        student: nn.Module,
        default_layer_map: list[int] | None = None,
        start_step: int = 0,
    ):
        """``start_step``: the global step the fit starts from (a resumed run's checkpoint step)."""
        super().__init__()
        self.run_cfg = run
        self.start_step = start_step
        self.student = student
        teacher.eval().requires_grad_(False)
        object.__setattr__(self, "teacher", teacher)  # not a child module: see the module docstring
        self.layer_map = self._layer_map(default_layer_map)
        self._stage_idx: int | None = None
        self._flops: dict[int, float] = {}
        self._val: dict[str, torch.Tensor] = {}
        # speed.sync_every > 1: per set of logged parts, the first non-finite step and its values, on the device
        self._bad: dict[tuple[str, ...], tuple[torch.Tensor, torch.Tensor]] = {}
        self._trainable = [self._trainable_names(i) for i in range(len(run.stages))]

    # ------------------------------------------------------------------ setup

    def _layer_map(self, default: list[int] | None) -> list[int] | None:
        """Teacher layer of each student layer (None when no stage aligns layers).

        ``student.teacher_layers`` if the run lists them, else ``default`` (what the converter
        used), else the same index when both models have as many layers.
        """
        s_cfg, t_cfg = self.student.cfg, self.teacher.cfg
        needs = [i for i, s in enumerate(self.run_cfg.stages) if isinstance(s, AlignStage)]
        if not needs:
            return None
        layer_map = self.run_cfg.student.teacher_layers or default
        if layer_map is None and s_cfg.n_layers == t_cfg.n_layers:
            layer_map = list(range(s_cfg.n_layers))
        if layer_map is None:
            raise self.run_cfg.error(
                "student.teacher_layers",
                f"stage {self.run_cfg.stages[needs[0]].name!r} aligns layers, but the student has {s_cfg.n_layers} "
                f"and the teacher {t_cfg.n_layers}: list the teacher layer of each student layer",
            )
        bad = [k for k in layer_map if not 0 <= k < t_cfg.n_layers]
        if bad or len(layer_map) != s_cfg.n_layers:
            raise self.run_cfg.error(
                "student.teacher_layers",
                f"{list(layer_map)} must give one teacher layer in [0, {t_cfg.n_layers}) per student layer",
            )
        if s_cfg.d_model != t_cfg.d_model:
            raise self.run_cfg.error(
                f"stages.{needs[0]}",
                f"align needs the student's d_model ({s_cfg.d_model}) to equal the teacher's ({t_cfg.d_model})",
            )
        return list(layer_map)

    def _trainable_names(self, i: int) -> set[str]:
        """Names of the student parameters stage ``i`` trains (a tied weight trains if any of its names matches)."""
        globs = self.run_cfg.stages[i].trainable
        keep = set()
        for names in param_names(self.student).values():
            if any(fnmatchcase(n, g) for n in names for g in globs):
                keep.update(names)
        if not keep:
            raise self.run_cfg.error(f"stages.{i}.trainable", f"{globs} matches no student parameter")
        return keep

    def _enter_stage(self, i: int) -> None:
        if is_sharded(self.student):
            # A unit still gathered (the root after forward) would show its gathered parameters below
            # and keep them; resharded, the flags land on the shards and the next all-gather copies them.
            reshard(self.student)
        keep = self._trainable[i]
        for name, p in self.student.named_parameters():
            p.requires_grad_(name in keep)
        self._stage_idx = i

    def configure_model(self) -> None:
        """Under ``FSDP2Strategy``: enter the stage of ``start_step``, then shard the student over the
        data-parallel mesh (once).

        The stage comes first because a resumed checkpoint holds no optimizer state for parameters
        frozen so far, and torch's sharded optimizer loader (``set_optimizer_state_dict``) requires
        one for every parameter with ``requires_grad``. (Not so under DDP, which would leave a
        parameter frozen when it wraps the model out of its gradient all-reduce for good.)
        """
        if isinstance(self.trainer.strategy, FSDP2Strategy) and not is_sharded(self.student):
            self._enter_stage(self.run_cfg.stage_at(self.start_step)[0])
            shard_student(self.student, self.trainer.strategy.device_mesh["data_parallel"])

    def on_fit_start(self) -> None:
        for model in (self.student, self.teacher):  # decode copies from an earlier generate: memory, not state
            if hasattr(model, "release_fused"):
                model.release_fused()
        self.teacher.to(self.device, self.teacher_dtype())
        self._compile_blocks()

    def teacher_dtype(self) -> torch.dtype | None:
        """``speed.teacher_dtype`` as a torch dtype (auto: the precision's 16-bit type, else fp32)."""
        choice = self.run_cfg.speed.teacher_dtype
        if choice == "auto":
            precision = self.run_cfg.trainer.precision
            choice = "bf16" if precision.startswith("bf16") else "fp16" if precision.startswith("16") else "fp32"
        return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[choice]

    def _compile_blocks(self) -> None:
        """``speed.compile``: ``Module.compile`` on each student block, and on each teacher block when no
        stage aligns layers (the align stage hooks into the teacher's blocks every step, which a compiled
        block would recompile for); a run with an align stage compiles the teacher once no align stage is
        left (``_compile_teacher``). Parameter names do not change (in-place ``compile``)."""
        speed = self.run_cfg.speed
        if not speed.compile or getattr(self, "_compiled", False):
            return
        # Every block of both models runs one code object (``Block.forward``), and dynamo keeps at most
        # ``recompile_limit`` graphs per code object (8 by default) before it runs the rest eagerly, silently.
        # The kinds of block (a hybrid's mixers, a CLA leader and member, the first layer) times the modes they
        # run in (training, validation without gradients) times the two models can pass 8: a Jamba student
        # with a compiled teacher is about 10.
        allow_recompiles()  # 64, as generate does for its step shapes
        for block in self.student.blocks:
            block.compile(backend=speed.compile_backend)
        self._compiled = True
        self._compile_teacher(0)

    def _compile_teacher(self, i: int) -> None:
        """The teacher's blocks compiled from stage ``i`` on if no stage from ``i`` aligns layers (with
        ``speed.compile``; once). The shipped recipes align for 50 of 610 steps: before this the teacher's
        forward, a third of a KD step's FLOPs, stayed eager for the whole run."""
        if not self.run_cfg.speed.compile or getattr(self, "_teacher_compiled", False):
            return
        if any(isinstance(s, AlignStage) for s in self.run_cfg.stages[i:]):
            return
        for block in self.teacher.blocks:
            block.compile(backend=self.run_cfg.speed.compile_backend)
        self._teacher_compiled = True

    def on_train_start(self) -> None:
        if is_sharded(self.student):
            init_root(self.student)

    def on_validation_start(self) -> None:
        self.teacher.to(self.device, self.teacher_dtype())

    def _scaled_clipping(self) -> bool:
        """fp16 mixed precision (a gradient scaler) with gradient clipping on."""
        t = self.run_cfg.trainer
        return t.precision.startswith("16") and bool(t.gradient_clip_val)

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        """Clip here for a fused AdamW, whose step Lightning's mixed-precision plugin refuses to clip before
        ("performs unscaling of gradients internally"). Without a gradient scaler (bf16-mixed, 32-true) the
        gradients are already unscaled, so clipping them directly is what the plugin would do; fp16 with
        clipping never gets a fused AdamW (``configure_optimizers``)."""
        if not gradient_clip_val or not getattr(optimizer, "_step_supports_amp_scaling", False):
            return super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)
        params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        if gradient_clip_algorithm == "value":  # GradClipAlgorithmType is a str enum
            torch.nn.utils.clip_grad_value_(params, gradient_clip_val)
        else:
            torch.nn.utils.clip_grad_norm_(params, gradient_clip_val)

    def configure_optimizers(self):
        opt = self.run_cfg.optimizer
        groups = param_groups(self.student, opt.weight_decay, opt.no_decay)
        fused = self.run_cfg.speed.fused_adamw
        if fused is None:  # torch's fused kernel: one launch for all parameters, where it applies
            params = [p for g in groups for p in g["params"]]
            fused = bool(params) and all(p.is_cuda for p in params) and not is_sharded(self.student)
        if fused and self._scaled_clipping():  # an explicit fused_adamw: true is a config error (train/config.py)
            rank_zero_info("fused AdamW off: fp16 with gradient clipping needs the gradients unscaled before the step")
            fused = False
        optimizer = torch.optim.AdamW(groups, lr=opt.lr, betas=opt.betas, eps=opt.eps, fused=fused or None)
        # LambdaLR passes the optimizer step count, i.e. the global step.
        sched = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(self.run_cfg, step))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": sched, "interval": "step", "frequency": 1}}

    # --------------------------------------------------------------- training

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        i, _ = self.run_cfg.stage_at(self.global_step)
        if i != self._stage_idx:
            self._enter_stage(i)
        self._compile_teacher(i)  # once the align stages are over (a resumed run: at its first step)

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        """batch: (B, L + 1) token rows; inputs are rows[:, :-1], targets rows[:, 1:]."""
        i, _ = self.run_cfg.stage_at(self.global_step)
        stage = self.run_cfg.stages[i]
        if isinstance(stage, AlignStage):
            loss, parts = self.align_step(batch[:, :-1], self.run_cfg.align_layers(i, self.student.cfg.n_layers))
        else:
            loss, parts = self.kd_step(batch[:, :-1], batch[:, 1:], stage)
        logged = self._global_mean({"loss": loss.detach(), **parts})
        if self.run_cfg.speed.sync_every == 1:
            self._check_finite(logged, stage.name)
        else:
            self._watch_finite(logged)
        bs = batch.shape[0]
        for k, v in logged.items():
            self.log(f"train/{k}", v, prog_bar=k == "loss", batch_size=bs)
        self.log("train/stage", float(i), batch_size=bs)
        self.log("train/lr", self.lr_schedulers().get_last_lr()[0], batch_size=bs)
        return loss

    def kd_step(
        self, ids: torch.Tensor, targets: torch.Tensor, stage: KDStage
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """kl_weight * KD divergence + ce_weight * CE + aux_weight * aux. The CE is always computed
        (from the same logit chunks) and logged, also when its weight is 0."""
        use_kl = stage.kl_weight > 0
        h_t = None
        if use_kl:
            with torch.no_grad():
                h_t = final_hidden(self.teacher, ids).flatten(0, 1)  # (B T, d_t)
        h_s = final_hidden(self.student, ids).flatten(0, 1)  # (B T, d_s)
        aux = self.student.aux_loss
        if self.run_cfg.speed.fused_loss:
            fused = fused_distill_loss(
                h_s,
                self._student_head(),
                h_t,
                self.teacher.lm_head.weight if use_kl else None,
                targets.flatten(),
                temperature=stage.temperature,
                kl_weight=stage.kl_weight,
                ce_weight=stage.ce_weight,
                token_chunk=stage.token_chunk,
            )
            parts = {"aux": aux.detach(), "ce": fused.ce}
            if use_kl:
                parts["kl"] = fused.kl
            return stage.aux_weight * aux + fused.loss, parts
        out = distill_loss(
            h_s,
            self._student_head(),
            h_t,
            self.teacher.lm_head.weight if use_kl else None,
            targets.flatten(),
            kind=stage.kl,
            temperature=stage.temperature,
            beta=stage.jsd_beta,
            token_chunk=stage.token_chunk,
            vocab_chunk=stage.vocab_chunk,
        )
        loss = stage.aux_weight * aux
        parts = {"aux": aux.detach(), "ce": out.ce.detach()}
        if use_kl:
            loss = loss + stage.kl_weight * out.kl
            parts["kl"] = out.kl.detach()
        if stage.ce_weight > 0:
            loss = loss + stage.ce_weight * out.ce
        return loss, parts

    def align_step(self, ids: torch.Tensor, layers: list[int]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Sum over ``layers`` (student indices) of align_loss(student mixer(teacher input), teacher output)."""
        owners = self.student.state_owners
        run_layers = sorted(set(layers) | {owners[j] for j in layers})  # CLA members need their leader's K/V
        io = teacher_mixer_io(self.teacher, ids, sorted({self.layer_map[j] for j in run_layers}))
        ctx = ForwardContext(pos=0)
        pairs = []
        for j in run_layers:
            x_t, y_t = io[self.layer_map[j]]
            y_s = self.student.blocks[j].mixer(x_t, None, ctx)  # (B, T, d)
            if j in layers:
                pairs.append((y_s, y_t))
        # Each layer's normaliser, mean(y_t^2), over the global batch: the loss is then the same
        # function of the same rows on one device or on many.
        norms = torch.stack([y_t.to(torch.promote_types(y_t.dtype, torch.float32)).pow(2).mean() for _, y_t in pairs])
        if self._trainer is not None and self.trainer.world_size > 1:
            norms = self.trainer.strategy.reduce(norms, reduce_op="mean")
        loss = sum(align_loss(y_s, y_t, norm) for (y_s, y_t), norm in zip(pairs, norms, strict=True))
        return loss, {"align": loss.detach()}

    def _student_head(self) -> torch.Tensor:
        """The student's LM-head weight after ``final_hidden(self.student, ...)``: under FSDP the root
        unit keeps it gathered after forward (train/sharding.py), and gradients reach its shards."""
        return gathered(self.student.lm_head.weight, "student lm_head.weight")

    def _global_mean(self, values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``values`` (detached scalars) averaged over the ranks in one all-reduce. Every rank holds an
        equal share of the global batch and each value is a per-token (or per-layer) mean, so these are
        the values one device would log for the whole batch; a non-finite value on any rank stays so."""
        if self.trainer.world_size == 1:
            return values
        dtype = torch.promote_types(values["loss"].dtype, torch.float32)
        mean = self.trainer.strategy.reduce(torch.stack([v.to(dtype) for v in values.values()]), reduce_op="mean")
        return dict(zip(values, mean.unbind(), strict=True))

    def _check_finite(self, logged: dict[str, torch.Tensor], stage: str, step: int | None = None) -> None:
        """``logged``: the loss and its parts averaged over the ranks, so every rank stops together."""
        if not bool(torch.isfinite(logged["loss"])):
            detail = ", ".join(f"{k}={float(v):.4g}" for k, v in logged.items() if k != "loss")
            step = self.global_step if step is None else step
            raise NonFiniteLossError(
                f"non-finite training loss at step {step} (stage {stage!r}: {detail}); the run stops "
                "and the last checkpoint is kept. Lower the learning rate, raise gradient clipping, or check the data."
            )

    def _watch_finite(self, logged: dict[str, torch.Tensor]) -> None:
        """``speed.sync_every`` > 1: note the first step with a non-finite loss on the device (no host wait);
        ``check_finite_now`` raises for it at the window's end and before any checkpoint or export."""
        loss = logged["loss"]
        vals = torch.stack([v.detach().float().reshape(()) for v in logged.values()])
        keys = tuple(logged)  # the parts differ by stage type: one record per set of parts
        if keys not in self._bad:
            self._bad[keys] = (torch.full((), -1, dtype=torch.long, device=loss.device), torch.zeros_like(vals))
        step_t, bad_vals = self._bad[keys]
        first = ~torch.isfinite(loss) & (step_t < 0)
        self._bad[keys] = (torch.where(first, torch.full_like(step_t, self.global_step), step_t),
                           torch.where(first, vals, bad_vals))  # fmt: skip
        if (self.global_step + 1) % self.run_cfg.speed.sync_every == 0:
            self.check_finite_now()

    def check_finite_now(self) -> None:
        """Raise ``NonFiniteLossError`` for the first non-finite loss noted by ``_watch_finite`` (a host wait)."""
        found = [(int(step_t), keys, bad_vals) for keys, (step_t, bad_vals) in self._bad.items()]
        found = sorted(f for f in found if f[0] >= 0)
        if not found:
            return
        step, keys, bad_vals = found[0]
        stage = self.run_cfg.stages[self.run_cfg.stage_at(step)[0]].name
        self._check_finite({k: torch.tensor(v) for k, v in zip(keys, bad_vals.tolist(), strict=True)}, stage, step)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        self.check_finite_now()  # never write a checkpoint after a diverged step (sync_every > 1)

    def on_train_batch_end(self, outputs, batch: torch.Tensor, batch_idx: int) -> None:
        # Throughput and model FLOP/s are logged by train/run.py's StepThroughput callback, which times
        # each step before the checkpoint and export callbacks run.
        if self.device.type == "cuda":
            self.log(
                "train/peak_mem_gib", torch.cuda.max_memory_allocated(self.device) / 2**30, batch_size=batch.shape[0]
            )

    def model_flops_per_token(self, stage_index: int) -> float:
        """Model FLOPs of one training token in stage ``stage_index``, by the 6N rule: 2 FLOPs per
        parameter and token forward, 4 backward, N counting the parameters of matmuls (every block and
        the LM head; not the embedding lookup; attention scores and MoE routing left out, every MoE
        expert counted, so an upper bound for MoE students).

        - kd: 6 N_student + 2 N_teacher (the teacher's forward; left out when kl_weight is 0, as the
          teacher does not run then).
        - align: 2 x the teacher's blocks up to the deepest mapped layer (forward only) + 6 x the student
          mixers that run (the aligned ones and the CLA leaders they read).
        """
        if stage_index not in self._flops:
            stage = self.run_cfg.stages[stage_index]
            if isinstance(stage, KDStage):
                flops = 6.0 * _matmul_params(self.student)
                if stage.kl_weight > 0:
                    flops += 2.0 * _matmul_params(self.teacher)
            else:
                layers = self.run_cfg.align_layers(stage_index, self.student.cfg.n_layers)
                owners = self.student.state_owners
                run_layers = set(layers) | {owners[j] for j in layers}
                deepest = max(self.layer_map[j] for j in run_layers)
                teacher = sum(_n_params(self.teacher.blocks[i]) for i in range(deepest + 1))
                student = sum(_n_params(self.student.blocks[j].mixer) for j in run_layers)
                flops = 2.0 * teacher + 6.0 * student
            self._flops[stage_index] = flops
        return self._flops[stage_index]

    # ------------------------------------------------------------- validation

    def on_validation_epoch_start(self) -> None:
        self._val = {}

    def validation_step(self, batch: torch.Tensor, batch_idx: int, dataloader_idx: int = 0) -> None:
        """Sums of KL, student and teacher CE over the rows, taken over the first and the second half of each
        block's positions apart (the same work as over the whole: the losses are chunked by token anyway), so the
        second half's KL is logged too (``kl_far``)."""
        ids, tgt = batch[:, :-1], batch[:, 1:]
        L = ids.shape[1]
        h_t, h_s = final_hidden(self.teacher, ids), final_hidden(self.student, ids)  # (B, L, d)
        sums: dict[str, torch.Tensor] = {}
        for far, (a, b) in ((False, (0, L // 2)), (True, (L // 2, L))):
            if a == b:
                continue
            ht, targets = h_t[:, a:b].flatten(0, 1), tgt[:, a:b].flatten()
            s = distill_loss(h_s[:, a:b].flatten(0, 1), self._student_head(), ht, self.teacher.lm_head.weight, targets)
            t = distill_loss(ht, self.teacher.lm_head.weight, targets=targets)
            part = {
                "kl": s.kl * s.n_tokens,
                "ce": s.ce * s.n_targets,
                "ce_teacher": t.ce * t.n_targets,
                "tokens": torch.tensor(float(s.n_tokens), device=ids.device),
                "targets": torch.tensor(float(s.n_targets), device=ids.device),
            }
            if far:
                part["kl_far"], part["tokens_far"] = part["kl"], part["tokens"]
            for k, v in part.items():
                sums[k] = sums.get(k, 0) + v
        for k, v in sums.items():
            self._val[(dataloader_idx, k)] = self._val.get((dataloader_idx, k), 0) + v.detach().double()

    _VAL_SUMS = ("kl", "ce", "ce_teacher", "tokens", "targets", "kl_far", "tokens_far")

    def on_validation_epoch_end(self) -> None:
        """Totals over every held-out row as ``val/kl``, ``val/ppl``...; for a mixture also per source,
        ``val/<source>/kl``, ``val/<source>/ppl``, ``val/<source>/ppl_teacher``; ``val/kl_far``: the KL over the
        second half of each block's positions (a student that drifts from its teacher with distance shows it there
        first). Every rank reduces the same keys in the same order (zeros where its shard of a source was empty)."""
        if not self._val:
            return
        names = list(getattr(getattr(self.trainer, "datamodule", None), "val_names", None) or [])
        n_loaders = max(len(names), 1 + max(i for i, _ in self._val))
        dev = next(iter(self._val.values())).device
        zero = torch.zeros((), dtype=torch.float64, device=dev)
        per = [
            {
                k: self.trainer.strategy.reduce(self._val.get((i, k), zero).clone(), reduce_op="sum")
                for k in self._VAL_SUMS
            }
            for i in range(n_loaders)
        ]  # fmt: skip
        total = {k: sum(p[k] for p in per) for k in self._VAL_SUMS}
        self._log_val("val", total, prog_bar=True)
        if len(names) > 1:
            for name, sums in zip(names, per, strict=False):
                self._log_val(f"val/{metric_name(name)}", sums, prog_bar=False)

    def _log_val(self, prefix: str, tot: dict, prog_bar: bool) -> None:
        if float(tot["targets"]) == 0:
            return
        ce, ce_t = tot["ce"] / tot["targets"], tot["ce_teacher"] / tot["targets"]
        self.log(f"{prefix}/kl", (tot["kl"] / tot["tokens"]).float(), prog_bar=prog_bar, add_dataloader_idx=False)
        if float(tot["tokens_far"]) > 0:
            self.log(f"{prefix}/kl_far", (tot["kl_far"] / tot["tokens_far"]).float(), add_dataloader_idx=False)
        self.log(f"{prefix}/ce", ce.float(), add_dataloader_idx=False)
        self.log(f"{prefix}/ppl", ce.exp().float(), prog_bar=prog_bar, add_dataloader_idx=False)
        self.log(f"{prefix}/ppl_teacher", ce_t.exp().float(), add_dataloader_idx=False)


def metric_name(source: str) -> str:
    """A source's name as a metric path segment: letters, digits, '-', '_' and '.' kept, the rest '_'."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", source).strip("_") or "source"


def _n_params(m: nn.Module) -> int:
    """Parameters of ``m``, a shared (tied) one once; global sizes under FSDP (a DTensor's numel)."""
    return sum(p.numel() for p in m.parameters())


def _matmul_params(model: nn.Module) -> int:
    """Parameters a token's forward multiplies by: all but the embedding table, the LM head included (also
    when it is tied to the embedding: the lookup costs no FLOPs, the head's matmul does)."""
    return model.num_parameters(exclude_embeddings=True) + model.lm_head.weight.numel()
