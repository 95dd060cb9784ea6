"""Teacher -> student initialisers (step 2 of the recipe in DESIGN.md).

``convert(teacher, student_cfg, **options)`` builds the student and fills it from the teacher:
embeddings, norms, head and FFNs are copied (or upcycled into MoE experts); each mixer is
initialised by the converter of its family, one module per family in this package, each citing
the method it follows. A student with fewer layers takes a subset of the teacher's layers
(``layers=[...]``, default: evenly spaced, first and last included).

Options (all optional):
    layers          teacher layer index for each student layer
    seed            RNG seed for whatever a converter initialises randomly (default 0)
    cla_share       'mean' (default: the leader's K/V projection is the mean of its group's) or 'first'
    mla_rope        'high' (default): the decoupled RoPE key keeps the highest-frequency pairs; 'norm': per
                    layer, the pairs with the largest queries and keys over the ``calibration`` tokens
    mla_rope_key    'mean' (default) or 'svd': how the K/V heads' RoPE rows become one shared key
    moe_noise       relative std of the noise added to upcycled experts (default 0.01)
    calibration     token ids (N, T), or None (default): teacher inputs for the converters that fit to
                    activations rather than to weights alone. MLA then factorises its K/V projection by an
                    activation-aware SVD (``convert/mla.py``); the others ignore it. Data-free by default.
Unknown options are an error, not ignored.
"""

from __future__ import annotations

import importlib
import sys
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from ..config import ModelConfig, load_config

# One initialiser per family of ``archzoo.families``, keyed by the same names (a test fails if a
# family has none). Values are "module:function" paths, imported on first use, or callables.
# A mixer converter is ``f(teacher_mixer, student_mixer, layer, ctx)``; an FFN converter is
# ``f(teacher_block, student_block, layer, ctx)`` and fills the block's FFN and its norm.
CONVERTERS: dict[str, str | Callable] = {
    "attention": "archzoo.convert.attention:convert_attention",
    "mla": "archzoo.convert.mla:convert_mla",
    "linear_attention": "archzoo.convert.linear_attention:convert_linear_attention",
    "mamba": "archzoo.convert.mamba:convert_mamba",
    "s4": "archzoo.convert.s4:convert_s4",
}
FFN_CONVERTERS: dict[str, str | Callable] = {
    "swiglu": "archzoo.convert.ffn:copy_swiglu",
    "moe": "archzoo.convert.moe:convert_moe",
    "none": "archzoo.convert.ffn:no_ffn",
}


def register_converter(kind: str, name: str, fn: Callable) -> None:
    """Initialise ``kind`` ('mixer' or 'ffn') family ``name`` with ``fn`` (signatures above)."""
    (CONVERTERS if kind == "mixer" else FFN_CONVERTERS)[name] = fn


DEFAULT_OPTIONS: dict[str, Any] = {
    "layers": None,
    "seed": 0,
    "cla_share": "mean",
    "mla_rope": "high",
    "mla_rope_key": "mean",
    "moe_noise": 0.01,
    "calibration": None,
}


@dataclass
class ConvertContext:
    """What a family converter may look at beyond its own pair of modules."""

    teacher: Any
    student: Any
    layer_map: list[int]  # teacher layer of each student layer
    options: dict[str, Any]
    generator: torch.Generator
    notes: list[str] = field(default_factory=list)
    fitted: set[int] = field(default_factory=set)  # student layers a converter has already filled (a CLA group's fit)
    _moments: dict[tuple[int, int], torch.Tensor] | None = None

    def input_moment(self, student_layer: int) -> torch.Tensor | None:
        """E[x x^T] (d, d, float64) of the input the teacher mixer of ``student_layer`` receives (its mixer norm's
        output) over the ``calibration`` tokens, or None without calibration."""
        if self.options.get("calibration") is None:
            return None
        t = self.layer_map[student_layer]
        return self._all_moments()[(t, t)]

    def cross_moment(self, student_a: int, student_b: int) -> torch.Tensor:
        """E[x_a x_b^T] (d, d, float64) of the inputs of the teacher mixers of two student layers over the
        ``calibration`` tokens (a CLA member reads its leader's K/V: its keys are predicted from the leader's input)."""
        return self._all_moments((self.layer_map[student_a], self.layer_map[student_b]))[
            (self.layer_map[student_a], self.layer_map[student_b])
        ]

    def _all_moments(self, extra: tuple[int, int] | None = None) -> dict[tuple[int, int], torch.Tensor]:
        """Every layer's moment and every CLA member-leader cross moment, from one teacher pass on first use."""
        owners = self.student.state_owners
        pairs = {(self.layer_map[j], self.layer_map[o]) for j, o in enumerate(owners) if o != j}
        if extra is not None:
            pairs.add(extra)
        if self._moments is None or not pairs <= self._moments.keys():
            self._moments = input_moments(self.teacher, self.options["calibration"], pairs)
        return self._moments

    def teacher_mixer(self, student_layer: int):
        return self.teacher.blocks[self.layer_map[student_layer]].mixer

    def group_members(self, student_layer: int) -> list[int]:
        """Student layers that read ``student_layer``'s state (CLA), itself included."""
        owners = self.student.state_owners
        return [i for i, o in enumerate(owners) if o == student_layer]


def input_moments(teacher, ids, pairs: set[tuple[int, int]]) -> dict[tuple[int, int], torch.Tensor]:
    """{(a, b): E[x_a x_b^T]} (float64) of the teacher mixers' inputs over the token ids (N, T), in one teacher
    pass: (i, i) for every layer, and each pair of ``pairs`` (a CLA member and its leader)."""
    ids = torch.as_tensor(ids)
    if ids.dim() != 2 or ids.numel() == 0 or ids.dtype not in (torch.int32, torch.int64):
        raise ValueError(
            f"calibration must be a non-empty (N, T) tensor of token ids, got {tuple(ids.shape)} {ids.dtype}"
        )
    if int(ids.min()) < 0 or int(ids.max()) >= teacher.cfg.vocab_size:
        raise ValueError(f"calibration token ids must lie in [0, {teacher.cfg.vocab_size})")
    pairs = {(i, i) for i in range(len(teacher.blocks))} | set(pairs)
    current: dict[int, torch.Tensor] = {}
    sums: dict[tuple[int, int], torch.Tensor] = {}

    def hook(i):
        def fn(_module, args, _out):
            current[i] = args[0].reshape(-1, args[0].shape[-1]).double()

        return fn

    handles = [b.mixer.register_forward_hook(hook(i)) for i, b in enumerate(teacher.blocks)]
    try:
        for row in ids.to(teacher.embed.weight.device).split(8):
            current.clear()
            teacher(row)
            for a, b in pairs:
                sums[(a, b)] = sums.get((a, b), 0) + current[a].T @ current[b]
    finally:
        for h in handles:
            h.remove()
    return {k: v / ids.numel() for k, v in sums.items()}


def default_layer_map(n_teacher: int, n_student: int) -> list[int]:
    if n_student > n_teacher:
        raise ValueError(f"student has {n_student} layers, more than the teacher's {n_teacher}; pass layers=[...]")
    if n_student == 1:
        return [0]
    return [round(i * (n_teacher - 1) / (n_student - 1)) for i in range(n_student)]


def _converter(kind: str, family: str) -> Callable:
    registry = CONVERTERS if kind == "mixer" else FFN_CONVERTERS
    if family not in registry:
        raise ValueError(f"no converter for {kind} {family!r}; converters exist for {', '.join(registry)}")
    target = registry[family]
    if callable(target):
        return target
    module, attr = target.split(":")
    return getattr(importlib.import_module(module), attr)


@torch.no_grad()
def convert(teacher, student_cfg: ModelConfig | dict | str, **options: Any):
    """Initialise a student of ``student_cfg`` from ``teacher`` (an ArchZooLM, e.g. from ``from_hf``)."""
    from ..model import ArchZooLM

    unknown = set(options) - set(DEFAULT_OPTIONS)
    if unknown:
        raise ValueError(f"unknown convert option(s) {sorted(unknown)}; expected {', '.join(DEFAULT_OPTIONS)}")
    opts = {**DEFAULT_OPTIONS, **options}
    cfg = load_config(student_cfg)
    tcfg = teacher.cfg
    if cfg.vocab_size != tcfg.vocab_size or cfg.d_model != tcfg.d_model:
        raise ValueError(
            f"student vocab_size/d_model {cfg.vocab_size}/{cfg.d_model} must match the teacher's "
            f"{tcfg.vocab_size}/{tcfg.d_model}"
        )
    layer_map = list(opts["layers"]) if opts["layers"] is not None else default_layer_map(tcfg.n_layers, cfg.n_layers)
    if len(layer_map) != cfg.n_layers or not all(0 <= i < tcfg.n_layers for i in layer_map):
        raise ValueError(f"layers={layer_map} must give one teacher layer in [0, {tcfg.n_layers}) per student layer")
    cfg, moments = _adapt_config(cfg, teacher, layer_map, opts)

    dev, dtype = teacher.embed.weight.device, teacher.embed.weight.dtype
    gen = torch.Generator(device="cpu").manual_seed(int(opts["seed"]))
    torch.manual_seed(int(opts["seed"]))
    student = ArchZooLM(cfg).to(dev, dtype)
    ctx = ConvertContext(teacher, student, layer_map, opts, gen, _moments=moments)

    student.embed.weight.copy_(teacher.embed.weight)
    if not cfg.tie_embeddings:
        student.lm_head.weight.copy_(teacher.lm_head.weight)
    elif not tcfg.tie_embeddings:
        ctx.notes.append("student ties embeddings; the teacher's separate lm_head was dropped")
    student.norm.weight.copy_(teacher.norm.weight)
    for i, block in enumerate(student.blocks):
        tblock = teacher.blocks[layer_map[i]]
        block.mixer_norm.weight.copy_(tblock.mixer_norm.weight)
        _converter("mixer", cfg.blocks[i].mixer.type)(tblock.mixer, block.mixer, i, ctx)
        _converter("ffn", cfg.blocks[i].ffn.type)(tblock, block, i, ctx)
    student.tokenizer = getattr(teacher, "tokenizer", None)
    student.convert_notes = ctx.notes
    return student


def _adapt_config(cfg: ModelConfig, teacher, layer_map: list[int], opts: dict[str, Any]):
    """Per-family config adjustments a converter needs to be exact (e.g. MLA's RoPE base and pairs) -> (config,
    the calibration moments if computing them was needed here, else None: the converters reuse them)."""
    from .mla import adapt_mla_config

    data = cfg.to_dict()
    changed = False
    moments = None
    for i, block in enumerate(cfg.blocks):
        if block.mixer.type == "mla":
            tblock = teacher.blocks[layer_map[i]]
            moment = None
            if opts.get("mla_rope") == "norm":
                if opts.get("calibration") is None:
                    # Scores from the weights alone (inputs of unit variance through the norm's weight) kept only
                    # 5-14 of the 16 pairs the activations pick per layer on SmolLM2-135M (massive activations).
                    raise ValueError(
                        "mla_rope='norm' ranks RoPE pairs by the teacher's query and key sizes on real inputs: "
                        "pass calibration token ids (convert: calibration: in a distill run YAML)"
                    )
                if moments is None:
                    moments = input_moments(teacher, opts["calibration"], set())
                moment = moments[(layer_map[i], layer_map[i])]
            changed |= adapt_mla_config(data, i, block.mixer, tblock.mixer, opts, moment)
    return (load_config(data) if changed else cfg), moments


def copy_linear(
    dst: torch.nn.Linear, weight: torch.Tensor, bias: torch.Tensor | None = None, notes: list[str] | None = None
) -> None:
    """Copy a projection; a teacher bias the student layer cannot hold is reported in ``notes``."""
    if dst.weight.shape != weight.shape:
        raise ValueError(f"shape {tuple(weight.shape)} does not fit {tuple(dst.weight.shape)}")
    dst.weight.copy_(weight)
    if dst.bias is not None:
        dst.bias.copy_(bias if bias is not None else torch.zeros_like(dst.bias))
    elif bias is not None and bool(bias.any()) and notes is not None:
        notes.append("a teacher projection bias was dropped: the student layer has no bias (set qkv_bias: true)")


class _CallableModule(types.ModuleType):
    """``archzoo.convert`` is this package (it holds one module per family) and, as DESIGN.md's
    interface says, the function: calling the package calls :func:`convert`."""

    def __call__(self, teacher, student_cfg, **options):
        return convert(teacher, student_cfg, **options)


sys.modules[__name__].__class__ = _CallableModule

__all__ = [
    "CONVERTERS",
    "FFN_CONVERTERS",
    "ConvertContext",
    "convert",
    "copy_linear",
    "default_layer_map",
    "input_moments",
    "register_converter",
]
