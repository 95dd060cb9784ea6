"""``archzoo bench decode``: decode speed against the memory roofline, beside Hugging Face ``generate``.

    archzoo bench decode configs/students/teacher.yaml configs/students/mla.yaml smollm2-135m \
        --batch-sizes 1,16,64 --prompt-lens 128,4096 --new-tokens 256 --dtype bf16 --baseline hf --out DIR

A MODEL is a model YAML (random weights, seeded), a saved student folder (``from_pretrained``) or
a teacher: a built-in name, a ``.gguf`` file or a Hugging Face folder (``resolve_teacher``). For
each model x batch size x prompt length x implementation: random prompts (seeded, the same for
every implementation; ``--prompts python-docs`` or another held-out text set or file: windows of real text, one
per row, tokenized by the model's tokenizer), greedy, no EOS, so each row generates exactly ``--new-tokens`` tokens;
``--warmup`` untimed calls (they compile / capture: their compile seconds are reported), then
``--repeat`` timed calls, of which the median decode time is reported.

Implementations: ``archzoo`` (``model.generate``; with ``--decode-attention kernel,sdpa`` also
``archzoo-sdpa``, the same step with masked SDPA in place of the decode-attention kernel), and with
``--baseline hf`` for Llama-shaped
models ``hf-dynamic`` (transformers ``generate``, dynamic cache) and ``hf-static``
(``cache_implementation="static"``, which transformers compiles on CUDA).

Speculative rows (``--draft STUDENT --num-draft-tokens 2,4,8``): implementation ``speculative``,
``model.generate(ids, N, draft=student, num_draft_tokens=k)`` for each k after the model's own rows,
with ``acceptance_rate``, ``accepted_per_verify``, ``tokens_per_verify`` and ``speedup`` (tokens/s over
the ``archzoo`` row of the same shape in this run). Give them real text (``--prompts``): acceptance is a
property of the text, and on random token ids both models continue noise.

Timing: ``model.last_generate_stats`` (compile / prefill / decode seconds, set by ``generate``); for
the HF rows, a logits processor that notes the time of the first step, right after the
prefill (row field ``timing`` says which).

Writes ``DIR/decode.json`` (atomically, after every row), ``DIR/decode.md`` and, at the end,
``DIR/decode.png`` (tokens/s against cache bytes per token, ``decode_chart.py``; with ``--draft`` also
``DIR/decode_spec.png``, ``spec_chart.py``). Bad input (an
unknown model, bad sizes, a length beyond what a model holds, CUDA asked for but absent) raises
``UserError`` before anything is written. A combination that does not fit in GPU memory is
skipped with the reason in its row; a failure of one row is recorded in its ``error`` field and
the run goes on (exit status 1 at the end).
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch

from ..cache import cache_bytes, cache_read_bytes
from ..errors import UserError
from ..kernels._dispatch import forget, last_backend
from .common import (
    atomic_write,
    check_device,
    dtype_name,
    library_versions,
    measure_bandwidth,
    parse_dtype,
    random_prompts,
    sync,
    text_prompts,
    weight_bytes,
)
from .decode_input import (
    ATTENTION_OPS,
    FORM_IMPLEMENTATION,
    RANDOM_PROMPTS,
    ModelSource,
    _check_length,
    _gguf_context,
    _model_limit,
    decode_attention_form,
    decode_linear_form,
    parse_forms,
    parse_inductor_options,
    parse_linears,
    parse_prompts,
    parse_sizes,
    resolve_source,
)
from .decode_report import FORMULAS, LINEAR_SUFFIX, SPECULATIVE, SPECULATIVE_STATS, markdown

IMPLEMENTATIONS = ("archzoo", "hf-dynamic", "hf-static")
BASELINES = ("hf",)
RECOMPILE_LIMIT = 64  # every (batch size, length) is a new shape for torch.compile; dynamo's default of 8 runs out


# --------------------------------------------------------------------------- models


def load_model(src: ModelSource, dtype: torch.dtype, device: torch.device, seed: int = 0):
    """The ArchZooLM of ``src`` in ``dtype`` on ``device`` (a YAML gets seeded random weights)."""
    if src.kind == "yaml":
        from ..model import build_model

        torch.manual_seed(seed)
        model = build_model(src.cfg)  # built on the CPU: the same weights whatever the device
        return model.to(device=device, dtype=dtype).eval()
    if src.kind == "checkpoint":
        from ..checkpoint import from_pretrained

        return from_pretrained(src.arg, device=device, dtype=dtype).eval()
    from ..teacher import TEACHERS, fetch_teacher, resolve_teacher

    model = resolve_teacher(src.arg, dtype=dtype, device=device).eval()
    if src.max_len is None and src.arg in TEACHERS:
        src.max_len = _gguf_context(fetch_teacher(src.arg))  # found, not fetched again: resolve_teacher did that
        src.max_len_from = "context_length in the GGUF header"
    return model


def hf_reason(model) -> str | None:
    """Why no Hugging Face model can be built from ``model`` (None when one can)."""
    try:
        import transformers  # noqa: F401
    except ImportError:
        return "transformers is not installed"
    from ..hf import to_hf_config

    try:
        to_hf_config(model.cfg)
    except ValueError as e:
        return f"not Llama-shaped ({str(e).removeprefix('to_hf_config: ')})"
    return None


def build_hf(model, dtype: torch.dtype, device: torch.device):
    from ..hf import to_hf

    return to_hf(model).to(device=device, dtype=dtype).eval()


# --------------------------------------------------------------------------- timing


def run_archzoo(
    model,
    ids: torch.Tensor,
    new_tokens: int,
    compile: bool | None,
    warmup: int,
    repeat: int,
    device: torch.device,
    draft=None,
    num_draft_tokens: int = 4,
) -> dict:
    """Warm-up then timed ``model.generate`` calls -> the measured fields of one row.

    The times are ``generate``'s own (``model.last_generate_stats``: prefill, the decode loop
    synchronised at both ends, and the compile / capture of a new shape).
    """
    kwargs: dict = {"eos_token_id": None}
    if compile is not None:
        kwargs["compile"] = compile
    if draft is not None:  # speculative: eager unless --compile (then both models' steps compiled by block)
        kwargs.update(draft=draft, num_draft_tokens=num_draft_tokens)

    def call() -> dict:
        out = model.generate(ids, new_tokens, **kwargs)
        stats = dict(model.last_generate_stats)
        if out.shape[1] - ids.shape[1] != new_tokens or stats["new_tokens"] != new_tokens:
            raise RuntimeError(f"generate made {stats['new_tokens']} new tokens, not {new_tokens}")
        return stats

    warm = [call() for _ in range(warmup)]
    runs = [call() for _ in range(repeat)]
    decode = [float(r["decode_s"]) for r in runs]
    stats = runs[decode.index(statistics.median_low(decode))]
    out = {
        "timing": "generate stats",
        "decode_s": float(stats["decode_s"]),
        "decode_steps": stats.get("decode_steps"),
        "prefill_s": float(stats["prefill_s"]),
        "compile_s": sum(float(w["compile_s"]) for w in warm),
        "backend": stats["backend"],
        "cache_bytes_allocated": stats["cache_bytes"],
        "decode_s_runs": decode,
    }
    if draft is not None:
        for key in SPECULATIVE_STATS:
            out[key] = stats.get(key)
    recompiled = sum(float(r["compile_s"]) for r in runs)
    if recompiled > 0:
        out["note"] = f"timed calls spent {recompiled:.2f} s compiling"
    return out


@torch.no_grad()
def run_hf(
    hf, ids: torch.Tensor, new_tokens: int, static: bool, warmup: int, repeat: int, device: torch.device
) -> dict:
    """Warm-up then timed transformers ``generate`` calls -> the measured fields of one row.

    A logits processor notes the (synchronised) time of its first call, right after the prefill, so
    prefill and decode are split inside the same call; it does nothing on later steps.
    """
    from transformers import LogitsProcessor, LogitsProcessorList

    class PrefillClock(LogitsProcessor):
        at: float | None = None

        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
            if self.at is None:
                sync(device)
                self.at = time.perf_counter()
            return scores

    gen = hf.generation_config
    pad = next((t for t in (gen.pad_token_id, gen.eos_token_id) if t is not None), 0)
    kwargs = dict(
        attention_mask=torch.ones_like(ids),
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        pad_token_id=pad[0] if isinstance(pad, list) else pad,
    )
    if static:
        kwargs["cache_implementation"] = "static"

    def call() -> tuple[float, float]:
        clock = PrefillClock()
        sync(device)
        t0 = time.perf_counter()
        o = hf.generate(ids, logits_processor=LogitsProcessorList([clock]), **kwargs)
        sync(device)
        wall = time.perf_counter() - t0
        if o.shape[1] - ids.shape[1] != new_tokens:
            raise RuntimeError(f"transformers generate made {o.shape[1] - ids.shape[1]} new tokens, not {new_tokens}")
        return wall, clock.at - t0

    warm = [call() for _ in range(warmup)]
    runs = [call() for _ in range(repeat)]
    decode = [wall - prefill for wall, prefill in runs]
    i = decode.index(statistics.median_low(decode))
    compiled = static and getattr(hf, "_compiled_call", None) is not None
    return {
        "timing": "prefill clock",
        "backend": "compiled" if compiled else "eager",
        "decode_s": decode[i],
        "prefill_s": runs[i][1],
        "decode_s_runs": decode,
        "compile_s": max(sum(w for w, _ in warm) - warmup * runs[i][0], 0.0) if compiled else 0.0,
        "note": f"attn {getattr(hf.config, '_attn_implementation', '?')}",
    }


# --------------------------------------------------------------------------- the run


def _set_recompile_limit() -> int | None:
    try:
        import torch._dynamo.config as dyn
    except ImportError:
        return None
    name = "recompile_limit" if hasattr(dyn, "recompile_limit") else "cache_size_limit"
    setattr(dyn, name, max(getattr(dyn, name), RECOMPILE_LIMIT))
    return getattr(dyn, name)


def run_decode_bench(
    models: Sequence[str],
    batch_sizes: Sequence[int] | str = (1, 16, 64),
    prompt_lens: Sequence[int] | str = (128, 4096),
    new_tokens: int = 256,
    dtype: str | torch.dtype = "bf16",
    device: str = "cuda",
    baseline: str | None = None,
    out_dir: str | Path = "decode-bench",
    compile: bool | None = None,
    warmup: int = 1,
    repeat: int = 1,
    seed: int = 0,
    command: str | None = None,
    log: Callable[[str], None] = print,
    draft: str | None = None,
    num_draft_tokens: Sequence[int] | str | None = None,
    decode_attention: Sequence[str] | str = ("kernel",),
    inductor_options: Sequence[dict] | str | None = None,
    decode_linear: Sequence[str] | str = ("cublas",),
    prompts: str = "random",
) -> list[dict]:
    """Measure every model x batch size x prompt length x implementation; write decode.json / decode.md.

    With ``draft`` (a MODEL argument: YAML, student folder, teacher) each model also gets
    ``speculative`` rows, one per ``num_draft_tokens`` value. Returns the rows. Every check on the
    input runs before anything is written.
    """
    batch_sizes = parse_sizes("--batch-sizes", batch_sizes)
    prompt_lens = parse_sizes("--prompt-lens", prompt_lens)
    if new_tokens < 1:
        raise UserError(f"--new-tokens: expected a positive integer, got {new_tokens}")
    if warmup < 0 or repeat < 1:
        raise UserError(f"--warmup must be >= 0 and --repeat >= 1, got {warmup} and {repeat}")
    if baseline not in (None, *BASELINES):
        raise UserError(f"--baseline: unknown baseline {baseline!r}; expected one of {', '.join(BASELINES)}")
    if not models:
        raise UserError("bench decode: give at least one MODEL")
    if num_draft_tokens is not None and draft is None:
        raise UserError("--num-draft-tokens: goes with --draft STUDENT")
    num_draft_tokens = parse_sizes("--num-draft-tokens", (4,) if num_draft_tokens is None else num_draft_tokens)
    forms = parse_forms(decode_attention)
    linears = parse_linears(decode_linear)
    option_sets = parse_inductor_options(inductor_options)
    dt = parse_dtype(dtype)
    dev = check_device(device)
    sources = [resolve_source(m) for m in dict.fromkeys(models)]  # a model named twice is measured once
    draft_src = resolve_source(draft) if draft is not None else None
    for src in sources + ([draft_src] if draft_src else []):
        _check_length(src, max(prompt_lens), new_tokens)
    prompts = parse_prompts(prompts, sources)  # the targets tokenize; a draft reads its target's token ids
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--out {out_dir}: exists and is not a folder")

    recompile_limit = _set_recompile_limit()
    meta = {
        "benchmark": "decode",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": command or "archzoo bench decode " + " ".join(shlex.quote(m) for m in models),
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"cpu ({platform.processor() or 'cpu'})",
        "device_type": dev.type,
        "cpu_threads": torch.get_num_threads(),
        **library_versions(),
        "dtype": dtype_name(dt),
        "batch_sizes": batch_sizes,
        "prompt_lens": prompt_lens,
        "new_tokens": new_tokens,
        "warmup": warmup,
        "repeat": repeat,
        "seed": seed,
        "prompts": prompts,
        "compile": compile,
        "baseline": baseline,
        "dynamo_recompile_limit": recompile_limit,
        "draft": draft,
        "num_draft_tokens": num_draft_tokens if draft is not None else None,
        "decode_attention": forms,
        "decode_linear": linears,
        "inductor_options": option_sets,
    }
    log(f"bench decode: measuring {dev.type} memory bandwidth")
    meta["bandwidth"] = measure_bandwidth(dev)
    meta["formulas"] = FORMULAS
    log(f"bench decode: {meta['device']}, {meta['bandwidth']['bytes_per_s'] / 1e9:.1f} GB/s (copy)")
    run = _Run(
        meta, [], out_dir, batch_sizes, prompt_lens, new_tokens, dt, dev, baseline, compile, warmup, repeat, seed, log
    )
    run.draft, run.num_draft_tokens, run.forms, run.option_sets = draft_src, num_draft_tokens, forms, option_sets
    run.linears, run.prompts = linears, prompts
    for src in sources:
        _bench_model(src, run)
        # The freed model's compiled blocks stay in dynamo's cache of the shared Block.forward code and
        # count toward the recompile limit: 16 models x 4 shapes hit it. Start each model afresh.
        torch._dynamo.reset()
    write_results(out_dir, meta, run.rows)
    write_chart(out_dir, meta, run.rows)
    return run.rows


@dataclass
class _Run:
    """The settings of one run and the rows measured so far."""

    meta: dict
    rows: list[dict]
    out_dir: Path
    batch_sizes: list[int]
    prompt_lens: list[int]
    new_tokens: int
    dtype: torch.dtype
    device: torch.device
    baseline: str | None
    compile: bool | None
    warmup: int
    repeat: int
    seed: int
    log: Callable[[str], None]
    draft: ModelSource | None = None
    num_draft_tokens: list[int] | None = None
    forms: list[str] = field(default_factory=lambda: ["kernel"])
    linears: list[str] = field(default_factory=lambda: ["cublas"])
    option_sets: list[dict] = field(default_factory=lambda: [{}])
    prompts: str = "random"

    def write(self) -> None:
        write_results(self.out_dir, self.meta, self.rows)


def _bench_model(src: ModelSource, run: _Run) -> None:
    """Every row of one model: the archzoo rows, then (``--baseline hf``) the HF rows with only the HF model loaded."""
    dt, dev, new_tokens, log = run.dtype, run.device, run.new_tokens, run.log
    combos = [(b, p) for b in run.batch_sizes for p in run.prompt_lens]
    impls = IMPLEMENTATIONS if run.baseline == "hf" else IMPLEMENTATIONS[:1]
    log(f"bench decode: loading {src.arg}")
    try:
        model = load_model(src, dt, dev, run.seed)
    except torch.OutOfMemoryError:
        model = None
    if model is None:
        _free(dev)
        for impl in impls:
            for b, p in combos:
                run.rows.append(
                    _base_row(src, impl, b, p, new_tokens, dt) | {"skipped": "the model does not fit in memory"}
                )
        run.write()
        return
    if src.max_len is None:
        src.max_len, src.max_len_from = _model_limit(model)
    _check_length(src, max(run.prompt_lens), new_tokens)
    cfg, params = model.cfg, model.num_parameters()
    stream = None if run.prompts == RANDOM_PROMPTS else text_stream(model, run.prompts, run.seed)

    def prompt_ids(b: int, p: int) -> torch.Tensor:
        """The prompts of a (batch, length) shape: the same for every implementation of it."""
        if stream is None:
            return random_prompts(cfg.vocab_size, b, p, run.seed, dev)
        return text_prompts(stream, b, p, dev)

    def new_row(impl: str, b: int, p: int, wbytes: int) -> dict:
        row = _base_row(src, impl, b, p, new_tokens, dt)
        row.update(
            prompts=run.prompts,
            parameters=params,
            cache_bytes=cache_bytes(cfg, b, p + new_tokens, dt),
            weight_bytes=wbytes,
            step_bytes=wbytes + cache_read_bytes(cfg, b, p + new_tokens // 2, dt),
        )
        run.rows.append(row)
        return row

    def measure(row: dict, fn: Callable[[torch.Tensor], dict]) -> None:
        ids = prompt_ids(row["batch_size"], row["prompt_len"])
        _free(dev)
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        oom = False
        try:
            row.update(fn(ids))
        except torch.OutOfMemoryError:
            oom = True  # handled below, once the exception no longer holds the row's tensors
        except Exception as e:  # one failed row is reported, the others still run
            row["error"] = f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:300]}"
        if oom:
            row["skipped"] = f"out of {dev.type} memory"
        if dev.type == "cuda":
            row["peak_memory_bytes"] = torch.cuda.max_memory_allocated(dev)
        _finish_row(row, run.meta["bandwidth"]["bytes_per_s"], new_tokens)
        log(_progress(row))
        run.write()

    kw = dict(new_tokens=new_tokens, warmup=run.warmup, repeat=run.repeat, device=dev)
    wbytes = weight_bytes(model)
    pool = getattr(model, "decode_pool", None)
    for b, p in combos:
        # side by side in one process: the decode-attention kernel and masked SDPA, and inductor option sets
        for options in run.option_sets:
            model.compile_options = options
            for form, lin in [(f, ln) for f in run.forms for ln in run.linears]:
                if pool is not None and hasattr(pool, "clear"):
                    pool.clear()  # the previous row's captured step and cache: freed, so peak memory is this row's
                impl = FORM_IMPLEMENTATION[form] + LINEAR_SUFFIX[lin]
                row = new_row(impl, b, p, wbytes)
                row["decode_attention"] = form
                row["decode_linear"] = lin
                if options:
                    row["inductor_options"] = options
                forget(*ATTENTION_OPS, "decode_linear")
                with decode_attention_form(form), decode_linear_form(lin):
                    measure(row, partial(run_archzoo, model, **kw, compile=run.compile))
                if lin != "cublas":  # what the projections really ran: the GEMV records itself when it runs; a
                    # projection that does not fit it records "cublas" eagerly and nothing while traced
                    row["linear_backend"] = last_backend("decode_linear") or "cublas"
                # which decode attention really ran (the custom ops record it when they run; SDPA records
                # nothing inside a compiled step): none of the kernels means masked SDPA
                ran = {op: last_backend(op) for op in ATTENTION_OPS if last_backend(op)}
                row["attention_backend"] = ran or "sdpa"
    if pool is not None and hasattr(pool, "clear"):
        pool.clear()
    if run.draft is not None:
        _speculative_rows(model, src, run, combos, new_row, measure, kw, prompt_ids)
    if run.baseline != "hf":
        model = None
        _free(dev)
        return

    hf, skip, error = None, hf_reason(model), None
    if skip is None:
        log(f"bench decode: building the transformers model of {src.arg}")
        try:
            hf = build_hf(model, dt, dev)
        except torch.OutOfMemoryError:
            skip = "the transformers model does not fit in memory"
        except Exception as e:
            error = f"to_hf: {type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:300]}"
    model = pool = None  # the HF rows run with the transformers model alone in memory
    _free(dev)
    hf_bytes = weight_bytes(hf) if hf is not None else wbytes
    for b, p in combos:
        for impl in IMPLEMENTATIONS[1:]:
            row = new_row(impl, b, p, hf_bytes)
            if hf is None:
                row["skipped" if skip else "error"] = skip or error
                log(_progress(row))
                run.write()
                continue
            measure(row, partial(run_hf, hf, **kw, static=impl == "hf-static"))
            if hasattr(hf, "_cache"):
                hf._cache = None  # transformers keeps the static cache on the model: free it for the next row
    hf = None
    _free(dev)


def _speculative_rows(model, src: ModelSource, run: _Run, combos, new_row, measure, kw: dict, prompt_ids) -> None:
    """``speculative`` rows: ``model`` verifying the drafts of ``run.draft``, one row per k, shape, ``--decode-linear``
    form and ``--decode-attention`` form, each run under those forms (the target's verify and the draft's steps
    alike) and compared with the plain row of the same forms: a speculative row under the GEMV against a cuBLAS
    plain row would credit the GEMV to the draft. ``--decode-attention kernel,sdpa`` times the (B, k+1) verify
    through the decode-attention kernel (several query tokens a row) against masked SDPA over the buffer."""
    run.log(f"bench decode: loading the draft {run.draft.arg}")
    own = {
        (r["batch_size"], r["prompt_len"], r.get("decode_linear"), r.get("decode_attention")): r
        for r in run.rows
        if r["model"] == src.arg and r.get("decode_attention") in run.forms and not r.get("inductor_options")
    }
    draft, error = None, None
    try:
        draft = load_model(run.draft, run.dtype, run.device, run.seed)
    except torch.OutOfMemoryError:
        error = "the draft does not fit in memory"
    # as the plain rows it is compared with: compiled and captured on CUDA unless --no-compile
    spec_compile = run.compile if run.compile is not None else run.device.type == "cuda"
    draft_ms: dict = {}  # (b, p, lin) -> the draft's own step alone: what k+1 of them cost in a round
    cells = [(c, k, ln, f) for c in combos for k in run.num_draft_tokens for ln in run.linears for f in run.forms]
    for (b, p), k, lin, form in cells:
        row = new_row(SPECULATIVE, b, p, weight_bytes(model) + (weight_bytes(draft) if draft is not None else 0))
        row.update(draft=run.draft.arg, num_draft_tokens=k, decode_linear=lin, decode_attention=form)
        if draft is None:
            row["skipped"] = error
            run.write()
            continue
        if (b, p, lin, form) not in draft_ms:
            with decode_attention_form(form):
                draft_ms[b, p, lin, form] = _draft_step_ms(draft, prompt_ids(b, p), lin, spec_compile, kw)
        with decode_attention_form(form), decode_linear_form(lin):
            measure(row, partial(run_archzoo, model, **kw, compile=spec_compile, draft=draft, num_draft_tokens=k))
            if not row.get("error") and not row.get("skipped"):
                ids = prompt_ids(b, p)
                try:
                    row.update(greedy_agreement(model, draft, ids, run.new_tokens, k, spec_compile))
                except torch.OutOfMemoryError:
                    row["greedy_note"] = "the agreement check did not fit in memory"
        base = own.get((b, p, lin, form), {})
        if row.get("tokens_per_s") and base.get("tokens_per_s"):
            row["speedup"] = row["tokens_per_s"] / base["tokens_per_s"]
        dms, why = draft_ms[b, p, lin, form]
        if why:
            row["draft_step_note"] = why
        if row.get("decode_s") and row.get("verify_steps"):  # where a round's time goes
            row["round_ms"] = row["decode_s"] * 1e3 / row["verify_steps"]
            row["draft_ms_per_step"] = dms
            if dms is not None and base.get("ms_per_token"):
                row["round_rest_ms"] = row["round_ms"] - (k + 1) * dms - base["ms_per_token"]
        run.write()
    draft = None
    _free(run.device)


def _draft_step_ms(draft, ids: torch.Tensor, lin: str, compile: bool | None, kw: dict) -> tuple[float | None, str]:
    """The draft's own decode step at this shape and ``--decode-linear`` form, decoding alone, in ms, or None and
    why not (the speculative rows still run; their ``draft_step_note`` says why their round is not split)."""
    pool = getattr(draft, "decode_pool", None)
    try:
        with decode_linear_form(lin):
            r = run_archzoo(draft, ids, **kw, compile=compile)
        if not r.get("decode_s"):
            return None, f"the draft alone measured no decode time ({r.get('note') or 'no note'})"
        return r["decode_s"] / kw["new_tokens"] * 1e3, ""
    except Exception as e:
        return None, f"the draft alone failed: {type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:200]}"
    finally:
        if pool is not None and hasattr(pool, "clear"):
            pool.clear()  # its captured step and cache: freed before the rounds are captured


def text_stream(model, name: str, seed: int) -> torch.Tensor:
    """``--prompts NAME``: the held-out text set or file ``NAME`` as one token stream of ``model``'s tokenizer
    (a ``teacher-*`` set is sampled from ``model`` itself, cached as ``archzoo.data.heldout`` says)."""
    from ..data.heldout import heldout_texts
    from ..data.text import tokenize_texts

    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None:
        raise UserError(f"--prompts {name}: the model has no tokenizer; use --prompts random")
    try:
        return tokenize_texts(heldout_texts(name, teacher=model, seed=seed), tokenizer)
    except ValueError as e:
        raise UserError(f"--prompts {name}: {e}") from None


@torch.no_grad()
def greedy_agreement(model, draft, ids: torch.Tensor, new_tokens: int, k: int, compile: bool | None) -> dict:
    """Greedy tokens of ``model`` alone against ``model`` verifying ``draft``'s k-token proposals, on the same
    prompts and the same compile setting as the timed rows. Exact arithmetic gives the same tokens (tests hold it in
    float64); in bf16 the (B, k+1) verify forward rounds differently from the one-token step, so where the top two
    logits are nearly tied the argmax can flip, and from there the row continues differently.

    -> ``greedy_rows_differing`` (rows whose tokens differ anywhere), ``greedy_first_difference`` (per such row, the
    index of its first differing new token: where the near-tie was), ``greedy_tokens_differing`` (positions that
    differ in all, the continuations after a flip included)."""
    kwargs: dict = {"eos_token_id": None}
    if compile is not None:
        kwargs["compile"] = compile
    alone = model.generate(ids, new_tokens, **kwargs)[:, ids.shape[1] :]
    spec = model.generate(ids, new_tokens, draft=draft, num_draft_tokens=k, **kwargs)[:, ids.shape[1] :]
    diff = alone != spec
    rows = diff.any(dim=1)
    first = [int(torch.nonzero(diff[i])[0]) for i in torch.nonzero(rows).flatten().tolist()]
    return {
        "greedy_rows_differing": int(rows.sum()),
        "greedy_first_difference": first,
        "greedy_tokens_differing": int(diff.sum()),
    }


def _base_row(src: ModelSource, impl: str, batch_size: int, prompt_len: int, new_tokens: int, dt) -> dict:
    return {
        "model": src.arg,
        "source": src.kind,
        "implementation": impl,
        "backend": None,
        "batch_size": batch_size,
        "prompt_len": prompt_len,
        "new_tokens": new_tokens,
        "dtype": dtype_name(dt),
        "tokens_per_s": None,
        "ms_per_token": None,
        "prefill_ms": None,
        "decode_s": None,
        "cache_bytes": None,
        "weight_bytes": None,
        "step_bytes": None,
        "peak_memory_bytes": None,
        "hbm_fraction": None,
        "compile_s": None,
        "timing": None,
    }


def _finish_row(row: dict, bandwidth: float, new_tokens: int) -> None:
    prefill_s = row.pop("prefill_s", None)
    if row.get("skipped") or row.get("error"):
        return
    if prefill_s is not None:
        row["prefill_ms"] = prefill_s * 1e3
    if row.get("decode_s") is None:
        return
    step_s = row["decode_s"] / new_tokens
    row["tokens_per_s"] = row["batch_size"] * new_tokens / row["decode_s"]
    row["ms_per_token"] = step_s * 1e3
    row["hbm_fraction"] = row["step_bytes"] / step_s / bandwidth


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _progress(row: dict) -> str:
    head = f"{row['model']} {row['implementation']} batch {row['batch_size']} prompt {row['prompt_len']}:"
    if row.get("skipped"):
        return f"{head} skipped: {row['skipped']}"
    if row.get("error"):
        return f"{head} error: {row['error']}"
    if row.get("tokens_per_s") is None:
        return f"{head} {row.get('note')}"
    return (
        f"{head} {row['tokens_per_s']:,.0f} tokens/s, {row['ms_per_token']:.2f} ms/step, "
        f"{100 * row['hbm_fraction']:.1f}% of bandwidth ({row['backend']}, compile {row['compile_s'] or 0:.1f} s)"
    )


# --------------------------------------------------------------------------- output


def write_results(out_dir: str | Path, meta: dict, rows: list[dict]) -> None:
    """``decode.json`` and ``decode.md`` in ``out_dir``, each written to a temporary file and moved in place."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(out_dir / "decode.json", json.dumps({**meta, "rows": rows}, indent=2) + "\n")
    atomic_write(out_dir / "decode.md", markdown(meta, rows))


def write_chart(out_dir: str | Path, meta: dict, rows: list[dict]) -> Path | None:
    """``decode.png`` (``decode_chart``: tokens/s against cache bytes per token) once the run is done, and with
    speculative rows ``decode_spec.png`` (``spec_chart``: the target alone against each draft length), each
    written to a temporary file and moved in place; returns decode.png, None when no row measured a speed."""
    from .decode_chart import decode_chart
    from .spec_chart import spec_chart

    out_dir = Path(out_dir)
    written = None
    for name, draw in (("decode.png", decode_chart), ("decode_spec.png", spec_chart)):
        tmp = out_dir / f".{name}.tmp.png"
        try:
            if draw(tmp, meta, rows) is not None:
                os.replace(tmp, out_dir / name)
                written = written or out_dir / name
        finally:
            tmp.unlink(missing_ok=True)
    return written


# --------------------------------------------------------------------------- CLI


class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one-line ``UserError``s (exit 2 through the archzoo CLI)."""

    def error(self, message: str):
        raise UserError(f"bench decode: {message}")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="archzoo bench decode", description=__doc__.splitlines()[0])
    p.add_argument(
        "models", nargs="+", metavar="MODEL", help="model YAML, student folder, teacher name, .gguf, HF folder"
    )
    p.add_argument("--batch-sizes", default="1,16,64", help="comma-separated (default 1,16,64)")
    p.add_argument("--prompt-lens", default="128,4096", help="comma-separated prompt lengths (default 128,4096)")
    p.add_argument("--new-tokens", type=int, default=256, help="tokens generated per row (default 256)")
    p.add_argument("--dtype", default="bf16", help="bf16 (default), fp16, fp32")
    p.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    p.add_argument("--baseline", default=None, choices=BASELINES, help="hf: add transformers generate rows")
    p.add_argument(
        "--compile",
        default=None,
        action=argparse.BooleanOptionalAction,
        help="pass compile=True/False to model.generate (default: generate's own default, on for CUDA)",
    )
    p.add_argument("--warmup", type=int, default=1, help="untimed calls before timing (default 1; they compile)")
    p.add_argument("--repeat", type=int, default=1, help="timed calls; the median is reported (default 1)")
    p.add_argument("--seed", type=int, default=0, help="seed of random weights and prompts (default 0)")
    p.add_argument(
        "--prompts",
        default=RANDOM_PROMPTS,
        help="random (default: seeded token ids) or real text cut into one window per row: a held-out set "
        "(python-docs, shakespeare-heldout, teacher-heldout, teacher-long-heldout) or a text / JSONL / Parquet file "
        "or folder, tokenized by the model's tokenizer; speculative rows want real text",
    )
    p.add_argument("--draft", default=None, metavar="STUDENT", help="add speculative rows with this draft MODEL")
    p.add_argument(
        "--num-draft-tokens", default=None, help="comma-separated draft lengths k of the speculative rows (default 4)"
    )
    p.add_argument(
        "--decode-attention",
        default="kernel",
        help="the one-token step's attention: kernel (default; archzoo.kernels.decode_attention), sdpa (masked "
        "SDPA over the whole buffer), or kernel,sdpa for both side by side (rows archzoo / archzoo-sdpa)",
    )
    p.add_argument(
        "--inductor-options",
        default=None,
        help="inductor option sets for the compiled step, side by side: sets separated by ';', KEY=VALUE pairs by "
        "',' (an empty set: the defaults), e.g. ';coordinate_descent_tuning=1'",
    )
    p.add_argument(
        "--decode-linear",
        default="cublas",
        help="the step's projections: cublas (default here, the baseline; F.linear), kernel "
        "(archzoo.kernels.decode_linear, a Triton GEMV for up to 64 rows), kernel-pdl (the same, each decode kernel "
        "launched with programmatic dependent launch), kernel-pdl-l2 (kernel-pdl, and each GEMV of 8 rows or more "
        "asking L2 for its weights before it waits on the kernel before), kernel-pdl-m16 (kernel-pdl with x's rows "
        "in tiles of 16 a program), kernel-pdl-l2-m16 (both), auto (the library's default: the GEMV "
        "with PDL up to layers.fused.AUTO_MAX_ROWS rows on CUDA, cuBLAS above), auto-qkv (auto, and every "
        "attention layer's Q|K|V with RoPE and the cache write as one GEMV kernel up to 64 rows), or several side "
        "by side, e.g. cublas,kernel,kernel-pdl (rows archzoo / -gemv / -gemv-pdl)",
    )
    p.add_argument("--out", required=True, help="output folder: decode.json, decode.md and decode.png")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    rows = run_decode_bench(
        args.models,
        args.batch_sizes,
        args.prompt_lens,
        args.new_tokens,
        args.dtype,
        args.device,
        args.baseline,
        args.out,
        compile=args.compile,
        warmup=args.warmup,
        repeat=args.repeat,
        seed=args.seed,
        command="archzoo bench decode " + shlex.join(argv),
        draft=args.draft,
        num_draft_tokens=args.num_draft_tokens,
        decode_attention=args.decode_attention,
        inductor_options=args.inductor_options,
        decode_linear=args.decode_linear,
        prompts=args.prompts,
    )
    out = Path(args.out)
    print(f"bench decode: {len(rows)} rows -> {out / 'decode.json'}, {out / 'decode.md'}")
    failed = [r for r in rows if r.get("error")]
    if failed:
        print(f"bench decode: {len(failed)} row(s) failed; see their 'error' field", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
