"""ArchZooLM: embed -> blocks (pre-norm mixer + FFN) -> norm -> head."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from .cache import Cache
from .config import ModelConfig, load_config
from .families import ffn_family, mixer_family
from .generation import DecodePool, allow_recompiles
from .generation import generate as _generate
from .layers import ForwardContext, state_owners
from .layers import fused as fused_layer
from .layers.norm import RMSNorm
from .saving import save_pretrained


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int, kv_source: int):
        super().__init__()
        block = cfg.blocks[layer_idx]
        self.layer_idx = layer_idx
        self.mixer_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mixer = mixer_family(block.mixer.type).layer(block.mixer, cfg.d_model, layer_idx, kv_source)
        ffn = ffn_family(block.ffn.type).layer
        if ffn is None:
            self.ffn_norm, self.ffn = None, None
        else:
            self.ffn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
            self.ffn = ffn.from_config(block.ffn, cfg.d_model)

    def forward(self, x: torch.Tensor, state, ctx: ForwardContext) -> torch.Tensor:
        # A decode step on the fused copies (layers/fused.py) hands the norms to the projections that follow
        # them, so the decode GEMV can fuse each RMSNorm in; everything else normalises here.
        gemv = ctx.fused and ctx.decoding and fused_layer.gemv_for(x.shape[0] * x.shape[1], x.device)
        if ctx.fused and ctx.decoding and getattr(self.mixer, "TAKES_NORM", False):
            if gemv and getattr(self.mixer, "TAKES_RESIDUAL", False):
                x = self.mixer(x, state, ctx, norm=self.mixer_norm, residual=x)  # added in the O GEMV's epilogue
            else:
                x = x + self.mixer(x, state, ctx, norm=self.mixer_norm)
        else:
            x = x + self.mixer(self.mixer_norm(x), state, ctx)
        if self.ffn is not None:
            fused = getattr(self.ffn, "fused", None) if ctx.fused else None
            if ctx.fused and ctx.decoding and getattr(self.ffn, "TAKES_NORM", False):
                x = self.ffn(x, norm=self.ffn_norm, residual=x)  # MoE: the norm and the add in its decode kernels
            elif fused is None:
                x = x + self.ffn(self.ffn_norm(x))
            elif getattr(fused, "pairs", False) and gemv:
                # the GEMV's epilogues: SiLU x up after gate|up (interleaved copy), the residual add after down
                x = fused_layer.swiglu_step(fused, self.ffn.down_proj.weight, x, self.ffn_norm)
            else:
                x = x + self.ffn.forward_fused(x, norm=self.ffn_norm)
        return x


def _norm_head(norm: nn.Module, lm_head: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The final norm and LM head: what ``ArchZooLM.compile_step_blocks`` compiles for steps on the compiled blocks."""
    return lm_head(norm(x))


class ArchZooLM(nn.Module):
    def __init__(self, cfg: ModelConfig | dict | str | Path):
        super().__init__()
        cfg = load_config(cfg)
        self.cfg = cfg
        self.state_owners = state_owners(cfg)
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg, i, self.state_owners[i]) for i in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.tokenizer = None  # set by importers (from_hf); saved with save_pretrained
        self.decode_pool = DecodePool()  # captured decode steps of generate(), per batch size and length bucket
        self.last_generate_stats: dict = {}
        self.step_blocks: list | None = None  # set by compile_step_blocks
        self.step_head = None  # the final norm and LM head compiled for decode steps, set by compile_step_blocks
        self.reset_parameters()

    # ------------------------------------------------------------------ init

    def reset_parameters(self) -> None:
        """GPT-2 style: N(0, init_std) everywhere, residual output projections scaled by 1/sqrt(2L).

        Modules with an initialisation of their own (Mamba's dt and A, S4D's spectrum, the MoE
        router) define ``init_weights()``, called afterwards.
        """
        std = self.cfg.init_std
        for name, p in self.named_parameters():
            if p.dim() < 2:
                continue
            s = std / math.sqrt(2 * self.cfg.n_layers) if name.endswith(("o_proj.weight", "down_proj.weight")) else std
            nn.init.normal_(p, 0.0, s)
        for m in self.modules():
            if m is not self and hasattr(m, "init_weights"):
                m.init_weights()
        if self.cfg.tie_embeddings:
            self.lm_head.weight = self.embed.weight

    # ----------------------------------------------------------------- cache

    def new_cache(
        self,
        batch_size: int,
        max_seq_len: int,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> Cache:
        """Preallocate every layer's state for ``batch_size`` sequences of up to ``max_seq_len`` tokens."""
        if batch_size < 1 or max_seq_len < 1:
            raise ValueError(f"batch_size and max_seq_len must be positive, got {batch_size} and {max_seq_len}")
        ref = self.embed.weight
        dtype = dtype or ref.dtype
        device = device or ref.device
        layers = [b.mixer.new_state(batch_size, max_seq_len, dtype, device) for b in self.blocks]
        bounded = all(
            mixer_family(blk.mixer.type).layer.bounded_state(blk.mixer)
            and (getattr(blk.mixer, "window", None) or 0) <= max_seq_len
            for i, blk in enumerate(self.cfg.blocks)
            if self.state_owners[i] == i
        )
        return Cache(layers, batch_size, max_seq_len, capacity=None if bounded else max_seq_len, device=device)

    # --------------------------------------------------------------- forward

    def forward(self, input_ids: torch.Tensor, cache: Cache | None = None) -> torch.Tensor:
        """input_ids (B, T) -> logits (B, T, vocab). With a cache: row b continues from ``cache.lengths[b]``.

        One new token per row (T = 1) without gradients is the decode step: positions come from the
        cache's device tensor ``lengths``, buffers are written by index and nothing depends on a host
        value, so ``torch.compile(step, fullgraph=True)`` compiles it once and a CUDA graph can replay
        it. Longer inputs (a prefill) read the rows' common length on the host.

        A decode step on the fused copies with the decode GEMV (``layers.fused.gemv_for``) runs
        the final norm inside the LM head's GEMV: one kernel, reading the head's weights (a fifth of the
        teacher's bytes) once.
        """
        if (
            cache is not None and cache.fused_weights and input_ids.dim() == 2 and input_ids.shape[1] == 1
            and fused_layer.gemv_for(input_ids.shape[0], input_ids.device) and not torch.is_grad_enabled()
        ):  # fmt: skip
            x = self.hidden_states(input_ids, cache, final_norm=False)
            return fused_layer.decode_project(x, self.lm_head.weight, self.lm_head.bias, norm=self.norm)
        if (
            self.step_blocks is not None and self.step_head is not None and cache is not None and cache.compiled_blocks
            and input_ids.dim() == 2 and input_ids.shape[1] == 1 and not torch.is_grad_enabled()
        ):  # fmt: skip
            # a step on the compiled blocks (any rows): the final norm compiled with the head, one kernel before
            # cuBLAS's GEMM where eagerly it was six (12 us of the teacher's 64-row step on an H100)
            return self.step_head(self.norm, self.lm_head, self.hidden_states(input_ids, cache, final_norm=False))
        return self.lm_head(self.hidden_states(input_ids, cache))

    def hidden_states(
        self,
        input_ids: torch.Tensor,
        cache: Cache | None = None,
        n_blocks: int | None = None,
        final_norm: bool = True,
    ) -> torch.Tensor:
        """input_ids (B, T) -> (B, T, d_model) after the final norm, without the LM head.

        The trainer builds logits from these chunk by chunk. With ``n_blocks`` only the first
        blocks run and the residual stream before the final norm comes back (no cache then);
        ``final_norm=False`` returns that stream after every block (a decode step's head fuses the norm).
        """
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be (batch, seq), got shape {tuple(input_ids.shape)}")
        if n_blocks is not None and cache is not None:
            raise ValueError("n_blocks runs part of the model, which a cache cannot follow")
        B, T = input_ids.shape
        ctx = ForwardContext(pos=0) if cache is None else self._context(cache, B, T)
        # (B, T, d). A decode step gathers the rows by indexing: the same values as the embedding's index_select,
        # which on CUDA takes a one-block-a-slice kernel for up to 16 indices (10 us of the teacher's batch-16 step
        # on an H100, where 64 indices took 1.9 us: docs/results/decode/profile_h100_stepprof_b1_16_64.log)
        x = self.embed.weight[input_ids] if ctx.decoding else self.embed(input_ids)
        blocks = self.blocks if n_blocks is None else self.blocks[:n_blocks]
        if ctx.decoding and self.step_blocks is not None and cache.compiled_blocks:
            blocks = self.step_blocks  # compiled copies of the blocks, for decode steps (see compile_step_blocks)
        for i, block in enumerate(blocks):
            x = block(x, cache.layers[i] if cache is not None else None, ctx)
        if cache is not None:
            cache.lengths.add_(T)
        return x if n_blocks is not None or not final_norm else self.norm(x)

    def _context(self, cache: Cache, B: int, T: int) -> ForwardContext:
        if B != cache.batch_size:
            raise ValueError(f"input batch {B} does not match the cache's batch_size {cache.batch_size}")
        if T == 1 and not torch.is_grad_enabled():
            if not torch.compiler.is_compiling():  # eager: check the host's bound (no synchronisation)
                self._check_capacity(cache, cache.host_max_len, T)
                cache.host_max_len += T
            return ForwardContext(pos=None, lengths=cache.lengths, fused=cache.fused_weights)
        lengths = cache.lengths.tolist()  # a prefill, or a step with gradients: positions on the host
        if len(set(lengths)) > 1:
            raise ValueError(
                f"the cache's rows hold different lengths {lengths}; several tokens at once need rows of one "
                "length (prefill rows separately through cache.rows(b), then decode one token per row)"
            )
        self._check_capacity(cache, lengths[0], T)
        cache.host_max_len = lengths[0] + T
        return ForwardContext(pos=lengths[0], lengths=cache.lengths)

    @staticmethod
    def _check_capacity(cache: Cache, seen: int, T: int) -> None:
        if cache.capacity is not None and seen + T > cache.capacity:
            raise ValueError(
                f"cache holds {cache.capacity} tokens; {seen} seen + {T} new exceeds it (new_cache(max_seq_len=...))"
            )

    @property
    def aux_loss(self) -> torch.Tensor:
        """MoE balance + z losses of the last forward (0 for a model without MoE)."""
        losses = [
            m.aux_loss
            for m in self.modules()
            if m is not self and isinstance(getattr(m, "aux_loss", None), torch.Tensor)
        ]
        if not losses:
            return torch.zeros((), device=self.embed.weight.device)
        return sum(losses[1:], losses[0])

    # -------------------------------------------------------------- generate

    def compile_step_blocks(self, backend: str | None = None) -> None:
        """Compile every block for decode steps (regional compilation): ``torch.compile`` of one block.

        Blocks of the same family and shape share one compiled graph (their parameters are inputs,
        not constants), so a 30-layer model compiles once per distinct block, not 30 times: seconds,
        where compiling the whole step took 30-65 s per shape on an H200. The final norm and the LM head
        are compiled too, for the steps whose head is not the decode GEMV's (above ``layers.fused.AUTO_MAX_ROWS``
        rows, or without fused copies). Only decode steps (one token per row, no gradients) use them; prefill
        and training run the plain modules.
        """
        allow_recompiles()  # else the 9th model or shape compiled in one process fails (fullgraph=True)
        backend = backend or self.compile_backend
        options = dict(self.compile_options) if backend == "inductor" and self.compile_options else None
        setting = (backend, tuple(sorted((options or {}).items())))
        if self.step_blocks is None or self._step_backend != setting:
            self.step_blocks = [
                torch.compile(b, fullgraph=True, dynamic=False, backend=backend, options=options) for b in self.blocks
            ]
            # the modules are arguments, not closed over: a deep copy of the model calls it with its own
            self.step_head = torch.compile(_norm_head, fullgraph=True, dynamic=False, backend=backend, options=options)
            self._step_backend = setting

    def refresh_fused(self) -> None:
        """Make or refresh what decode steps derive from the weights once (``archzoo/layers/fused.py``: the
        fused projection copies, S4D's discretised spectrum), read by steps whose cache has
        ``fused_weights`` set; cheap when nothing changed."""
        for m in self.modules():
            fused = getattr(m, "fused", None)
            if fused is not None:
                fused.refresh()

    def release_fused(self) -> None:
        """Drop the decode copies ``refresh_fused`` made (their memory; the teacher's: 144 MB in bf16) and the
        captured steps that read them; the next ``generate`` makes them again."""
        self.decode_pool.clear()
        for m in self.modules():
            fused = getattr(m, "fused", None)
            if fused is not None and hasattr(fused, "release"):
                fused.release()

    compile_backend = "inductor"  # torch.compile backend of generate's step; tests use "eager" on CPU
    # Inductor options of generate's step (e.g. {"coordinate_descent_tuning": True, "max_autotune": True}:
    # slower compiles, tuned kernels); set on an instance, or per run with `bench decode --inductor-options`.
    # Changing them recompiles the step blocks; clear ``decode_pool`` so no step captured before is replayed.
    compile_options: dict = {}

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor | list,
        max_new_tokens: int,
        temperature: float = 0.0,
        top_k: int | None = None,
        top_p: float | None = None,
        eos_token_id: int | list[int] | None = None,
        generator: torch.Generator | None = None,
        attention_mask: torch.Tensor | None = None,
        compile: bool | None = None,
        pad_token_id: int | None = None,
        draft: ArchZooLM | None = None,
        num_draft_tokens: int = 4,
    ) -> torch.Tensor | list[torch.Tensor]:
        """Sample up to ``max_new_tokens`` after each prompt, through the cache; temperature 0 is greedy.

        ``input_ids``: a (B, T) tensor of prompts (returns (B, T + new)); with ``attention_mask`` (B, T)
        the prompts are the tokens where the mask is 1, of any lengths (returns (B, T + new), each row
        its prompt then its tokens, padded at the end with ``pad_token_id``, default the first EOS id or
        0); or a list of prompts (returns a list). A row that emitted ``eos_token_id`` stops (in a
        tensor it keeps emitting EOS); generation ends early once every row has.

        ``compile`` (default: on for CUDA): the decode step is compiled and captured in a CUDA graph,
        cached per batch size and length bucket (see ``archzoo.generation``); the first call for a
        new shape pays the compile, reported in ``self.last_generate_stats`` with the prefill and
        decode times. A call whose MoE layers would route by sorting (a batch, or batch x (k+1) in a
        speculative verify, past ``MoE.STATIC_MAX_TOKENS``) runs eagerly instead, saying why
        (``last_generate_stats["uncaptured"]``, logged once); ``compile=False`` runs the plain blocks.

        ``draft`` (a model of the zoo with the same vocabulary and tokenizer): speculative decoding
        (``archzoo.speculative``). The draft proposes ``num_draft_tokens`` tokens one at a time, this
        model verifies them in one forward and keeps the longest agreeing prefix plus its own next
        token: greedy output equals this model's own, sampling follows its distribution. Eager by
        default; ``compile=True`` compiles both models' steps by block and, on CUDA where this model's
        cache rewinds by length (attention, MLA), captures a whole round (the draft's k+1 one-token steps,
        the (B, k+1) verify forward, acceptance and rollback) in one CUDA graph, pooled like the plain
        step (``archzoo.speculative``; not yet run on a GPU). ``last_generate_stats`` then reports the
        acceptance rate and tokens per verify.
        """
        return _generate(
            self,
            input_ids,
            max_new_tokens,
            temperature,
            top_k,
            top_p,
            eos_token_id,
            generator,
            attention_mask,
            compile,
            pad_token_id,
            draft,
            num_draft_tokens,
        )

    # ---------------------------------------------------------------- saving

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        seen, n = set(), 0
        for name, p in self.named_parameters():
            if id(p) in seen or (exclude_embeddings and name.startswith(("embed.", "lm_head."))):
                continue
            seen.add(id(p))
            n += p.numel()
        return n

    def save_pretrained(self, path: str | Path) -> None:
        save_pretrained(self, path)


def build_model(cfg: ModelConfig | dict | str | Path) -> ArchZooLM:
    """A model of ``cfg`` (a ModelConfig, a dict, or a YAML path) with fresh weights."""
    return ArchZooLM(load_config(cfg))
