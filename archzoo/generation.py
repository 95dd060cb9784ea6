"""``ArchZooLM.generate``: batched decoding through the cache, with a captured step on CUDA.

The fast path is gpt-fast's: a prefill through the ordinary forward, then one decode step per token
whose shapes never change, compiled and captured in a CUDA graph that is replayed once per token.

- Compiled by region: each block goes through ``torch.compile(fullgraph=True)`` (inductor fuses its
  small ops), and blocks of one family and shape share one compiled graph. Compiling the whole step
  as one graph unrolls all layers: 30-65 s per shape for the SmolLM2-sized students on an H200,
  against seconds per block. The glue (embedding, final norm, head, sampling) runs as is.
- Captured with ``torch.cuda.CUDAGraph`` ourselves rather than ``mode="reduce-overhead"``: the step
  mutates the cache in place, and the cache's buffers are inputs to the step, not module buffers,
  which inductor's CUDA-graph trees decline to capture ("mutated inputs"); our own capture also
  keeps sampling, the EOS bookkeeping and the write of each new token into the output inside the
  same graph, so a step costs one graph launch and no host synchronisation.

Graphs hold the addresses of their buffers, so a captured step lives with its cache. Caches are
allocated in length buckets (the next power of two of prompt + new tokens, at least 256), and a
graph is kept per (batch size, bucket, dtype, sampling settings, EOS ids, ``decode_switches()``): a new
prompt length within the bucket reuses it, a flipped kernel switch captures anew. The pool keeps the
``GRAPHS_KEPT`` most recently used; ``clear()`` frees them. The first call for a key pays the compile and
capture, reported in ``model.last_generate_stats["compile_s"]``, never hidden.

Prompts of different lengths: each row's cache holds its own prompt from position 0 (no left
padding) and the cache's per-row ``lengths`` say how far; the rows of each distinct length are prefilled
together (``archzoo.prefill``), then all decode together.

Speculative decoding (``draft=``) runs ``archzoo.speculative``'s static round instead of the step; with
``compile=True`` the round is pooled here too (``_get_round``, under keys of its own) and, on CUDA for a target
that rewinds by length, captured whole in one graph by the same ``_capture``.

A call whose decode forwards an MoE layer would route by sorting (more than ``MoE.STATIC_MAX_TOKENS`` tokens:
the batch, or batch x (k+1) in a speculative verify) cannot be compiled whole or captured (``uncapturable``);
it runs eagerly, the reason logged once and kept in ``last_generate_stats["uncaptured"]``.
"""

from __future__ import annotations

import sys
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .cache import Cache
from .kernels import _capture as capture_ops
from .kernels._dispatch import once
from .layers import attention as attention_layer
from .layers import base as base_layer
from .layers import fused as fused_layer
from .layers import mamba as mamba_layer
from .layers import moe as moe_layer
from .layers import s4 as s4_layer
from .layers.moe import MoE
from .prefill import prefill_rows
from .sampling import sample_next
from .speculative import SpeculativeRound, cache_length, check_draft, speculative_generate

GRAPHS_KEPT = 4
MIN_BUCKET = 256
EARLY_STOP_EVERY = 16  # steps between the host's looks at "has every row emitted EOS?"


def bucket_length(n: int) -> int:
    """Cache length for ``n`` tokens: the next power of two, at least ``MIN_BUCKET``."""
    return max(MIN_BUCKET, 1 << (n - 1).bit_length())


@dataclass
class _Step:
    """Static tensors one decode step reads and writes, and (when captured) its graph."""

    cache: Cache
    token: torch.Tensor  # (B, 1) the latest token of each row; the step replaces it with the next
    done: torch.Tensor  # (B,) bool: the row has emitted an EOS id
    out: torch.Tensor  # (B, cache length) generated tokens, written by index
    index: torch.Tensor  # () long: column of ``out`` the next step writes
    eos: torch.Tensor | None = None  # (n,) EOS ids
    fn: object = None  # the (compiled) step function
    graph: torch.cuda.CUDAGraph | None = None


class DecodePool:
    """Captured decode steps of one model, keyed by their shapes and settings (LRU).

    A captured graph reads the weights at the addresses they had when it was captured. ``weights`` is the
    signature of those addresses and of the fused decode copies (``weight_addresses``); when the model's
    tensors moved (``load_state_dict(..., assign=True)``, ``.to()`` there and back, a parameter replaced, the
    copies released and made anew), every entry is dropped and the next call captures anew. Values changed
    in place need nothing: the graph reads them.
    """

    def __init__(self):
        self.entries: OrderedDict[tuple, _Step] = OrderedDict()
        self.weights: int | None = None

    def clear(self) -> None:
        self.entries.clear()
        self.weights = None

    def check_weights(self, model) -> None:
        sig = weight_addresses(model)
        if sig != self.weights:
            self.entries.clear()
            self.weights = sig

    # Captured graphs and their caches belong to one model's weights on one device: a copy of the
    # model (deepcopy, pickling for a worker) starts with an empty pool.
    def __deepcopy__(self, memo) -> DecodePool:
        return DecodePool()

    def __getstate__(self) -> dict:
        return {"entries": OrderedDict()}


def decode_switches() -> tuple[tuple[str, str], ...]:
    """The module-level switches that pick the kernels a decode step runs, read while the step is traced; part of
    every pool key (``_get_step``, ``_get_round``).

    ``layers.fused.DECODE_LINEAR`` (the step's projections: ``F.linear`` or the GEMV kernel) and
    ``layers.attention.DECODE_ATTENTION`` (softmax and MLA decode attention: the decode kernel or masked SDPA) and
    ``layers.mamba.FUSED_STEP`` (a Mamba layer's conv update .. state update as one kernel or four) and
    ``IN_PROJ_CONV`` (its in_proj with the conv step in the GEMV's epilogue), ``layers.s4.FUSED_STEP`` (S4D's step as
    one kernel), ``kernels._pdl.UPDATE_KERNELS`` (the SSM update kernels in the PDL chain),
    ``layers.moe.DECODE_EXPERTS`` (a few tokens' MoE: compiled reductions, the experts or the routing too in Triton) and
    ``layers.base.ONCE_A_STEP`` with ``kernels._capture.COPY_OUTPUTS`` (per-layer constants made once a step). A
    captured graph replays the kernels it captured and reads neither again, so a pooled graph captured under one
    setting would run on after user code flipped it; in the key, a flip captures anew (and flipping back finds the
    old entry). The compiled blocks need nothing: dynamo guards on the module globals a traced step reads (each
    switch is read first, wherever a step consults it), so a flip recompiles them; tests hold both.
    Not here: ``layers.moe.DISPATCH``, read only on MoE's sorted path, which no compiled or captured step takes
    (``uncapturable``); ``kernels._launch.FAST_LAUNCH``, which changes how the host launches a kernel, not which kernel
    a graph holds. With "auto", ``layers.fused.AUTO_MAX_ROWS`` and ``QKV_MAX_ROWS`` too; ``ROPE_WRITE_MIN_ROWS``
    (RoPE and the cache write in one kernel after cuBLAS's Q|K|V); and ``kernels._pdl.ENABLED``
    (the decode kernels launched with programmatic dependent launch: a launch attribute the captured graph keeps), read
    from the module only once it is imported (it imports Triton, which ``archzoo`` itself never does at import).
    """
    pdl = sys.modules.get("archzoo.kernels._pdl")
    switches = [("DECODE_LINEAR", fused_layer.DECODE_LINEAR), ("DECODE_ATTENTION", attention_layer.DECODE_ATTENTION)]
    if fused_layer.DECODE_LINEAR == "auto":
        switches.append(("AUTO_MAX_ROWS", fused_layer.AUTO_MAX_ROWS))
        switches.append(("QKV_MAX_ROWS", fused_layer.QKV_MAX_ROWS))
    switches.append(("ROPE_WRITE_MIN_ROWS", fused_layer.ROPE_WRITE_MIN_ROWS))  # RoPE + cache write after F.linear
    if pdl is not None:
        switches.append(("PDL", pdl.ENABLED))  # None: wherever it can run (the default), True, False
        switches.append(("PDL_UPDATE_KERNELS", pdl.UPDATE_KERNELS))  # the SSM update kernels in the PDL chain
    switches.append(("MAMBA_FUSED_STEP", mamba_layer.FUSED_STEP))  # the Mamba step's middle as one kernel or four
    switches.append(("MAMBA_IN_PROJ_CONV", mamba_layer.IN_PROJ_CONV))  # in_proj with the conv step in its epilogue
    switches.append(("S4_FUSED_STEP", s4_layer.FUSED_STEP))  # S4D's step as one kernel or the compiled ops
    switches.append(("MOE_DECODE_EXPERTS", moe_layer.DECODE_EXPERTS))  # a few tokens' MoE: reductions, kernel or fused
    # a step's per-layer constants made once, and the update ops' outputs copied or not (tools/decode_profile.py --once)
    switches.append(("ONCE_A_STEP", (base_layer.ONCE_A_STEP, capture_ops.COPY_OUTPUTS)))
    return tuple(switches)


def uncapturable(model, rows: int) -> str | None:
    """Why a decode forward of ``rows`` tokens through ``model`` (a step: the batch; a speculative verify: batch x
    (k+1)) cannot be compiled whole or captured, or None when it can.

    An MoE layer routes more than ``MoE.STATIC_MAX_TOKENS`` tokens, or any number under a capacity (training mode,
    ``capacity_at_inference``), by sorting (``MoE.static_unfit``), and its per-expert loop reads the experts'
    loads on the host (``kept.tolist()``): dynamo cannot trace that into one graph (``fullgraph=True`` fails on the
    data-dependent split), and inside a CUDA graph capture the read fails with an obscure CUDA error.
    """
    for name, m in model.named_modules():
        if isinstance(m, MoE) and (why := m.static_unfit(rows)) is not None:
            return f"MoE layer {name}: {why}"
    return None


def explain_unfused(model, B: int, T: int) -> None:
    """Log (once, on the host) why an attention layer's Q|K|V, RoPE and cache write will run as separate ops in
    a compiled decode forward of B rows x T tokens where the settings ask for one kernel (a bias, another dtype,
    a ring buffer, too many rows: ``Attention.step_fusion``). The traced step decides the same from the same host
    values but cannot log, and a compiled ``generate`` runs no eager step that would. Call after
    ``refresh_fused`` (before it no layer has its fused copy). The norm is the block's, as a decode step on the
    fused copies hands it to a mixer that takes it (``model.Block.forward``)."""
    dtype, device = model.embed.weight.dtype, model.embed.weight.device
    for m in model.modules():
        mixer = getattr(m, "mixer", None)
        if isinstance(mixer, attention_layer.Attention) and mixer.has_fused_copy():
            norm = m.mixer_norm if getattr(mixer, "TAKES_NORM", False) else None
            mixer.step_fusion(B, T, dtype, device, norm)


def _run_eagerly(stats: dict, reason: str) -> None:
    """Record (and log once) why a call that asked to compile runs eagerly instead.

    Eager, not an error: as a speculative target that must replay runs its rounds uncaptured, the call is
    correct, only slower (past the token limit the batch is large, where the launches a graph saves weigh least);
    raising would make the default ``compile=None`` fail on CUDA for a batch the model decodes. Eager, not
    compiled without the graph: the sorted path does not trace whole either. ``backend`` then says "eager" /
    "speculative" and ``uncaptured`` says why, so a benchmark does not credit a captured step."""
    stats["uncaptured"] = reason
    once("generate_uncaptured", f"generate runs this call eagerly, neither compiled nor captured: {reason}")


def weight_addresses(model) -> int:
    """A hash of where every parameter and buffer of ``model`` lives (storage address, dtype, device), and of
    the decode copies ``refresh_fused`` made (``layers/fused.py``): a captured step reads those too, and
    ``release_fused`` frees them without moving a parameter, so the next refresh puts them elsewhere. A draft's
    copies matter most: its rounds are pooled in the target's pool, which the draft's ``release_fused`` does not
    clear."""
    tensors = (*model.parameters(), *model.buffers(), *_fused_tensors(model))
    return hash(tuple((t.data_ptr(), t.dtype, t.device) for t in tensors))


def _fused_tensors(model) -> list[torch.Tensor]:
    """The tensors every layer's ``fused`` object holds now (none before the first refresh)."""
    return [
        v
        for m in model.modules()
        if getattr(m, "fused", None) is not None
        for v in vars(m.fused).values()
        if isinstance(v, torch.Tensor)
    ]


def normalise_prompts(
    input_ids: torch.Tensor | Sequence, attention_mask: torch.Tensor | None, device: torch.device
) -> tuple[list[torch.Tensor], str]:
    """-> one 1-D LongTensor per row, and the form the caller used ('tensor', 'masked' or 'list')."""
    if isinstance(input_ids, torch.Tensor):
        if input_ids.dim() != 2 or input_ids.shape[1] == 0 or input_ids.shape[0] == 0:
            raise ValueError(f"input_ids must be a non-empty (batch, seq) tensor, got shape {tuple(input_ids.shape)}")
        if attention_mask is None:
            return list(input_ids.to(device)), "tensor"
        if attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"attention_mask {tuple(attention_mask.shape)} must have input_ids' shape {tuple(input_ids.shape)}"
            )
        rows = [ids[m.bool()] for ids, m in zip(input_ids.to(device), attention_mask.to(device), strict=True)]
        form = "masked"
    else:
        if attention_mask is not None:
            raise ValueError("attention_mask goes with a padded (batch, seq) tensor, not a list of prompts")
        rows = [torch.as_tensor(r, dtype=torch.long, device=device).reshape(-1) for r in input_ids]
        form = "list"
    if not rows:
        raise ValueError("no prompts given")
    empty = [i for i, r in enumerate(rows) if r.numel() == 0]
    if empty:
        raise ValueError(f"prompt(s) {empty} are empty; every row needs at least one token")
    return rows, form


def _step_fn(model, s: _Step, eos: torch.Tensor | None, temperature, top_k, top_p, generator):
    def step() -> None:
        logits = model(s.token, cache=s.cache)[:, -1]
        nxt = sample_next(logits, temperature, top_k, top_p, generator)
        if eos is not None:
            nxt = torch.where(s.done, eos[0], nxt)
            s.done |= torch.isin(nxt, eos)
        s.out.index_copy_(1, s.index.view(1), nxt[:, None])
        s.index.add_(1)
        s.token.copy_(nxt[:, None])

    return step


def generate(
    model,
    input_ids: torch.Tensor | Sequence,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_token_id: int | list[int] | None = None,
    generator: torch.Generator | None = None,
    attention_mask: torch.Tensor | None = None,
    compile: bool | None = None,
    pad_token_id: int | None = None,
    draft=None,
    num_draft_tokens: int = 4,
):
    """See ``ArchZooLM.generate``."""
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    device = model.embed.weight.device
    rows, form = normalise_prompts(input_ids, attention_mask, device)
    eos_ids = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id or [])
    B, lens = len(rows), [int(r.numel()) for r in rows]
    compile = device.type == "cuda" if compile is None and draft is None else bool(compile)
    graphs = compile and device.type == "cuda"
    if generator is not None and compile and draft is None:
        raise ValueError(
            "generator= needs compile=False: a compiled, captured step draws from the default generator "
            "(seed it with torch.manual_seed)"
        )
    total = max(lens) + max_new_tokens
    stats = {"batch_size": B, "prompt_len": max(lens), "new_tokens": 0, "compile_s": 0.0}
    if draft is not None:  # speculative decoding (archzoo.speculative): a captured round on CUDA
        check_draft(model, draft, num_draft_tokens)
        if generator is not None and compile:
            raise ValueError(
                "generator= needs compile=False: a compiled, captured speculative round draws from the default "
                "generator (seed it with torch.manual_seed)"
            )
        if compile:
            k1 = num_draft_tokens + 1
            if why := uncapturable(model, B * k1):
                why = f"the target's verify forward of batch {B} x (k+1) = {B} x {k1} = {B * k1} tokens: {why}"
            elif why := uncapturable(draft, B):
                why = f"the draft's decode steps of batch {B}: {why}"
            if why:
                _run_eagerly(stats, why)
                compile = graphs = False
        if compile:  # both models' steps compiled by block; each new step length compiles on first use
            model.compile_step_blocks()
            draft.compile_step_blocks()
        model.refresh_fused()  # before any capture: the steps read the fused projection copies
        draft.refresh_fused()
        if compile:  # a traced round cannot log why a layer's Q|K|V runs apart: say it here
            explain_unfused(model, B, num_draft_tokens + 1)
            explain_unfused(draft, B, 1)
        need = cache_length(max(lens), max_new_tokens, num_draft_tokens)
        state, stats["compile_s"] = _get_round(
            model, draft, B, need, num_draft_tokens, temperature, top_k, top_p, eos_ids, generator, compile, graphs
        )
        captured = "speculative_cuda_graph" if state.graph is not None else "speculative_compiled"
        stats["backend"] = captured if compile else "speculative"
        new = speculative_generate(
            model, draft, rows, max_new_tokens, num_draft_tokens, temperature, top_k, top_p, eos_ids, generator,
            stats, state=state,
        )  # fmt: skip
        model.last_generate_stats = stats
        return _assemble(rows, new[:, :max_new_tokens], form, input_ids, eos_ids, pad_token_id)
    if compile and (why := uncapturable(model, B)):
        _run_eagerly(stats, f"a decode step of batch {B}: {why}")
        compile = graphs = False
    stats["backend"] = "cuda_graph" if graphs else ("compiled" if compile else "eager")
    model.refresh_fused()  # before any capture: the steps read the fused projection copies (layers/fused.py)
    if compile:  # a traced step cannot log why a layer's Q|K|V runs apart: say it here
        explain_unfused(model, B, 1)

    s, stats["compile_s"] = _get_step(model, B, total, eos_ids, temperature, top_k, top_p, generator, compile, graphs)
    cache = s.cache
    if cache.capacity is not None and total > cache.capacity:
        raise ValueError(f"{max(lens)} prompt + {max_new_tokens} new tokens exceed the cache's {cache.capacity}")
    stats["cache_bytes"] = cache.nbytes()

    t0 = _now(device)
    logits = prefill_rows(model, rows, cache)
    stats["prefill_s"] = _now(device) - t0

    t0 = _now(device)
    n = 0
    if max_new_tokens > 0:
        first = sample_next(logits, temperature, top_k, top_p, generator)
        if eos_ids:
            s.done.copy_(torch.isin(first, s.eos))
        s.out[:, 0] = first
        s.token.copy_(first[:, None])
        s.index.fill_(1)
        n = 1
        cache.host_max_len = max(lens)
        while n < max_new_tokens:
            if eos_ids and n % EARLY_STOP_EVERY == 0 and bool(s.done.all()):
                break
            if s.graph is not None:
                s.graph.replay()
            else:
                s.fn()
            n += 1
    stats["decode_s"] = _now(device) - t0
    stats["new_tokens"] = n
    stats["decode_steps"] = max(n - 1, 0)  # forward steps in decode_s: the first token comes from the prefill
    model.last_generate_stats = stats
    return _assemble(rows, s.out[:, :n], form, input_ids, eos_ids, pad_token_id)


def _now(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def _get_step(model, B, total, eos_ids, temperature, top_k, top_p, generator, compile, graphs) -> tuple[_Step, float]:
    """A ready step for these settings (a pooled one when compiling), and the seconds spent compiling it."""
    dev, dtype = model.embed.weight.device, model.embed.weight.dtype
    length = bucket_length(total) if compile else total
    key = (B, length, dtype, str(dev), temperature, top_k, top_p, tuple(eos_ids), decode_switches())
    pool: DecodePool = model.decode_pool
    if compile:
        pool.check_weights(model)
    if compile and key in pool.entries:
        pool.entries.move_to_end(key)
        s = pool.entries[key]
        _reset(s)
        return s, 0.0
    t0 = _now(dev)
    cache = model.new_cache(B, length)
    cache.fused_weights = True
    cache.compiled_blocks = compile  # an eager call runs the plain blocks, even after a compiled call made others
    s = _Step(
        cache=cache,
        token=torch.zeros(B, 1, dtype=torch.long, device=dev),
        done=torch.zeros(B, dtype=torch.bool, device=dev),
        out=torch.zeros(B, length, dtype=torch.long, device=dev),
        index=torch.zeros((), dtype=torch.long, device=dev),
        eos=torch.tensor(eos_ids, dtype=torch.long, device=dev) if eos_ids else None,
    )
    fn = _step_fn(model, s, s.eos, temperature, top_k, top_p, generator)
    if compile:
        model.compile_step_blocks()
    s.fn = fn
    if graphs:
        s.graph = _capture(fn, dev)
    elif compile:
        fn()  # compile now, so that compiling is not counted as decoding
    if compile:
        _reset(s)
        pool.entries[key] = s
        while len(pool.entries) > GRAPHS_KEPT:
            pool.entries.popitem(last=False)
    return s, (_now(dev) - t0 if compile else 0.0)


def _get_round(
    model, draft, B, total, k, temperature, top_k, top_p, eos_ids, generator, compile, graphs
) -> tuple[SpeculativeRound, float]:
    """A speculative round for these settings, and the seconds spent compiling / capturing it.

    With ``compile`` it is pooled in the target's ``decode_pool`` beside the plain decode steps, under a key of
    its own (``"speculative"``, batch size, length bucket, k, dtype, device, sampling settings, EOS ids,
    ``decode_switches()``, the draft and where its weights live): the entry holds both caches, so it is reused
    only for the same draft.
    On CUDA a round whose target rewinds by length is captured whole in one CUDA graph (``_capture``: warmed up
    on a side stream, which compiles the blocks, then captured); a target that replays after a rollback reads
    the host every round and runs uncaptured.
    """
    dev, dtype = model.embed.weight.device, model.embed.weight.dtype
    length = bucket_length(total) if compile else total

    def build() -> SpeculativeRound:
        caches = (model.new_cache(B, length), draft.new_cache(B, length))
        for c in caches:
            c.compiled_blocks = compile  # an eager call runs the plain blocks, even after a compiled call
        return SpeculativeRound(model, draft, caches, k, temperature, top_k, top_p, eos_ids, generator)

    if not compile:
        return build(), 0.0
    pool: DecodePool = model.decode_pool
    pool.check_weights(model)
    draft_sig = weight_addresses(draft)
    settings = (temperature, top_k, top_p, tuple(eos_ids))
    key = ("speculative", B, length, k, dtype, str(dev), *settings, decode_switches(), id(draft), draft_sig)
    for old in [e for e in pool.entries if e[0] == "speculative" and e[-2] == id(draft) and e[-1] != draft_sig]:
        del pool.entries[old]  # rounds captured before the draft's weights moved
    if key in pool.entries:
        pool.entries.move_to_end(key)
        return pool.entries[key], 0.0
    t0 = _now(dev)
    state = build()
    state.limit.fill_(1)  # warm-up rounds run from empty caches; rows freeze after one round
    if graphs and not state.replay:
        state.graph = _capture(state.round, dev)
    else:
        state.round()  # compile now, so that compiling is not counted as decoding
    state.reset()
    pool.entries[key] = state
    while len(pool.entries) > GRAPHS_KEPT:
        pool.entries.popitem(last=False)
    return state, _now(dev) - t0


def allow_recompiles() -> None:
    """Each (batch, bucket) shape and each model compiles the blocks once more (they share ``Block.forward``'s
    code object, whose compiled entries dynamo caps at 8 by default, running the rest eagerly): allow 64. The
    trainer's ``speed.compile`` calls it too (its block kinds, modes and two models can pass 8)."""
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, max(getattr(torch._dynamo.config, name), 64))


def _capture(fn, device) -> torch.cuda.CUDAGraph:
    """Warm ``fn`` up on a side stream (compile, autotune, first launches), then capture one call."""
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        for _ in range(2):
            fn()
    torch.cuda.current_stream(device).wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    torch.cuda.synchronize(device)
    return graph


def _reset(s: _Step) -> None:
    s.cache.reset()
    s.token.zero_()
    s.done.zero_()
    s.out.zero_()
    s.index.zero_()


def _assemble(rows, new: torch.Tensor, form: str, input_ids, eos_ids: list[int], pad_token_id: int | None):
    """Prompt + generated tokens in the caller's form."""
    if form == "tensor":
        return torch.cat([input_ids.to(new.device), new], dim=1)
    keep = [new.shape[1]] * len(rows)
    if eos_ids and new.shape[1]:  # each row up to its first EOS: one look at the device for all rows
        hit = torch.isin(new, torch.tensor(eos_ids, device=new.device))
        keep = torch.where(hit.any(1), hit.int().argmax(1) + 1, new.shape[1]).tolist()
    out = [torch.cat([r, gen[:n]]) for r, gen, n in zip(rows, new, keep, strict=True)]
    if form == "list":
        return out
    pad = pad_token_id if pad_token_id is not None else (eos_ids[0] if eos_ids else 0)
    width = input_ids.shape[1] + new.shape[1]
    padded = torch.full((len(out), width), pad, dtype=torch.long, device=new.device)
    for b, seq in enumerate(out):
        padded[b, : seq.numel()] = seq
    return padded
