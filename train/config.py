"""The distillation run YAML (``archzoo distill CONFIG``), validated with pydantic at the edge.

Unknown keys are errors (``extra="forbid"``); a stage's ``type`` (align | kd) picks its schema,
so a KD-only key on an align stage is reported as unknown. ``load_run_config`` turns every
failure into an :class:`archzoo.ConfigError` reading ``<file>: <field.path>: <message>``.

Relative paths inside a run YAML (the student config, a student checkpoint, data files, a
teacher folder) are resolved against the folder of the run YAML, so a run works from any
working directory; a run given as a dict resolves them against the working directory.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, PrivateAttr, ValidationError, field_validator, model_validator

from archzoo.config import (
    ConfigError,
    FieldError,
    ModelConfig,
    Strict,
    field_error,
    first_error,
    load_config,
    parse_layer_indices,
    read_mapping,
)
from archzoo.data.sources import SourceConfig, SourceFields, SourceType, check_path, check_source_fields

# ----------------------------------------------------------------------------- student


class StudentConfig(Strict):
    """The student's architecture and how its weights start."""

    config: str | dict[str, Any] | None = Field(
        default=None, description="model YAML path or inline dict; may be omitted when init is a checkpoint"
    )
    init: str = Field(
        default="convert",
        description="'convert' (archzoo.convert from the teacher), 'random', or an archzoo checkpoint folder",
    )
    convert: dict[str, Any] = Field(default_factory=dict, description="options passed to archzoo.convert")
    teacher_layers: list[int] | None = Field(
        default=None,
        description="teacher layer each student layer is converted from and aligned to; default: the same index",
    )

    @model_validator(mode="after")
    def _check(self) -> StudentConfig:
        if self.config is None and self.init in ("convert", "random"):
            raise field_error(
                "config", f"required when init is {self.init!r} (only a checkpoint carries its own config)"
            )
        if self.convert and self.init != "convert":
            raise field_error("convert", f"converter options need init: convert, not init: {self.init!r}")
        return self


# ------------------------------------------------------------------------------ stages


class _StageBase(Strict):
    name: str = Field(min_length=1)
    steps: int = Field(gt=0, description="optimizer steps of this stage")
    lr: float | None = Field(default=None, gt=0, description="peak learning rate; default optimizer.lr")
    warmup_steps: int | None = Field(default=None, ge=0, description="default optimizer.warmup_steps")

    @field_validator("trainable", check_fields=False)
    @classmethod
    def _globs(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("must list at least one parameter-name glob, e.g. ['*'] or ['blocks.*.mixer.*']")
        return v


class AlignStage(_StageBase):
    """Per-layer mixer alignment: each student mixer gets the teacher's input to that layer and
    regresses the teacher mixer's output (LoLCATs attention transfer, Zhang et al. 2024; MOHAWK's
    hidden-state alignment, Bick et al. 2024)."""

    type: Literal["align"] = "align"
    trainable: list[str] = Field(default_factory=lambda: ["blocks.*.mixer.*"])
    layers: list[int] | str | None = Field(default=None, description="student layers to align; default all")


class KDStage(_StageBase):
    """End-to-end logit distillation (Hinton et al. 2015) plus optional CE and the MoE aux loss."""

    type: Literal["kd"] = "kd"
    trainable: list[str] = Field(default_factory=lambda: ["*"])
    temperature: float = Field(default=1.0, gt=0)
    kl: Literal["forward", "reverse", "jsd"] = "forward"
    jsd_beta: float = Field(default=0.5, gt=0, lt=1, description="teacher weight of the JSD mixture")
    kl_weight: float = Field(default=1.0, ge=0)
    ce_weight: float = Field(default=0.0, ge=0)
    aux_weight: float = Field(default=1.0, ge=0, description="weight of student.aux_loss (MoE balance + z)")
    token_chunk: int = Field(default=1024, gt=0, description="tokens per loss chunk (bounds logit memory)")
    vocab_chunk: int | None = Field(default=None, gt=0, description="vocabulary chunk inside a token chunk")

    @model_validator(mode="after")
    def _check(self) -> KDStage:
        if self.kl_weight == 0 and self.ce_weight == 0:
            raise field_error("kl_weight", "kl_weight and ce_weight are both 0: the stage would train nothing")
        return self


StageConfig = Annotated[AlignStage | KDStage, Field(discriminator="type")]

# -------------------------------------------------------------------------------- rest


class DataConfig(SourceFields):
    """One source (``source`` and its keys at this level), or a weighted mixture (``sources``, each
    an ``archzoo.data.sources.SourceConfig``); then how the blocks are cut, batched and held out."""

    source: SourceType | None = Field(default=None, description="one source; or give `sources`")
    sources: list[SourceConfig] | None = Field(default=None, min_length=1, description="a weighted mixture")
    block_len: int = Field(default=512, ge=1, description="input tokens per packed block (rows hold block_len + 1)")
    batch_size: int = Field(default=8, gt=0, description="blocks per micro-batch per device")
    num_workers: int = Field(default=0, ge=0)
    val_fraction: float = Field(
        default=0.05, ge=0, lt=1, description="fraction of each source's blocks held out for validation"
    )
    max_val_blocks: int | None = Field(default=64, gt=0, description="validation blocks in all (shared by the sources)")

    @model_validator(mode="after")
    def _check(self) -> DataConfig:
        if self.source is None and self.sources is None:
            raise field_error("source", "give `source` (one corpus) or `sources` (a weighted mixture)")
        if self.sources is not None:
            if self.source is not None:
                raise field_error("sources", "give either `source` or `sources`, not both")
            for key in sorted(self.model_fields_set & set(SourceFields.model_fields) - {"seed"}):
                raise field_error(key, "with `sources`, set it inside each source")
            return self
        check_source_fields(self.source, self)
        return self

    def source_list(self) -> list[SourceConfig]:
        """The sources as a list: the single-source form is one source of weight 1 (its seed: ``seed``)."""
        if self.sources is not None:
            return list(self.sources)
        fields = {k: getattr(self, k) for k in SourceFields.model_fields}
        return [SourceConfig(source=self.source, **fields)]

    @property
    def mixture(self) -> bool:
        return self.sources is not None


class OptimizerConfig(Strict):
    """AdamW (Loshchilov & Hutter 2019); linear warmup then cosine, WSD (Hu et al. 2024) or constant,
    restarted at every stage."""

    name: Literal["adamw"] = "adamw"
    lr: float = Field(default=3e-4, gt=0)
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = Field(default=1e-8, gt=0)
    weight_decay: float = Field(default=0.01, ge=0)
    warmup_steps: int = Field(default=0, ge=0)
    schedule: Literal["cosine", "wsd", "constant"] = "cosine"
    min_lr_ratio: float = Field(default=0.1, ge=0, le=1)
    decay_fraction: float = Field(default=0.2, gt=0, le=1, description="wsd: final fraction of a stage spent decaying")
    no_decay: list[str] = Field(
        default_factory=list,
        description="globs of further parameters without weight decay, besides every 1-D parameter (norms, "
        "biases) and those the layers mark (_no_weight_decay / no_weight_decay_names)",
    )

    @field_validator("betas")
    @classmethod
    def _betas(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not all(0 <= b < 1 for b in v):
            raise ValueError(f"betas must lie in [0, 1), got {list(v)}")
        return v


PRECISIONS = ("32-true", "bf16-mixed", "16-mixed", "bf16-true", "16-true", "64-true")
# What Lightning's ModelParallelStrategy, which runs strategy 'fsdp', accepts: not 16-mixed (it would
# need a sharded gradient scaler) nor 64-true.
FSDP_PRECISIONS = ("32-true", "bf16-mixed", "bf16-true", "16-true")


class TrainerConfig(Strict):
    """Keys passed to ``lightning.Trainer`` (only these; anything else is an error)."""

    max_steps: int | None = Field(default=None, gt=0, description="default: the sum of the stages' steps")
    accelerator: str = "auto"
    devices: int | str | list[int] = "auto"
    num_nodes: int = Field(default=1, gt=0)
    strategy: str = Field(
        default="auto",
        description="auto, single_device, ddp* or fsdp (FSDP2: sharded student, full checkpoints; train/sharding.py)",
    )
    precision: Literal[PRECISIONS] = "32-true"  # type: ignore[valid-type]
    accumulate_grad_batches: int = Field(default=1, gt=0)
    gradient_clip_val: float | None = Field(default=1.0, gt=0)
    gradient_clip_algorithm: Literal["norm", "value"] = "norm"
    log_every_n_steps: int = Field(default=10, gt=0)
    val_check_interval: int | float | None = Field(default=None, gt=0, description="micro-batches or epoch fraction")
    limit_val_batches: int | float | None = Field(default=None, ge=0)
    num_sanity_val_steps: int = Field(default=0, ge=-1)
    deterministic: bool | None = None
    enable_progress_bar: bool | None = Field(default=None, description="default: a Rich bar when stdout is a TTY")

    @field_validator("strategy")
    @classmethod
    def _strategy(cls, v: str) -> str:
        from lightning.pytorch.strategies import StrategyRegistry

        # 'fsdp' here is FSDP2 (torch's fully_shard under Lightning's ModelParallelStrategy,
        # train/sharding.py), not the FSDP1 strategy Lightning registers under that name. The other
        # sharding strategies (fsdp_cpu_offload, deepspeed*) flatten the student's parameters, which
        # stage freezing by name and the student export rely on: they are refused, not half-run.
        known = ["auto", *StrategyRegistry.available_strategies()]
        supported = [s for s in known if s in ("auto", "single_device") or s.startswith("ddp")] + ["fsdp"]
        if v not in supported:
            if v in known:
                raise ValueError(
                    f"strategy {v!r} is not supported by the distillation trainer (for sharded training use "
                    f"'fsdp'); expected one of {', '.join(supported)}"
                )
            raise ValueError(f"strategy {v!r} is unknown; expected one of {', '.join(supported)}")
        return v

    @model_validator(mode="after")
    def _check(self) -> TrainerConfig:
        if self.strategy == "fsdp" and self.precision not in FSDP_PRECISIONS:
            raise field_error(
                "precision",
                f"{self.precision!r} does not work with strategy 'fsdp'; expected one of {', '.join(FSDP_PRECISIONS)}",
            )
        return self


class SpeedConfig(Strict):
    """Throughput levers of the trainer, each on its own so that each can be measured against its absence
    (``tools/device/train_levers.sh``). None of them changes what is trained beyond rounding."""

    compile: bool = Field(
        default=False, description="torch.compile each student and teacher block (regional: blocks alike share code)"
    )
    compile_backend: str = Field(default="inductor", description="torch.compile backend (tests: eager, aot_eager)")
    teacher_dtype: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        default="fp32",
        description="the frozen teacher's weights: fp32 (the default until the 16-bit teacher's effect on "
        "quality is measured), bf16, fp16, or auto: the precision's 16-bit type under *-mixed / *-true "
        "(autocast recasts fp32 weights at every matmul of every step), else fp32",
    )
    fused_adamw: bool | None = Field(
        default=None, description="torch's fused AdamW kernel; null: on when every parameter is on CUDA, unsharded"
    )
    fused_loss: bool = Field(
        default=False,
        description="KD stages compute the forward KL and the CE with archzoo.kernels.kd_loss_rows (a Triton kernel "
        "on CUDA): the logits are read in their dtype, their gradient made in the forward pass, nothing of size "
        "(tokens, vocabulary) kept in fp32 or rebuilt in the backward pass. Forward KL only, without vocab_chunk",
    )
    sync_every: int = Field(
        default=1,
        gt=0,
        description="the host waits for the device every n optimizer steps, not every step: tokens/s and TFLOP/s "
        "become averages over n steps, and a non-finite loss is caught at the end of the window, before any "
        "checkpoint or export (which check first)",
    )


class ExportConfig(Strict):
    every_n_steps: int | None = Field(
        default=None, gt=0, description="also export the student every n steps; always at the end"
    )


class CheckpointConfig(Strict):
    every_n_steps: int = Field(default=100, gt=0, description="save checkpoints/last.ckpt every n optimizer steps")


class LoggingConfig(Strict):
    tensorboard: bool = False


class RunConfig(Strict):
    teacher: str = Field(min_length=1, description="fetch name (smollm2-135m), HF folder, .gguf file or checkpoint")
    student: StudentConfig
    data: DataConfig
    stages: list[StageConfig] = Field(min_length=1)
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    trainer: TrainerConfig = Field(default_factory=TrainerConfig)
    speed: SpeedConfig = Field(default_factory=SpeedConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    seed: int = Field(default=0, description="seed of the student's random init and of Lightning")

    _source: str | None = PrivateAttr(default=None)
    _base_dir: Path = PrivateAttr(default_factory=Path.cwd)
    _student_cfg: ModelConfig | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _check(self) -> RunConfig:
        names = [s.name for s in self.stages]
        for i, name in enumerate(names):
            if name in names[:i]:
                raise FieldError(f"stages.{i}.name", f"stage name {name!r} is used twice")
        total = sum(s.steps for s in self.stages)
        if self.trainer.max_steps is not None and self.trainer.max_steps > total:
            raise FieldError(
                "trainer.max_steps",
                f"max_steps={self.trainer.max_steps} exceeds the stages' {total} steps; add steps to a stage",
            )
        if self.speed.fused_loss:
            for i, st in enumerate(self.stages):
                if st.type != "kd":
                    continue
                if st.kl != "forward":
                    raise FieldError(
                        "speed.fused_loss",
                        f"the fused loss computes the forward KL only, but stage {st.name!r} has kl: {st.kl}; "
                        "turn fused_loss off or use kl: forward",
                    )
                if st.vocab_chunk is not None:
                    raise FieldError(
                        f"stages.{i}.vocab_chunk",
                        "the fused loss streams the vocabulary itself; vocab_chunk is for the unfused loss "
                        "(lower token_chunk to bound its memory instead)",
                    )
        if self.speed.fused_adamw and self.trainer.precision.startswith("16") and self.trainer.gradient_clip_val:
            raise FieldError(
                "speed.fused_adamw",
                "fused AdamW unscales fp16 gradients inside its step, after gradient clipping would run: "
                "use bf16-mixed, turn gradient clipping off, or set fused_adamw: false",
            )
        strategy = self.trainer.strategy
        partial = any(s.type == "align" or s.trainable != ["*"] for s in self.stages)
        if strategy.startswith("ddp") and not strategy.endswith("find_unused_parameters_true") and partial:
            raise FieldError(
                "trainer.strategy",
                f"strategy {strategy!r} needs every parameter in every step, but an align stage or a partial "
                "'trainable' leaves some unused; use ddp_find_unused_parameters_true",
            )
        return self

    # ------------------------------------------------------------------ helpers

    @property
    def source(self) -> str | None:
        """The file this run was read from (None for a dict)."""
        return self._source

    @property
    def total_steps(self) -> int:
        return self.trainer.max_steps or sum(s.steps for s in self.stages)

    @property
    def student_config(self) -> ModelConfig | None:
        """The student's resolved model config (None when it comes from the init checkpoint)."""
        return self._student_cfg

    def resolve_path(self, p: str) -> Path:
        """A path from this run YAML, relative ones taken from the YAML's folder."""
        path = Path(p).expanduser()
        return path if path.is_absolute() else self._base_dir / path

    def teacher_src(self) -> str:
        """The teacher as ``resolve_teacher`` takes it: a path where one exists, else the name as written."""
        path = self.resolve_path(self.teacher)
        return str(path) if path.exists() else self.teacher

    def error(self, path: str, message: str) -> ConfigError:
        return ConfigError(message, path, self._source)

    def stage_at(self, step: int) -> tuple[int, int]:
        """(stage index, step within that stage) of global optimizer step ``step``."""
        start = 0
        for i, s in enumerate(self.stages):
            if step < start + s.steps:
                return i, step - start
            start += s.steps
        return len(self.stages) - 1, step - (start - self.stages[-1].steps)

    def align_layers(self, i: int, n_layers: int) -> list[int]:
        stage = self.stages[i]
        assert isinstance(stage, AlignStage)
        if stage.layers is None:
            return list(range(n_layers))
        try:
            idx = parse_layer_indices(stage.layers, n_layers)
        except ValueError as e:
            raise self.error(f"stages.{i}.layers", str(e)) from None
        if not idx:
            raise self.error(f"stages.{i}.layers", f"{stage.layers!r} selects no layer of the {n_layers}-layer student")
        return idx


def load_run_config(src: str | Path | dict[str, Any] | RunConfig) -> RunConfig:
    """Read and validate a run YAML (path) or dict, including the student's model config.

    Raises :class:`archzoo.ConfigError`, e.g. ``run.yaml: stages.1.kl: Input should be 'forward',
    'reverse' or 'jsd' (got 'fwd')``.
    """
    if isinstance(src, RunConfig):
        return src
    data, source = read_mapping(src, "a run YAML path or a dict")
    base = Path(src).resolve().parent if source is not None else Path.cwd()
    try:
        run = RunConfig.model_validate(data)
    except ValidationError as e:
        path, msg = first_error(e)
        path = re.sub(r"^(stages\.\d+)\.(align|kd)\b", r"\1", path)  # pydantic names the union member
        msg = _name_source(data, path, msg)
        raise ConfigError(msg, path, source) from None
    run._source, run._base_dir = source, base
    run._student_cfg = _student_model_config(run)
    _check_paths(run)
    return run


def _name_source(data: dict[str, Any], path: str, msg: str) -> str:
    """An error inside ``data.sources.<i>`` names that source in its message (its name or type)."""
    m = re.match(r"^data\.sources\.(\d+)\b", path)
    sources = (data.get("data") or {}).get("sources") if isinstance(data.get("data"), dict) else None
    if m is None or not isinstance(sources, list) or int(m[1]) >= len(sources):
        return msg
    item = sources[int(m[1])]
    label = (item.get("name") or item.get("source")) if isinstance(item, dict) else None
    return f"{label}: {msg}" if isinstance(label, str) else msg


def _student_model_config(run: RunConfig) -> ModelConfig | None:
    cfg = run.student.config
    if cfg is None:
        return None
    if isinstance(cfg, dict):
        try:
            model_cfg = load_config(cfg)
        except ConfigError as e:
            raise run.error(".".join(p for p in ("student.config", e.path) if p), e.message) from None
    else:
        model_cfg = load_config(run.resolve_path(cfg))  # errors name the student YAML itself
    tl = run.student.teacher_layers
    if tl is not None and len(tl) != model_cfg.n_layers:
        raise run.error(
            "student.teacher_layers", f"lists {len(tl)} layers but the student has n_layers={model_cfg.n_layers}"
        )
    return model_cfg


def _check_paths(run: RunConfig) -> None:
    init = run.student.init
    if init not in ("convert", "random") and not run.resolve_path(init).is_dir():
        raise run.error("student.init", f"{init!r} is neither 'convert', 'random' nor a checkpoint folder")
    data = run.data
    if not data.mixture:
        problem = check_path(data.source_list()[0], run._base_dir)
        if problem is not None:
            raise run.error("data.path", problem)
        return
    for i, spec in enumerate(data.source_list()):
        problem = check_path(spec, run._base_dir)
        if problem is not None:
            raise run.error(f"data.sources.{i}.path", f"{spec.name or spec.source}: {problem}")
