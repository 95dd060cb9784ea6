"""The Pareto benchmark suite: ``archzoo bench configs/bench/<suite>.yaml --out DIR``.

A suite YAML names a teacher, the models to compare, the evaluation sets, the context lengths at
which cache sizes are taken, the decode settings, the device and the dtype (``Suite`` below). Each
model gets one row: parameters, cache bytes (per token at ``cache_context`` and in total at every
``context_lengths`` entry, from ``model.new_cache(1, L).nbytes()``, checked equal to
``archzoo.cache_bytes``), perplexity and KL(teacher || model) per text set (``archzoo.eval.evaluate``,
the same token blocks for every model; also by position in the block, ``by_position``), MQAR accuracy,
decode / prefill tokens/s (``model.generate`` timed as ``archzoo bench decode`` times it), peak memory
(CUDA) and provenance.

Rows are written to ``DIR/rows/<name>.json`` as each model finishes (atomically), together with the
hash of the model's inputs (its config and the sha256 of its weights file, so the same weights hash the
same on any machine) and of the suite's settings; ``--resume`` skips a model whose hashes are unchanged.
Every input is checked before the first model is measured (models resolved, vocabularies against the
teacher's, evaluation sets built), so bad input exits 2 with one line and loses nothing.
Relative paths in a suite are taken from the current directory, like every other path on the command line.

Two things serve distillation, whose students are trained on GPU machines that keep nothing between leases:

- ``init: convert`` rows: the teacher converted into a student's architecture, untrained (a distill run
  YAML as the source gives exactly the student that run starts from). The report pairs each with the trained
  student of the same config in a "before -> after" table; a paired one stays off the frontiers and charts.
- Rows accumulate across machines: ``--only`` measures the named models, and a model it leaves out whose
  source is not on this machine (a run folder trained in an earlier lease) keeps its stored row, carried in
  ``DIR/rows``. Speeds are not compared across machines: ``decode: null`` with ``decode_from`` takes every
  row's decode figures from one other run that measured all the architectures side by side (speed does not
  depend on the weights), matched by model name and config.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..cache import cache_bytes, cache_read_bytes
from ..config import ModelConfig, load_config
from ..errors import ConfigError, UserError
from ..kernels._dispatch import forget, last_backend
from .common import (
    atomic_write,
    check_device,
    dtype_name,
    library_versions,
    measure_bandwidth,
    random_prompts,
    weight_bytes,
)
from .decode import decode_linear_form, run_archzoo

# The schema (Suite, its models and sets, load_suite) is in suite_schema.py; its names are imported here for
# the code below and for callers of archzoo.bench.suite.
from .suite_schema import (  # noqa: F401
    SCHEMA_VERSION,
    DecodeSettings,
    EvalSet,
    FileSet,
    HeldoutSet,
    ModelSpec,
    MQARSet,
    RandomTokensSet,
    ShakespeareSet,
    SpeculativeSettings,
    Suite,
    TeacherSpec,
    TextSet,
    _hash,
    load_suite,
)

# ------------------------------------------------------------------------------ models


@dataclass
class Resolved:
    """One model of the suite, resolved without loading weights where that is cheap."""

    name: str
    source: str
    kind: str  # yaml | checkpoint | run | teacher
    path: Path | None = None  # the folder / file the weights come from
    cfg: Any = None
    run_dir: Path | None = None
    is_teacher: bool = False
    provenance: dict = field(default_factory=dict)
    convert_options: dict | None = None  # kind "converted": archzoo.convert's options (layers included)

    def inputs_hash(self, settings: str) -> str:
        weights = None
        if self.path is not None:
            f = self.path / "model.safetensors" if self.path.is_dir() else self.path
            if f.is_file():
                weights = file_digest(f)
        cfg = self.cfg.to_dict() if self.cfg is not None else None
        return _hash(
            {"source": self.source, "cfg": cfg, "weights": weights, "teacher": self.is_teacher, "s": settings,
             **({"convert": self.convert_options} if self.convert_options is not None else {})}
        )  # fmt: skip


_DIGESTS: dict[tuple, str] = {}


def file_digest(path: Path) -> str:
    """sha256 of the file's bytes (cached per path, size and mtime): a row's inputs hash then names the same
    weights on every machine, so rows measured on one GPU machine are recognised on the next (a fresh copy of
    a file has a new mtime, not new bytes)."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _DIGESTS:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 24), b""):
                h.update(chunk)
        _DIGESTS[key] = h.hexdigest()
    return _DIGESTS[key]


def _is_saved(path: Path) -> bool:
    return path.is_dir() and (path / "config.yaml").is_file() and (path / "model.safetensors").is_file()


def resolve_model(spec: ModelSpec, where: str) -> Resolved:
    """A model YAML, a saved student folder or a distill run folder (its ``student/``); with ``init: convert`` a
    model YAML or a distill run YAML; ``UserError`` otherwise."""
    path = Path(spec.source).expanduser()
    if spec.init == "convert":
        return _resolve_converted(spec, path, where)
    if path.is_file() and path.suffix in (".yaml", ".yml"):
        return Resolved(spec.name, spec.source, "yaml", path, load_config(path))
    if _is_saved(path):
        return Resolved(spec.name, spec.source, "checkpoint", path, load_config(path / "config.yaml"))
    if path.is_dir() and _is_saved(path / "student"):
        res = Resolved(spec.name, spec.source, "run", path / "student", load_config(path / "student" / "config.yaml"))
        res.run_dir = path
        res.provenance["tokens_trained"] = tokens_trained(path)
        res.provenance["train_seconds"] = train_summary(path).get("fit_seconds")
        return res
    what = "no such file or folder" if not path.exists() else "not a model"
    raise UserError(
        f"{where} ({spec.name}): {spec.source}: {what}; expected a model YAML, a saved student folder "
        "(config.yaml + model.safetensors) or a distill run folder (with student/)"
    )


def _resolve_converted(spec: ModelSpec, path: Path, where: str) -> Resolved:
    """``init: convert``: the architecture (and converter options) from a model YAML, or from a distill run YAML's
    ``student`` section (its ``config``, ``convert`` and ``teacher_layers``: the student that run starts from)."""
    import yaml

    if not (path.is_file() and path.suffix in (".yaml", ".yml")):
        what = "no such file" if not path.exists() else "not a YAML file"
        raise UserError(f"{where} ({spec.name}): {spec.source}: {what}; init: convert needs a model YAML or a "
                        "distill run YAML")  # fmt: skip
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise UserError(f"{where} ({spec.name}): {spec.source}: not valid YAML ({e})") from None
    options = dict(spec.convert)
    layers = spec.layers
    if isinstance(data, dict) and "student" in data:  # a distill run YAML
        student = data["student"] if isinstance(data["student"], dict) else {}
        src = student.get("config")
        if src is None:
            raise UserError(f"{where} ({spec.name}): {spec.source}: student.config is missing (the run starts from "
                            "a checkpoint; give that folder as a source without init: convert)")  # fmt: skip
        cfg = load_config(path.parent / src if isinstance(src, str) else src)
        options = {**(student.get("convert") or {}), **options}
        if layers is None and student.get("teacher_layers") is not None:
            layers = student["teacher_layers"]
    else:
        cfg = load_config(path)
    if layers is not None:
        options["layers"] = [int(i) for i in layers]
    res = Resolved(spec.name, spec.source, "converted", path, cfg)
    res.convert_options = options
    return res


def tokens_trained(run_dir: Path) -> int | None:
    """Training tokens of a distill run folder: its summary.json's, else the last logged step x tokens per step
    (run.yaml), or None."""
    import csv

    import yaml

    summary = train_summary(run_dir)
    if summary.get("tokens_trained") is not None:
        return int(summary["tokens_trained"])
    metrics, run_yaml = run_dir / "logs" / "metrics.csv", run_dir / "run.yaml"
    if not metrics.is_file() or not run_yaml.is_file():
        return None
    try:
        run = yaml.safe_load(run_yaml.read_text()) or {}
        data, trainer = run.get("data") or {}, run.get("trainer") or {}
        per_step = int(data["batch_size"]) * int(data["block_len"])
        per_step *= int(trainer.get("accumulate_grad_batches") or 1) * int(trainer.get("devices") or 1)
        with open(metrics) as f:
            steps = [int(float(r["step"])) for r in csv.DictReader(f) if r.get("step")]
    except (KeyError, ValueError, TypeError, yaml.YAMLError, OSError):
        return None
    return (max(steps) + 1) * per_step if steps else None


def train_summary(run_dir: Path) -> dict:
    """A distill run folder's ``summary.json`` (``archzoo distill`` writes it at the end), or {}."""
    try:
        data = json.loads((run_dir / "summary.json").read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def resolve_teacher_spec(spec: TeacherSpec) -> Resolved:
    path = Path(spec.source).expanduser()
    if path.is_file() and path.suffix in (".yaml", ".yml"):
        return Resolved(spec.name, spec.source, "yaml", path, load_config(path), is_teacher=True)
    if _is_saved(path):
        return Resolved(spec.name, spec.source, "checkpoint", path, load_config(path / "config.yaml"), is_teacher=True)
    return Resolved(spec.name, spec.source, "teacher", path if path.exists() else None, is_teacher=True)


def load(res: Resolved, dtype: torch.dtype, device: torch.device, seed: int, teacher=None):
    """The ArchZooLM of ``res`` in ``dtype`` on ``device``; a YAML gets seeded random weights (built on the CPU);
    a converted model is ``archzoo.convert`` of an fp32 copy of ``teacher`` (as ``archzoo distill`` converts)."""
    if res.kind == "converted":
        import copy

        from ..convert import convert
        from ..data import resolve_calibration

        torch.manual_seed(seed)
        src = copy.deepcopy(teacher).float()
        try:  # a calibration spec becomes the tokens archzoo distill builds for it
            model = convert(src, res.cfg, **resolve_calibration(res.convert_options or {}, src))
        except ValueError as e:
            raise UserError(f"{res.name}: cannot convert the teacher into {res.source}: {e}") from None
        finally:
            del src
        return model.to(device=device, dtype=dtype).eval()
    if res.kind == "yaml":
        from ..model import build_model

        torch.manual_seed(seed)
        return build_model(res.cfg).to(device=device, dtype=dtype).eval()
    if res.kind in ("checkpoint", "run"):
        from ..checkpoint import from_pretrained

        return from_pretrained(res.path, device=device, dtype=dtype).eval()
    from ..teacher import resolve_teacher

    try:
        return resolve_teacher(res.source, dtype=dtype, device=device).eval()
    except ConfigError as e:
        raise UserError(f"teacher ({res.name}): {e}") from None


# ------------------------------------------------------------------------------ evaluation sets


class ByteTokenizer:
    """UTF-8 bytes as token ids 0-255, EOS 256: text sets for a teacher without a tokenizer."""

    eos_token_id = 256

    def __call__(self, texts: Sequence[str], **_: Any) -> dict[str, list[list[int]]]:
        return {"input_ids": [list(t.encode("utf-8")) for t in texts]}


@dataclass
class Prepared:
    """An evaluation set turned into tensors, the same for every model."""

    name: str
    kind: str  # text | mqar
    blocks: torch.Tensor | None = None  # (N, block_len + 1)
    mqar: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    describe: str = ""


def prepare_sets(suite: Suite, vocab_size: int, tokenizer, teacher=None) -> list[Prepared]:
    """Every evaluation set as token blocks / MQAR examples; ``UserError`` naming the set or file on bad input.

    ``teacher`` (the loaded teacher) is needed by a ``teacher-heldout`` / ``teacher-long-heldout`` set only,
    which it generates.
    """
    from ..data import heldout_texts, load_texts, mqar_examples, pack_blocks, shakespeare_texts, tokenize_texts

    if suite.tokenizer == "bytes":
        if vocab_size < 257:
            raise UserError(f"tokenizer: bytes needs a vocabulary of at least 257 ids; the teacher has {vocab_size}")
        tokenizer = ByteTokenizer()
    out = []
    for i, s in enumerate(suite.eval):
        where = f"eval.{i} ({s.name})"
        if isinstance(s, MQARSet):
            p = Prepared(s.name, "mqar", describe=f"MQAR, {s.n_examples} sequences of {s.seq_len} tokens")
            for n in s.num_kv_pairs:
                try:
                    p.mqar[n] = mqar_examples(s.n_examples, vocab_size, s.seq_len, n, seed=s.seed)
                except ValueError as e:
                    raise UserError(f"{where}: {e}") from None
            out.append(p)
            continue
        if isinstance(s, RandomTokensSet):
            g = torch.Generator().manual_seed(s.seed)
            blocks = torch.randint(0, vocab_size, (s.max_blocks, s.block_len + 1), generator=g)
            out.append(Prepared(s.name, "text", blocks, describe="uniformly random token ids"))
            continue
        if tokenizer is None:
            raise UserError(f"{where}: the teacher has no tokenizer; set `tokenizer: bytes` or use random_tokens")
        if isinstance(s, ShakespeareSet):
            label, texts = f"Shakespeare held-out works ({s.edition})", shakespeare_texts("heldout", s.edition)
        elif isinstance(s, HeldoutSet):
            label = s.set
            if s.set in ("teacher-heldout", "teacher-long-heldout") and suite.tokenizer != "teacher":
                raise UserError(f"{where}: {s.set} is the teacher's own text: it needs `tokenizer: teacher`")
            try:
                texts = heldout_texts(s.set, teacher=teacher, seed=s.seed)
            except ValueError as e:
                raise UserError(f"{where}: {e}") from None
        else:
            label = s.path
            try:
                texts = load_texts(s.path, s.text_field)
            except (ValueError, ImportError) as e:
                raise UserError(f"{where}: {e}") from None
            except FileNotFoundError:
                raise UserError(f"{where}: {s.path}: no such file or folder") from None
        tokens = tokenize_texts(texts, tokenizer)
        if tokens.numel() and int(tokens.max()) >= vocab_size:
            raise UserError(f"{where}: {label}: token id {int(tokens.max())} is outside the vocabulary of {vocab_size}")
        if tokens.numel() - 1 < s.block_len:
            raise UserError(
                f"{where}: {label}: {'empty' if tokens.numel() <= 1 else f'only {tokens.numel()} tokens'}; "
                f"one block needs {s.block_len} + 1 (lower block_len or give more text)"
            )
        blocks = pack_blocks(tokens, s.block_len, seed=s.seed, max_blocks=s.max_blocks)
        out.append(Prepared(s.name, "text", blocks, describe=f"{label}, {blocks.shape[0]} blocks of {s.block_len}"))
    return out


# ------------------------------------------------------------------------------ measuring


def position_buckets(L: int) -> list[int]:
    """Edges of the positions a row's ``by_position`` figures are taken over: 0, L/8, L/4, L/2, L (0, 512, 1,024,
    2,048, 4,096 for 4,096-token blocks), fewer where L is too short to halve. A student that drifts from the
    teacher with distance (trained on shorter blocks than it is scored on) shows it in the later buckets."""
    return sorted({0, *(L >> k for k in (3, 2, 1, 0) if L >> k > 0)})


def measure(
    res: Resolved,
    model,
    teacher,
    suite: Suite,
    sets: list[Prepared],
    device: torch.device,
    stage: Callable[[str], None] = lambda s: None,
) -> dict:
    """One row: every figure of one loaded model (see the module docstring)."""
    from ..eval import evaluate, mqar_accuracy

    dt = suite.torch_dtype
    cfg = model.cfg
    row: dict[str, Any] = {
        "name": res.name,
        "teacher": res.is_teacher,
        "source": res.source,
        "kind": res.kind,
        "init": "convert" if res.kind == "converted" else "weights",
        "parameters": model.num_parameters(),
        "weight_bytes": weight_bytes(model),
    }
    stage("cache")
    lengths = sorted(set(suite.context_lengths) | {suite.cache_context})
    totals = {}
    for n in lengths:
        measured = model.new_cache(1, n, dtype=dt, device="meta").nbytes()
        analytic = cache_bytes(cfg, 1, n, dt)
        if measured != analytic:
            raise RuntimeError(f"{res.name}: new_cache(1, {n}).nbytes() = {measured} != cache_bytes = {analytic}")
        totals[str(n)] = measured
    row["cache_bytes"] = {k: v for k, v in totals.items() if int(k) in suite.context_lengths}
    row["cache_bytes_per_token"] = totals[str(suite.cache_context)] / suite.cache_context
    row["ppl"], row["kl"], row["mqar"], row["by_position"] = {}, {}, {}, {}
    for s in sets:
        if s.kind == "text":
            stage(f"eval {s.name}")
            L = s.blocks.shape[1] - 1
            r = evaluate(None if res.is_teacher else teacher, model, s.blocks, position_buckets=position_buckets(L))
            row["ppl"][s.name] = r["ppl_student"]
            row["kl"][s.name] = 0.0 if res.is_teacher else r["kl"]
            row["by_position"][s.name] = [
                {"start": b["start"], "end": b["end"], "ppl": b["ppl_student"], "kl": b["kl"] or 0.0}
                for b in r["by_position"]
            ]
        else:
            stage(f"mqar {s.name}")
            row["mqar"][s.name] = {str(n): mqar_accuracy(model, x, y) for n, (x, y) in s.mqar.items()}
    if suite.decode is not None:
        stage("decode")
        row.update(_decode(model, suite, device))
    if suite.speculative is not None and not res.is_teacher and res.kind != "converted":
        stage("draft")
        row.update(_draft(teacher, model, suite, sets, device))
    return row


def _draft(teacher, model, suite: Suite, sets: list[Prepared], device: torch.device) -> dict:
    """``model`` drafting for ``teacher``: greedy speculative decoding on prompts from the first text set."""
    sp = suite.speculative
    text = next((s for s in sets if s.kind == "text"), None)
    if text is None:
        return {"draft_acceptance_rate": None, "draft_note": "no text evaluation set to take prompts from"}
    prompts = text.blocks[: sp.prompts, : sp.prompt_len].to(device)
    teacher.generate(prompts, sp.new_tokens, eos_token_id=None, draft=model, num_draft_tokens=sp.num_draft_tokens)
    stats = teacher.last_generate_stats
    return {
        "draft_num_draft_tokens": sp.num_draft_tokens,
        "draft_acceptance_rate": stats.get("acceptance_rate"),
        "draft_tokens_per_verify": stats.get("tokens_per_verify"),
    }


def _decode(model, suite: Suite, device: torch.device) -> dict:
    """The primary decode measurement's fields, and ``decode_grid`` {"B=..,P=..": tokens/s} over the grid."""
    d = suite.decode
    grid = d.grid()
    # each model compiles its blocks once per (batch, bucket) shape, all on Block.forward's one code object: a
    # suite of 19 models reaches dynamo's recompile limit (64) at its 8th (H100, 2026-12-05). The models measured
    # before this one are done with: their compiled entries go, and the limit counts this model's alone.
    torch._dynamo.reset()
    out = _decode_one(model, suite, device, *grid[0])
    if len(grid) > 1:
        out["decode_grid"] = {f"B={grid[0][0]},P={grid[0][1]}": out["decode_tokens_per_s"]}
        for b, p in grid[1:]:
            out["decode_grid"][f"B={b},P={p}"] = _decode_one(model, suite, device, b, p)["decode_tokens_per_s"]
    # what one step reads at each cell (every weight once, each layer's cache up to the mean length, as
    # `archzoo bench decode` counts it) and the copy bandwidth of this run's device: the report's HBM fraction
    new, dt = d.new_tokens, suite.torch_dtype
    out["decode_step_bytes"] = {
        f"B={b},P={p}": weight_bytes(model) + cache_read_bytes(model.cfg, b, p + new // 2, dt) for b, p in grid
    }
    out["decode_bandwidth"] = _bandwidth(device)
    return out


_BANDWIDTH: dict[str, float] = {}


def _bandwidth(device: torch.device) -> float:
    """The device's copy bandwidth in bytes/s, measured once a process (``measure_bandwidth``)."""
    key = str(device)
    if key not in _BANDWIDTH:
        _BANDWIDTH[key] = measure_bandwidth(device)["bytes_per_s"]
    return _BANDWIDTH[key]


def _decode_one(model, suite: Suite, device: torch.device, batch_size: int, prompt_len: int) -> dict:
    d = suite.decode
    ids = random_prompts(model.cfg.vocab_size, batch_size, prompt_len, suite.seed, device)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device) - weight_bytes(model)
    forget("decode_linear")
    with decode_linear_form(d.decode_linear):
        r = run_archzoo(model, ids, d.new_tokens, d.compile, d.warmup, d.repeat, device)
    out = {
        "decode_linear": d.decode_linear,
        "linear_backend": last_backend("decode_linear") or "cublas",
        "decode_tokens_per_s": batch_size * d.new_tokens / r["decode_s"] if r.get("decode_s") else None,
        "prefill_tokens_per_s": batch_size * prompt_len / r["prefill_s"] if r.get("prefill_s") else None,
        "decode_backend": r.get("backend"),
        "decode_timing": r.get("timing"),
        "compile_s": r.get("compile_s"),
        "peak_memory_bytes": torch.cuda.max_memory_allocated(device) - base if cuda else None,
    }
    if r.get("note"):
        out["decode_note"] = r["note"]
    return out


# ------------------------------------------------------------------------------ the run


def _row_path(out: Path, name: str) -> Path:
    slug = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    return out / "rows" / f"{slug}-{hashlib.sha256(name.encode()).hexdigest()[:6]}.json"


def _read_row(out: Path, name: str) -> dict | None:
    p = _row_path(out, name)
    try:
        return json.loads(p.read_text()) if p.is_file() else None
    except json.JSONDecodeError:
        return None


def run_suite(
    suite_path: str | Path,
    out_dir: str | Path,
    resume: bool = False,
    only: Sequence[str] | None = None,
    command: str | None = None,
    progress: bool = True,
) -> dict:
    """Measure every model of the suite (or those named in ``only``) and write the report; returns results.json."""
    from .report import write_report

    suite = load_suite(suite_path)
    out = Path(out_dir)
    device = check_device(suite.device)
    dt = suite.torch_dtype
    names = [suite.teacher.name, *(m.name for m in suite.models)]
    if only:
        unknown = [n for n in only if n not in names]
        if unknown:
            raise UserError(f"--only: no model named {', '.join(map(repr, unknown))}; the suite has {', '.join(names)}")
    # Resolve and check everything before the first measurement. A model left out by --only whose source is not
    # here (a run folder trained on another machine) keeps its stored row, if one was measured under these settings.
    settings = suite.settings_hash()
    teacher_res = resolve_teacher_spec(suite.teacher)
    students, kept = [], {}
    for i, m in enumerate(suite.models):
        try:
            students.append(resolve_model(m, f"models.{i}"))
        except UserError:
            if not only or m.name in only:
                raise
            stored = _read_row(out, m.name)  # left out by --only, its source not here: its stored row, if any
            if stored is not None and stored.get("settings_hash") == settings:
                kept[m.name] = stored
            continue
    decode_from = _load_decode_from(suite.decode_from) if suite.decode_from else None
    teacher = load(teacher_res, dt, device, suite.seed)
    teacher_res.cfg = teacher.cfg
    if teacher_res.kind == "teacher" and teacher_res.path is not None:
        teacher_res.provenance["file"] = str(teacher_res.path)
    vocab = teacher.cfg.vocab_size
    for r in students:
        if r.cfg.vocab_size != vocab:
            i = next(j for j, m in enumerate(suite.models) if m.name == r.name)
            raise UserError(
                f"models.{i} ({r.name}): {r.source}: vocabulary of {r.cfg.vocab_size} tokens; "
                f"the teacher ({teacher_res.name}) has {vocab}: KL and perplexity need the same tokens"
            )
    sets = prepare_sets(suite, vocab, getattr(teacher, "tokenizer", None), teacher)
    out.mkdir(parents=True, exist_ok=True)
    meta = {
        "schema_version": SCHEMA_VERSION,
        "suite": suite.name,
        "suite_file": str(suite_path),
        "command": command or f"archzoo bench {suite_path} --out {out_dir}",
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "dtype": dtype_name(dt),
        "versions": library_versions(),
        "settings": suite.model_dump(mode="json", exclude={"models"}),
        "settings_hash": settings,
        "eval_sets": {s.name: s.describe for s in sets},
    }
    todo = [teacher_res, *students]
    plan = []
    for r in todo:
        h = r.inputs_hash(settings)
        stored = _read_row(out, r.name)
        selected = only is None or r.name in only
        fresh = stored is not None and stored.get("inputs_hash") == h
        plan.append((r, h, selected and not (resume and fresh)))
    try:
        _measure_all(plan, teacher, suite, sets, device, out, progress, settings)
    finally:
        by_name = {}
        for r, h, _ in plan:
            stored = _read_row(out, r.name)
            if stored is not None and stored.get("inputs_hash") == h:
                by_name[r.name] = stored
        by_name.update(kept)
        rows = [by_name[n] for n in names if n in by_name]
        if decode_from is not None:
            _merge_speeds(meta, rows, decode_from)
        results = write_report(out, meta, rows, names)
    return results


def report_from_rows(suite_path: str | Path, out_dir: str | Path) -> dict:
    """Rewrite DIR's report from the rows stored in DIR/rows, loading no model and measuring nothing: the rows of
    the suite's models measured under its current settings (rows copied in from other machines included). The run
    metadata (command, device, versions, evaluation sets) is the last measuring run's, from DIR/results.json."""
    from .report import write_report

    suite = load_suite(suite_path)
    out = Path(out_dir)
    try:
        meta = json.loads((out / "results.json").read_text())
    except FileNotFoundError:
        raise UserError(f"--report-only: {out}/results.json is missing: no measuring run has written there") from None
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"--report-only: {out}/results.json is not readable ({e})") from None
    settings = suite.settings_hash()
    meta = {k: v for k, v in meta.items() if k not in ("rows", "frontier", "missing", "charts")}
    if meta.get("settings_hash") != settings:
        raise UserError(f"--report-only: {out}/results.json was written under other suite settings; measure again")
    names = [suite.teacher.name, *(m.name for m in suite.models)]
    rows = [r for n in names if (r := _read_row(out, n)) is not None and r.get("settings_hash") == settings]
    meta["settings"]["report_quality"] = suite.report_quality  # what is shown: the suite file's, not the run's
    speeds = _load_decode_from(suite.decode_from) if suite.decode_from else None
    if speeds is not None:
        _merge_speeds(meta, rows, speeds)
    # The rows may come from several runs (machines, leases): the header says the report was rebuilt, and that
    # its command and date are the last measuring run's (each row's own are in the Provenance table).
    meta["report_only"] = {
        "command": f"archzoo bench {suite_path} --out {out_dir} --report-only",
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
    }
    return write_report(out, meta, rows, names)


# What decode_from takes: speeds depend on the architecture, not the weights. A draft's acceptance depends on the
# weights, so it is measured where they are (the suite's own ``speculative``), never taken from another run.
SPEED_FIELDS = ("decode_tokens_per_s", "prefill_tokens_per_s", "decode_backend", "decode_timing", "compile_s",
                "peak_memory_bytes", "decode_grid", "decode_note", "decode_linear", "linear_backend",
                "decode_step_bytes", "decode_bandwidth")  # fmt: skip


def _load_decode_from(src: str) -> dict | None:
    """The results.json named by ``decode_from`` (the file or its folder); None (a warning) when there is none yet;
    ``UserError`` naming it when it is not a suite run's results.json."""
    path = Path(src).expanduser()
    path = path / "results.json" if path.is_dir() or not path.suffix else path
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        # Not measured yet (the speed run comes once, the quality rows student by student): the report says so.
        import sys

        print(f"warning: decode_from: {path}: no results.json yet; the report shows no decode speeds", file=sys.stderr)
        return None
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"decode_from: {path}: not a readable results.json ({e})") from None
    if not isinstance(data, dict) or "rows" not in data or not (data.get("settings") or {}).get("decode"):
        raise UserError(f"decode_from: {path}: not the results.json of a suite run that measured decode speeds")
    data["path"] = str(path)
    for row in data["rows"]:  # rows measured before shape hashes: a model YAML here that hashes the same gives it
        prov = row.setdefault("provenance", {})
        src = Path(str(row.get("source", "")))
        if prov.get("shape_hash") or src.suffix not in (".yaml", ".yml") or not src.is_file():
            continue
        try:
            cfg = load_config(src)
        except (ConfigError, ValueError):  # not a model config (or no longer one): that row keeps its config hash
            continue
        if _hash(cfg.to_dict()) == prov.get("config_hash"):
            prov["shape_hash"] = _hash(shape_of(cfg))
    return data


# Config fields that set values, not shapes or the work of a step: a converted student keeps the teacher's RoPE base
# and picks which of its rotary pairs to keep (per layer overrides), so its config hash differs from its YAML's
# while its decode step is the same computation.
VALUE_FIELDS = frozenset({"rope_pairs", "rope_theta", "init_std", "norm_eps"})


def shape_of(cfg: ModelConfig) -> dict:
    """The config's shape: its top-level sizes and each layer's resolved block (overrides applied), without
    ``VALUE_FIELDS`` at any depth; two configs of the same shape decode at the same speed, however their layer
    overrides are written."""

    def strip(x: Any) -> Any:
        if isinstance(x, dict):
            return {k: strip(v) for k, v in x.items() if k not in VALUE_FIELDS}
        return [strip(v) for v in x] if isinstance(x, list) else x

    top = {k: v for k, v in cfg.to_dict().items() if k not in ("mixer", "ffn", "layers")}
    return strip({**top, "blocks": [b.model_dump(mode="json") for b in cfg.blocks]})


def _same_measured_shape(row: dict, src: dict) -> bool:
    """For rows stored before shape hashes (their config hashes differ by values such as a converted student's RoPE
    pairs): the same name, parameter count, weight bytes and cache bytes at every length. Rows scored since carry
    ``shape_hash`` and never come here."""
    same = ("name", "parameters", "weight_bytes", "cache_bytes")
    return not row["provenance"].get("shape_hash") and all(row.get(k) == src.get(k) is not None for k in same)


def _merge_speeds(meta: dict, rows: list[dict], speeds: dict) -> None:
    """Each row's speed fields from a row of ``speeds`` (a results.json): the one of the same name, else one of the
    same shape hash, else of the same config hash (a recipe variant of one architecture). It is taken when the two
    have the same shape (shape hashes where both rows have them; else config hashes, or for rows stored before
    shape hashes the same name, parameters, weight and cache bytes); otherwise the row says why it has none
    (``decode_note``). Converted rows take none. ``meta`` (the
    report's settings) takes the decode settings those speeds were measured with, and where they come from."""
    meta["decode_from"] = {k: speeds.get(k) for k in ("path", "date", "device", "command")}
    meta["settings"]["decode"] = speeds["settings"].get("decode")
    other = {r["name"]: r for r in speeds["rows"]}
    by_key: dict = {}  # a variant of one architecture under another name (a recipe experiment) decodes as it does
    for r in speeds["rows"]:
        for key in ("shape_hash", "config_hash"):
            if r.get("provenance", {}).get(key):
                by_key.setdefault((key, r["provenance"][key]), r)
    for row in rows:
        prov = row["provenance"]
        src = other.get(row["name"])
        for key in ("shape_hash", "config_hash"):
            src = src or by_key.get((key, prov.get(key)))
        if row.get("init") == "convert":
            continue
        if src is None:
            row["decode_note"] = f"no row named {row['name']!r} or of its shape in {speeds['path']}"
            continue
        # the same shape where both rows record it (rows scored before 2026-12-05 have only the config hash)
        key = (
            "shape_hash"
            if row["provenance"].get("shape_hash") and src.get("provenance", {}).get("shape_hash")
            else "config_hash"
        )
        mine, theirs = row["provenance"].get(key), src.get("provenance", {}).get(key)
        measured = mine != theirs and key == "config_hash" and _same_measured_shape(row, src)
        if mine != theirs and not measured:
            row["decode_note"] = f"{speeds['path']}'s {row['name']!r} has another config ({key} {theirs} != {mine})"
            continue
        row.pop("decode_note", None)
        # how the speeds were matched, in the row: a row of another name, or by its measured sizes
        row["decode_match"] = f"{src['name']!r} by " + ("name, parameters and cache bytes" if measured else key)
        for k in SPEED_FIELDS:
            if k in src:
                row[k] = src[k]
        row["decode_from"] = speeds["path"]


def _measure_all(plan, teacher, suite: Suite, sets, device, out: Path, show: bool, settings: str) -> None:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    dt = suite.torch_dtype
    n_todo = sum(todo for _, _, todo in plan)
    console = Console(stderr=True, quiet=not show)
    for r, _, todo in plan:
        if not todo:
            console.print(f"[dim]{r.name}: unchanged, kept from {out / 'rows'}[/dim]")
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as bar:
        models = bar.add_task("models", total=n_todo)
        for r, h, todo in plan:
            if not todo:
                continue
            task = bar.add_task(f"  {r.name}: load", total=len(sets) + 2)

            def stage(name: str, r=r, task=task) -> None:
                bar.update(task, description=f"  {r.name}: {name}", advance=1)

            t0 = time.perf_counter()
            model = teacher if r.is_teacher else load(r, dt, device, suite.seed, teacher)
            # the loaded model's own config: a conversion may add per-layer settings of the teacher's (RoPE base),
            # which the trained student's saved config then holds too, so before and after pair by it
            cfg = getattr(model, "cfg", None) or r.cfg
            try:
                row = measure(r, model, teacher, suite, sets, device, stage)
            finally:
                if not r.is_teacher:
                    del model
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
            row["provenance"] = {
                "config_hash": _hash(cfg.to_dict()) if cfg is not None else None,
                "shape_hash": _hash(shape_of(cfg)) if cfg is not None else None,
                "run_dir": str(r.run_dir) if r.run_dir else None,
                "tokens_trained": None,
                **r.provenance,
            }
            row["inputs_hash"] = h
            row["settings_hash"] = settings
            row["seconds"] = time.perf_counter() - t0
            (out / "rows").mkdir(exist_ok=True)
            atomic_write(_row_path(out, r.name), json.dumps(row, indent=2) + "\n")
            bar.update(task, description=f"  {r.name}: done", completed=len(sets) + 2)
            bar.advance(models)
