"""Mixture-of-experts FFN: top-k softmax routing over SwiGLU experts, with optional capacity limits.

Routing follows Switch Transformer (Fedus et al., 2021) and GShard (Lepikhin et al., 2020): a
linear router scores the experts, each token goes to its ``top_k`` best, and with a
``capacity_factor`` each expert takes at most ``ceil(tokens * top_k / n_experts * factor)``
assignments. Priority goes first to every token's first choice (in token order), then to the
second choices, and so on; an assignment over capacity is dropped and adds nothing (the block's
residual carries the token). Losses: Switch's load-balancing loss and the router z-loss of
ST-MoE (Zoph et al., 2022). Shared experts, always applied, follow DeepSeekMoE (Dai et al., 2024).

Dispatch sorts the (token, expert) assignments by expert (stably, so priority order holds inside each
expert's slice; a sort or a counting sort, ``ROUTE``) and runs the experts on the sorted rows in one of two
ways (``DISPATCH``): one grouped GEMM per projection (gate, up, down) over all rows, with the group offsets
on the device, so nothing waits for the host; or a Python loop over the experts' slices, whose sizes the
host must read first. Decode steps (few tokens, no gradients) take a third, static-shape path.
``MoE.last_dispatch`` names the one that ran.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from ..kernels._dispatch import once
from ..kernels.moe_grouped import moe_grouped_experts
from ..kernels.moe_grouped.routing import moe_route
from ..kernels.moe_step import moe_decode_experts, moe_decode_step, naive_moe_decode_experts, route, router_logits
from .base import LayerConfig, field_error
from .mlp import SwiGLU
from .norm import RMSNorm

# How the sorted path (training, long inputs) runs the experts: "auto" takes the grouped GEMM where it fits
# the inputs and otherwise the per-expert loop, logging why once; "grouped" takes the grouped GEMM or raises
# ValueError saying why it cannot; "loop" takes the per-expert loop. The static decode path is chosen by
# token count, whatever this says. Each forward records the path it took in ``MoE.last_dispatch``.
# "padded" (where a capacity applies: training): each expert's kept assignments in a (capacity, D) slab of one
# (n_experts, capacity, D) tensor, and one batched GEMM per projection over it (torch.bmm: the dense GEMM's
# efficiency, at capacity_factor times the FLOPs); without a capacity it takes "auto"'s path. Why try it: on an
# H100 the grouped GEMMs ran 8 groups of ~1,024 rows at 60% of one dense GEMM's efficiency (docs/kernels.md), and
# a capacity-padded batch is GShard's and Switch's own dispatch. Opt-in until a GPU has timed it beside the
# grouped rows (archzoo bench kernels --ops moe: archzoo_padded_*).
# "fused" (fifteenth session, opt-in, untimed in the layer): the routed experts through
# ``archzoo.kernels.moe_grouped_experts``, the plan, gate|up with the row gather and SiLU x up x weight as its epilogue,
# down, the sum over the choices, in Triton (the PyTorch reference elsewhere); the capacity's drops as zero routing
# weights, the statistics and losses as every sorted path has them. Why: on an H100 the kernel's experts took 150 us
# at the bench's shape against the dense SwiGLU's 116 and the grouped path's 408, by an uncommitted script, once
# (docs/kernels.md says so; archzoo bench kernels --ops moe times it reproducibly). Its routing
# weight multiplies h before down (the decode reference's rounding), so bf16 outputs differ from "grouped"'s by
# roundings. Forward and backward (kernels/moe_grouped/backward.py), traced whole by torch.compile. Opt-in until a GPU
# has timed it in the layer (archzoo bench kernels --ops moe: archzoo_fused, archzoo_fused_count_cudagraphs).
DISPATCH = "auto"
DISPATCHES = ("auto", "grouped", "loop", "padded", "fused")
# How DISPATCH="fused" routes: "kernel" ``archzoo.kernels.moe_route`` (the router's product, softmax, top-k and the
# plan's counts in one Triton launch, the logits for the losses as a second output; the load from its counts, the
# capacity's drops from each assignment's rank by a running sum over a one-hot: no sort), or "torch" (the router in
# cuBLAS, the softmax and top-k, a sort by expert; what the other dispatches run). Why "kernel": in one CUDA graph
# each on an H100 the fused experts' forward took 0.142 ms routed by the kernel against 0.172 routed in torch, the
# dense SwiGLU of the same FLOPs 0.121 (twenty-sixth session, archzoo bench kernels --ops moe,
# docs/results/kernels/moe_h100_2026-12-07x.log). The layer's losses and capacity around it are not timed yet.
# Where the kernel does not take the tensors (x's dtype not the router's, autocast) the "torch" sequence runs, and
# the log says why once.
FUSED_ROUTE = "kernel"
FUSED_ROUTES = ("kernel", "torch")
# How a decode step's few tokens (N x top_k < n_experts: the static path's gather branch) run their chosen experts:
# "reductions" the gathered rows as elementwise products and sums, which torch.compile fuses into
# reductions; "kernel" ``archzoo.kernels.moe_decode_experts``, one Triton launch for gate and up with SiLU x up and
# one for down with the routing weights and the sum over choices (the layer's roundings). Why try it: on an H100
# the Jamba student's batch-1 step took 0.35 ms more than the Mamba hybrid's, 23 us for each of its 15 MoE layers,
# where reading the two chosen experts' 10.6 MB takes 3.5 us at the copy bandwidth. "reductions" until a GPU has
# timed both (tools/decode_profile.py --moe-experts reductions,kernel). "kernel" lost on an H200 (Jamba's batch-1
# step 0.886 -> 1.009 ms, 356 -> 371 kernels: the routing stayed Inductor's kernels around an opaque op, no PDL;
# docs/decode.md). "fused": ``archzoo.kernels.moe_decode_step``, routing and experts together in two Triton kernels
# launched with PDL: the first computes each token's router logits, softmax, top-k (max passes, ties to the lowest
# index) and renormalisation itself, then its expert's SiLU(gate) x up rows; the second down with the routing
# weights and the sum over choices. forward picks it before the router, so the step has no router GEMV and no
# routing kernels (per MoE layer about 8 kernels -> 2, plus the shared experts'). The default since it won on an
# H100 (sixteenth session, once each program's rows were one tile: tools/decode_profile.py --moe-experts
# reductions,fused, docs/results/decode/profile_h100_stepprof_onetile.log): at batch 1 the MoE student's step
# 1.080 -> 0.888 ms (368 -> 248 kernels), Jamba's 0.938 -> 0.848; batch 16 takes the dense branch either way.
# Off CUDA the same sequence runs as PyTorch (naive_moe_decode_step), equal to "reductions" (tests/layers/test_moe.py).
DECODE_EXPERTS = "fused"
DECODE_EXPERTS_FORMS = ("reductions", "kernel", "fused")
# How the sorted path orders the assignments by expert (the same permutation either way, see sort_by_expert):
# "sort" a stable torch.sort (radix / bitonic sorting kernels), "count" a counting sort over the few experts (a
# one-hot, its running sum along the assignments and two scatters: elementwise ops and one scan, which
# torch.compile fuses), or "auto" (the default): "count" where torch.compile traces the layer, "sort" eagerly. Timed
# side by side (H100, 4,096 tokens, 8 experts, top-2, bf16; archzoo bench kernels --ops moe,
# docs/results/kernels/moe_h100_count.*), "count" took 0.260 / 0.634 ms forward / forward+backward under CUDA graphs
# against the sort's 0.317 / 0.700, and 0.388 / 1.383 compiled against 0.450 / 1.470: the eight radix-sort kernels
# (49 us of the compiled forward+backward's 630) give way to one fused scan and two scatters. Eagerly each op is a
# launch of its own, and the counting sort dispatches 16 more than the sort (67 against 51 in the forward).
ROUTE = "auto"
ROUTES = ("auto", "sort", "count")

# How the grouped path runs gate and up: "separate" (two grouped GEMMs of N = d_ff each) or "fused" (one of
# N = 2 * d_ff over the two weights concatenated in the forward, the dense SwiGLU's shape; the concatenation copies
# both weights once a forward, and their gradients are the halves of one). "separate" until a GPU has timed both
# (archzoo bench kernels --ops moe: the *_gu rows): on an H100 the nine grouped-GEMM launches of a compiled
# forward + backward took 381 us where the dense layer's nine GEMMs of the same FLOPs took 227 (docs/kernels.md).
GATE_UP = "separate"
GATE_UPS = ("separate", "fused")

# PyTorch's grouped matrix multiply: public as torch.nn.functional.grouped_mm in newer releases, private
# torch._grouped_mm before; None where this torch has neither.
_grouped_mm = getattr(F, "grouped_mm", None) or getattr(torch, "_grouped_mm", None)


class MoEConfig(LayerConfig):
    """Top-k softmax-routed experts (SwiGLU each); capacity limits act in training only by default."""

    type: Literal["moe"] = "moe"
    n_experts: int = Field(gt=0)
    top_k: int = Field(default=2, gt=0)
    d_ff: int = Field(gt=0)
    capacity_factor: float | None = Field(default=1.25, gt=0, description="null = dropless")
    capacity_at_inference: bool = Field(default=False, description="apply capacity in eval mode too")
    aux_loss_coef: float = Field(default=1e-2, ge=0)
    z_loss_coef: float = Field(default=1e-3, ge=0)
    n_shared_experts: int = Field(default=0, ge=0)
    norm_topk_prob: bool = True

    @model_validator(mode="after")
    def _check(self) -> MoEConfig:
        if self.top_k > self.n_experts:
            raise field_error("top_k", f"top_k={self.top_k} must not exceed n_experts={self.n_experts}")
        return self


class StackedLinear(nn.Module):
    """``n`` bias-free linear maps stored as one ``weight`` of shape (n, out_features, in_features).

    ``weight[e]`` has the layout of ``nn.Linear(in_features, out_features).weight``, so a dense
    MLP's projection copies into every expert (MoE upcycling, Komatsuzaki et al., 2022).
    """

    def __init__(self, n: int, in_features: int, out_features: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n, out_features, in_features))
        nn.init.normal_(self.weight, 0.0, in_features**-0.5)

    def forward(self, x: torch.Tensor, e: int) -> torch.Tensor:
        return F.linear(x, self.weight[e])

    def extra_repr(self) -> str:
        n, out_f, in_f = self.weight.shape
        return f"n={n}, in_features={in_f}, out_features={out_f}"


class MoE(nn.Module):
    """Top-k routed SwiGLU experts plus ``n_shared_experts`` always-on SwiGLUs.

    After every forward (None before the first), ``self.aux_loss`` holds the differentiable balance + z loss and
    ``self.last_stats`` (detached; built when read, from the last forward's loads and losses) holds
    ``tokens_dropped`` (dropped (token, expert) assignments), ``load`` (assignments routed to each expert, before
    capacity), ``drop_fraction`` (``tokens_dropped / (tokens * top_k)``), ``balance_loss``, ``z_loss`` and
    ``capacity`` (``None`` when dropless).
    """

    def __init__(
        self,
        d_model: int,
        n_experts: int,
        d_ff: int,
        top_k: int = 2,
        capacity_factor: float | None = 1.25,
        capacity_at_inference: bool = False,
        aux_loss_coef: float = 1e-2,
        z_loss_coef: float = 1e-3,
        n_shared_experts: int = 0,
        norm_topk_prob: bool = True,
    ):
        super().__init__()
        if n_experts < 1:
            raise ValueError(f"n_experts must be >= 1, got {n_experts}")
        if not 1 <= top_k <= n_experts:
            raise ValueError(f"top_k must be in 1..n_experts={n_experts}, got {top_k}")
        if capacity_factor is not None and capacity_factor <= 0:
            raise ValueError(f"capacity_factor must be positive or None (dropless), got {capacity_factor}")
        self.d_model, self.n_experts, self.top_k = d_model, n_experts, top_k
        self.capacity_factor = capacity_factor
        self.capacity_at_inference = capacity_at_inference
        self.aux_loss_coef, self.z_loss_coef = aux_loss_coef, z_loss_coef
        self.norm_topk_prob = norm_topk_prob
        self.router = nn.Linear(d_model, n_experts, bias=False)
        self.gate_proj = StackedLinear(n_experts, d_model, d_ff)  # weight (E, d_ff, d_model)
        self.up_proj = StackedLinear(n_experts, d_model, d_ff)  # weight (E, d_ff, d_model)
        self.down_proj = StackedLinear(n_experts, d_ff, d_model)  # weight (E, d_model, d_ff)
        self.shared_experts = nn.ModuleList(SwiGLU(d_model, d_ff) for _ in range(n_shared_experts))
        self.aux_loss: torch.Tensor | None = None  # set by every forward
        self._stats: tuple | None = None  # (load, balance, z, capacity, assignments) of the last sorted forward
        self.last_dispatch: str | None = None  # "grouped" | "loop" | "padded" | "fused" | "static": the last path
        # The static path's branch: "fused" / "kernel" / "reductions" (DECODE_EXPERTS, taken while N x top_k <
        # n_experts) or "dense" (every expert on every token, whatever DECODE_EXPERTS says); None off the static path
        self.last_decode_experts: str | None = None

    @classmethod
    def from_config(cls, cfg: MoEConfig, d_model: int) -> MoE:
        return cls(
            d_model,
            cfg.n_experts,
            cfg.d_ff,
            top_k=cfg.top_k,
            capacity_factor=cfg.capacity_factor,
            capacity_at_inference=cfg.capacity_at_inference,
            aux_loss_coef=cfg.aux_loss_coef,
            z_loss_coef=cfg.z_loss_coef,
            n_shared_experts=cfg.n_shared_experts,
            norm_topk_prob=cfg.norm_topk_prob,
        )

    # Up to this many tokens (a decode step's batch), inference takes the static-shape path: no sort,
    # no host synchronisation, so the step can be captured. Longer inputs dispatch by sorting.
    STATIC_MAX_TOKENS = 512

    def static_unfit(self, n_tokens: int) -> str | None:
        """Why a forward without gradients over ``n_tokens`` tokens would dispatch by sorting instead of taking the
        static path, or None when it takes the static path (``forward``'s choice; tests/layers/test_moe.py holds the
        two together). The sorted path cannot be compiled whole or captured: its per-expert loop reads the experts'
        loads on the host. ``archzoo.generation`` asks before it compiles or captures a decode step."""
        capacity = self.capacity(n_tokens)
        if capacity is not None:
            why = "training mode" if self.training else "capacity_at_inference=True"
            return f"a capacity of {capacity} per expert applies ({why}), which only the sorted path enforces"
        if n_tokens > self.STATIC_MAX_TOKENS:
            return f"{n_tokens} tokens exceed MoE.STATIC_MAX_TOKENS={self.STATIC_MAX_TOKENS}, the static path's limit"
        return None

    def _static(self, x: torch.Tensor, top_p: torch.Tensor, top_e: torch.Tensor) -> torch.Tensor:
        """Dropless routing with static shapes, for decode. x (N, D); top_p, top_e (N, K).

        Few assignments (N * K < E): gather each token's K experts' weights, reading only those.
        Otherwise: every expert on every token, weighted by a dense (N, E) gate that is zero off the
        top-k, so each expert's weights are read once. No ``aux_loss`` / ``last_stats`` update: this
        path runs only without gradients, inside a decode step.
        """
        N, E, K = x.shape[0], self.n_experts, self.top_k
        _check_decode_experts()  # checked whichever branch runs: a typo never passes silently
        w = top_p.to(x.dtype)
        if N * K < E:
            # "reductions": the gather form in PyTorch, which the compiled step fuses into reductions ("fused" never
            # comes here: forward runs its routing and experts in moe_decode_step)
            experts = moe_decode_experts if DECODE_EXPERTS == "kernel" else naive_moe_decode_experts
            self.last_decode_experts = "kernel" if DECODE_EXPERTS == "kernel" else "reductions"
            out = experts(x, self.gate_proj.weight, self.up_proj.weight, self.down_proj.weight, top_e, w)
        else:
            self.last_decode_experts = "dense"
            gate = x.new_zeros(N, E).scatter_(1, top_e, w)  # (N, E)
            h = F.silu(torch.einsum("nd,efd->enf", x, self.gate_proj.weight))
            h = h * torch.einsum("nd,efd->enf", x, self.up_proj.weight)  # (E, N, F)
            out = torch.einsum("enf,edf,ne->nd", h, self.down_proj.weight, gate)
        for shared in self.shared_experts:
            out = out + shared(x)
        return out

    def capacity(self, n_tokens: int) -> int | None:
        """Per-expert assignment limit for a forward over ``n_tokens`` tokens; None when dropless now."""
        if self.capacity_factor is None or not (self.training or self.capacity_at_inference):
            return None
        return math.ceil(n_tokens * self.top_k / self.n_experts * self.capacity_factor)

    def expert(self, x: torch.Tensor, e: int) -> torch.Tensor:
        """Routed expert ``e`` (a SwiGLU) on x (n, d_model) -> (n, d_model)."""
        return self.down_proj(F.silu(self.gate_proj(x, e)) * self.up_proj(x, e), e)

    # The block may hand its pre-norm and residual to forward (a decode step on the fused path: model.Block), so that
    # the fused decode step takes them into its two kernels: two kernels a layer fewer (the norm, the add).
    TAKES_NORM = True

    def _fused_step(self, N: int) -> bool:
        """Whether a forward of N tokens takes the fused decode step (DECODE_EXPERTS "fused": static, N x top_k <
        n_experts)."""
        static = not torch.is_grad_enabled() and self.capacity(N) is None and N <= self.STATIC_MAX_TOKENS
        return static and _check_decode_experts() == "fused" and N * self.top_k < self.n_experts

    def forward(
        self, x: torch.Tensor, norm: nn.Module | None = None, residual: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x (..., d_model) -> (..., d_model). ``norm`` (the block's pre-norm) is applied to x first and ``residual``
        (x's shape) added to the output: ``residual + moe(norm(x))``, the block's FFN sublayer. On the fused decode
        step (no shared experts, an ``RMSNorm`` in x's dtype) both run inside its kernels; elsewhere as modules."""
        if x.shape[-1] != self.d_model:
            raise ValueError(f"x must end in d_model={self.d_model}, got shape {tuple(x.shape)}")
        if norm is None and residual is None:
            return self._forward(x)
        if residual is not None and residual.shape != x.shape:
            raise ValueError(f"residual must have x's shape {tuple(x.shape)}, got {tuple(residual.shape)}")
        why = None  # why the fused step, where it runs, cannot take the block's norm and add
        if self.shared_experts:
            why = "its shared experts' sum comes before the residual add"
        elif norm is not None and not (isinstance(norm, RMSNorm) and norm.weight.dtype == x.dtype):
            why = f"the norm is a {type(norm).__name__} in {getattr(norm, 'weight', x).dtype}, the input {x.dtype}"
        fused = self._fused_step(x.numel() // self.d_model)
        if fused and why is not None and not torch.compiler.is_compiling():  # visible, once: the kernels run without
            once("moe_block_norm", f"MoE decode step: the block's norm and add run outside its kernels: {why}")
        if fused and why is None:
            self.last_dispatch, self.last_decode_experts = "static", "fused"
            D = self.d_model
            out = moe_decode_step(x.reshape(-1, D), self.router.weight, self.router.bias, self.gate_proj.weight,
                                  self.up_proj.weight, self.down_proj.weight, self.top_k, self.norm_topk_prob,
                                  None if norm is None else norm.weight, 1e-5 if norm is None else norm.eps,
                                  None if residual is None else residual.reshape(-1, D))  # fmt: skip
            return out.reshape(x.shape)
        out = self._forward(x if norm is None else norm(x))
        return out if residual is None else residual + out

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = x.reshape(-1, self.d_model)  # (N, D)
        N, E, K = x.shape[0], self.n_experts, self.top_k
        capacity = self.capacity(N)
        static = not torch.is_grad_enabled() and capacity is None and N <= self.STATIC_MAX_TOKENS
        if self._fused_step(N):
            # A few tokens' routing and chosen experts in two kernels (DECODE_EXPERTS), the router's product included:
            # the same sequence as below and _static's gather branch, top-k by max passes whatever K.
            self.last_dispatch, self.last_decode_experts = "static", "fused"
            out = moe_decode_step(x, self.router.weight, self.router.bias, self.gate_proj.weight, self.up_proj.weight,
                                  self.down_proj.weight, K, self.norm_topk_prob)  # fmt: skip
            for shared in self.shared_experts:
                out = out + shared(x)
            return out.reshape(shape)

        if self._route_kernel(x, N, static):  # DISPATCH="fused" routed in one launch (FUSED_ROUTE says why)
            top_w, top_e, counts, logits = moe_route(x, self.router.weight, self.router.bias, K, self.norm_topk_prob,
                                                     return_logits=True)  # fmt: skip
            self.last_decode_experts, self.last_dispatch = None, "fused"
            expert_flat = top_e.t().reshape(-1).long()  # (K*N,) a = k * N + token
            if counts is not None:  # the kernel's per-chunk counts
                load = counts.sum(dim=0)
            else:  # its reference ran (off CUDA)
                load = expert_flat.new_zeros(E).scatter_add_(0, expert_flat, torch.ones_like(expert_flat))
            kept = None
            if capacity is not None and capacity < K * N:
                kept = assignment_ranks(expert_flat, E) < capacity  # (K*N,) in assignment order
            out = self._fused(x, top_w, top_e, kept, counts)
            for shared in self.shared_experts:
                out = out + shared(x)
            balance, z = self._losses(logits, logits.softmax(dim=-1), load, N)
            self.aux_loss = balance + z
            self._stats = (load, balance, z, capacity, N * K)
            return out.reshape(shape)

        # Router in at least fp32 (``router_logits`` says why)
        logits = router_logits(x, self.router.weight, self.router.bias)  # (N, E)
        # A decode step's top-k as K max reductions, which the compiler fuses with the softmax: torch.topk
        # was two sorting kernels per layer (gatherTopK, bitonicSort), 0.25 ms of the MoE student's 1.87 ms
        # step at batch 1 on an H200 (docs/decode.md). So in any compiled forward too (training with
        # speed.compile: the same two kernels, 18 us of the compiled layer's 576 us forward + backward at 4,096
        # tokens on an H100, docs/results/kernels/moe_h100_padded.json); eagerly the K rounds would be 3K launches.
        by_max = K <= 4 and (static or torch.compiler.is_compiling())
        probs, top_p, top_e = route(logits, K, self.norm_topk_prob, by_max)  # (N, E), (N, K), (N, K)

        self.last_decode_experts = None
        if static:
            self.last_dispatch = "static"
            return self._static(x, top_p, top_e).reshape(shape)

        # Assignments in priority order, a = k * N + token: all first choices in token order, then all second
        # choices ... Eagerly the layer is launch-bound at training sizes, so each op counts (tests/layers/test_moe.py
        # bounds them): one sort gives the order and the sorted experts, and no statistic is computed here.
        expert_flat = top_e.t().reshape(-1)  # (K*N,)
        # Stable by expert keeps priority order inside each expert's slice, so the first `capacity` assignments
        # of a slice are the ones that fit.
        sorted_e, order, load = sort_by_expert(expert_flat, E)  # (K*N,), (K*N,), (E,)
        keep = None  # (K*N,) in sorted order: whether the assignment is within its expert's capacity; None: all are
        if capacity is not None and capacity < K * N:
            # Within capacity <=> the assignment `capacity` places before it in sorted order has another expert
            # (its rank in its expert's slice is < capacity); the first `capacity` assignments always are.
            keep = F.pad(sorted_e, (capacity, 0), value=-1)[: K * N] != sorted_e
        fused = DISPATCH == "fused" and N > 0  # takes top_p, top_e and keep as they are: no gather of them here
        if not fused:
            tokens = order % max(N, 1)  # (K*N,) each sorted assignment's token ...
            ws = top_p[tokens, order // max(N, 1)].to(x.dtype)  # (K*N,) ... and its routing weight

        if DISPATCH == "padded" and (capacity is None or N == 0) and not torch.compiler.is_compiling():
            once("moe_padded", "MoE: DISPATCH='padded' sizes its slabs by the capacity, and this forward has none "
                 "(capacity_factor None, or inference without capacity_at_inference): auto's path runs")  # fmt: skip
        if fused:
            self.last_dispatch = "fused"
            kept = None  # (K*N,) in assignment order, a = k * N + token
            if keep is not None:
                kept = torch.empty_like(keep).scatter_(0, order, keep)
            out = self._fused(x, top_p, top_e, kept)
        elif DISPATCH == "padded" and capacity is not None and N > 0:
            self.last_dispatch = "padded"
            out = self._padded(x, sorted_e, order, tokens, ws, load, capacity)
        elif self._use_grouped(x):
            self.last_dispatch = "grouped"
            if keep is not None:
                ws = ws * keep  # over capacity: weight 0, so the row adds 0 to the output and gets 0 gradient
            out = self._grouped(x, order, tokens, ws, load)
        else:
            self.last_dispatch = "loop"
            kept = load if capacity is None else load.clamp(max=capacity)  # (E,) kept assignments per expert
            if keep is not None:
                tokens, ws = tokens[keep], ws[keep]  # (M,) kept assignments grouped by expert
            xs = x[tokens]  # (M, D)
            ys = [self.expert(chunk, e) for e, chunk in enumerate(xs.split(kept.tolist())) if chunk.shape[0]]
            out = x.new_zeros(N, self.d_model)
            if ys:
                out = out.index_add(0, tokens, torch.cat(ys) * ws[:, None])  # (N, D)
        for shared in self.shared_experts:
            out = out + shared(x)

        balance, z = self._losses(logits, probs, load, N)
        self.aux_loss = balance + z
        self._stats = (load, balance, z, capacity, N * K)  # last_stats builds its dict from these when read
        return out.reshape(shape)

    @property
    def last_stats(self) -> dict[str, torch.Tensor | int | None]:
        """The last sorted forward's routing statistics (see the class docstring), detached; {} before the first.
        Built when read, so a forward spends no op on them."""
        if self._stats is None:
            return {}
        load, balance, z, capacity, n_assignments = self._stats
        dropped = (load - (load if capacity is None else load.clamp(max=capacity))).sum()
        return {
            "tokens_dropped": dropped.detach(),
            "load": load.detach(),
            "drop_fraction": (dropped.float() / max(n_assignments, 1)).detach(),
            "balance_loss": balance.detach(),
            "z_loss": z.detach(),
            "capacity": capacity,
        }

    def _route_kernel(self, x: torch.Tensor, n_tokens: int, static: bool) -> bool:
        """Whether this forward routes through ``moe_route`` (``FUSED_ROUTE``): DISPATCH "fused", a sorted forward
        with tokens, the router's weights in x's dtype and no autocast (the kernel computes in x's dtype)."""
        if FUSED_ROUTE not in FUSED_ROUTES:
            raise ValueError(
                f"archzoo.layers.moe.FUSED_ROUTE must be one of {', '.join(FUSED_ROUTES)}; got {FUSED_ROUTE!r}"
            )
        if DISPATCH != "fused" or FUSED_ROUTE != "kernel" or n_tokens == 0 or static:
            return False
        bias = self.router.bias
        why = None
        if self.router.weight.dtype != x.dtype or (bias is not None and bias.dtype != x.dtype):
            why = f"the router's weights are {self.router.weight.dtype}, x is {x.dtype}"
        elif compute_dtype(x) != x.dtype:
            why = f"autocast computes in {compute_dtype(x)}, x is {x.dtype}"
        if why and not torch.compiler.is_compiling():  # a traced forward cannot log (a graph break)
            once("moe_fused_route", f"MoE: FUSED_ROUTE='kernel', but the routing runs in torch: {why}")
        return why is None

    def _fused(
        self, x: torch.Tensor, top_p: torch.Tensor, top_e: torch.Tensor, kept: torch.Tensor | None,
        counts: torch.Tensor | None = None,
    ) -> torch.Tensor:  # fmt: skip
        """Routed experts through ``moe_grouped_experts`` -> (N, D): top_p, top_e (N, K); an assignment over its
        expert's capacity (``kept`` False, (K*N,) in assignment order a = k * N + token) gets weight 0, so it adds 0
        and gets 0 gradient; ``counts``: ``moe_route``'s, for the plan. In the compute dtype (autocast's, as F.linear
        would), the result in x's dtype."""
        N, K = top_e.shape
        dtype = compute_dtype(x)
        w = top_p.to(dtype)  # (N, K)
        if kept is not None:
            w = w * kept.view(K, N).t().to(dtype)
        weights = [p.weight if p.weight.dtype == dtype else p.weight.to(dtype)
                   for p in (self.gate_proj, self.up_proj, self.down_proj)]  # fmt: skip
        return moe_grouped_experts(x.to(dtype), *weights, top_e, w, counts=counts).to(x.dtype)

    def _use_grouped(self, x: torch.Tensor) -> bool:
        """Whether this forward's experts run as grouped GEMMs, by ``DISPATCH`` and ``grouped_mm_unfit``."""
        if DISPATCH not in DISPATCHES:
            raise ValueError(f"archzoo.layers.moe.DISPATCH must be one of {', '.join(DISPATCHES)}; got {DISPATCH!r}")
        if DISPATCH == "loop" or x.shape[0] == 0:  # no tokens: nothing to multiply either way
            return False
        weights = (self.gate_proj.weight, self.up_proj.weight, self.down_proj.weight)
        reason = grouped_mm_unfit(x, weights, compute_dtype(x), self.top_k)
        if reason is None:
            return True
        if DISPATCH == "grouped":
            raise ValueError(f"MoE: DISPATCH='grouped', but torch's grouped GEMM cannot run these experts: {reason}")
        if not torch.compiler.is_compiling():  # a traced forward cannot log (a graph break); last_dispatch says it
            once("moe_dispatch", f"MoE experts run as a per-expert loop, not grouped GEMMs: {reason}")
        return False

    def _grouped(
        self, x: torch.Tensor, order: torch.Tensor, tokens: torch.Tensor, ws: torch.Tensor, load: torch.Tensor
    ) -> torch.Tensor:
        """Routed experts as one grouped GEMM per projection over the assignments sorted by expert -> (N, D).

        x (N, D); order (K*N,) the assignments (index k*N + token) sorted stably by expert; tokens (K*N,) the token
        of each sorted assignment; ws (K*N,) its routing weight, zero where it is over its expert's capacity; load
        (E,) assignments per expert. No host synchronisation: shapes depend on N and K alone, and the group ends
        are a device tensor.

        A dropped assignment stays in its expert's group with routing weight zero, so the group offsets are the
        cumulative loads and the last one is K*N, the row count. Rows past the last offset are not written by
        grouped_mm, neither in the output nor in the input's gradient (uninitialised memory: NaN and 1e29 seen on
        the CPU, inf in pytorch/torchtitan#1237), so sorting the drops past the end would need masks (``where``)
        on the expert input and output to keep that memory out of the result and of x's gradient. The cost: the
        dropped rows' FLOPs, ``drop_fraction`` of the whole, small at the usual capacity factors.
        """
        N, D, K = x.shape[0], self.d_model, self.top_k
        dtype = compute_dtype(x)
        offs = torch.cumsum(load, 0, dtype=torch.int32)  # (E,) end of each expert's rows
        xs = x[tokens].to(dtype)  # (K*N, D) rows grouped by expert
        wd = self.down_proj.weight.to(dtype).transpose(-2, -1)  # (E, F, D)
        if GATE_UP not in GATE_UPS:
            raise ValueError(f"archzoo.layers.moe.GATE_UP must be one of {', '.join(GATE_UPS)}; got {GATE_UP!r}")
        if GATE_UP == "fused":  # one grouped GEMM of N = 2F: gate's F columns, then up's
            wgu = torch.cat([self.gate_proj.weight, self.up_proj.weight], dim=1).to(dtype).transpose(-2, -1)
            g, u = _grouped_mm(xs, wgu, offs=offs).chunk(2, dim=-1)  # (K*N, F) each
            h = F.silu(g) * u
        else:
            wg, wu = (p.weight.to(dtype).transpose(-2, -1) for p in (self.gate_proj, self.up_proj))  # (E, D, F)
            h = F.silu(_grouped_mm(xs, wg, offs=offs)) * _grouped_mm(xs, wu, offs=offs)  # (K*N, F)
        ys = _grouped_mm(h, wd, offs=offs)  # (K*N, D)
        contrib = ys * ws[:, None]  # (K*N, D) in x's dtype (autocast: ys in the autocast dtype)
        # Back to assignment order (a permutation: no atomics, deterministic), then each token's K choices summed.
        return contrib.new_zeros(K * N, D).index_copy(0, order, contrib).view(K, N, D).sum(0)  # (N, D)

    def _padded(
        self, x: torch.Tensor, sorted_e: torch.Tensor, order: torch.Tensor, tokens: torch.Tensor, ws: torch.Tensor,
        load: torch.Tensor, capacity: int,
    ) -> torch.Tensor:  # fmt: skip
        """Routed experts over capacity-padded slabs -> (N, D) (``DISPATCH = "padded"``, a capacity applying).

        Each sorted assignment's rank in its expert's slice (its priority order) is its row in that expert's slab
        of ``capacity`` rows: the kept ones (rank < capacity, the same set the other paths keep) are copied there,
        the dropped ones to one spare row past the slabs, which no GEMM reads; rows an expert does not fill stay
        zero. Then one ``torch.bmm`` per projection over (E, capacity, .), the SwiGLU between, and each kept
        assignment's output read back from its row, weighted, back in assignment order and summed over the K
        choices; a dropped one reads row 0 with weight 0 (it adds nothing and its input gets no gradient), as the
        grouped path weights its drops. Static shapes (E x capacity rows, capacity from the token count), no host
        read."""
        N, D, K, E = x.shape[0], self.d_model, self.top_k, self.n_experts
        dtype = compute_dtype(x)
        start = torch.cumsum(load, 0) - load  # (E,) each expert's first sorted position
        rank = torch.arange(K * N, device=x.device) - start[sorted_e]  # (K*N,) place in its expert's slice
        spare = E * capacity
        kept = rank < capacity  # (K*N,) the same set the other paths keep
        row = torch.where(kept, sorted_e * capacity + rank, spare)  # (K*N,) its slab row, or the spare
        slabs = x.new_zeros(spare + 1, D, dtype=dtype).index_copy(0, row, x[tokens].to(dtype))  # (E*C + 1, D)
        xs = slabs[:spare].view(E, capacity, D)
        # (E, F, D), (E, F, D), (E, D, F)
        wg, wu, wd = (p.weight.to(dtype) for p in (self.gate_proj, self.up_proj, self.down_proj))
        h = F.silu(batched_linear(xs, wg)) * batched_linear(xs, wu)  # (E, C, F)
        ys = batched_linear(h, wd).reshape(spare, D)  # (E*C, D)
        contrib = ys[torch.where(kept, row, 0)] * (ws * kept)[:, None]  # (K*N, D); a dropped one: weight 0
        return contrib.new_zeros(K * N, D).index_copy(0, order, contrib).view(K, N, D).sum(0)  # (N, D)

    def _losses(
        self, logits: torch.Tensor, probs: torch.Tensor, load: torch.Tensor, n_tokens: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Switch balance loss coef * E * sum_i f_i P_i and ST-MoE z-loss coef * mean(logsumexp(logits)^2)."""
        if n_tokens == 0:
            balance = z = logits.new_zeros(())
        else:
            f = load.to(probs.dtype) / (n_tokens * self.top_k)  # (E,) fraction of assignments
            P = probs.mean(dim=0)  # (E,) mean router probability
            balance = self.aux_loss_coef * self.n_experts * (f * P).sum()
            z = self.z_loss_coef * torch.logsumexp(logits, dim=-1).square().mean()
        return balance, z


class _BatchedLinear(torch.autograd.Function):
    """x (E, C, K) @ w (E, N, K)^T -> (E, C, N), ``torch.bmm(x, w.transpose(1, 2))`` with the weight's gradient
    computed in the weight's own layout. Autograd through the transposed view computes x^T @ dy, an (E, K, N)
    tensor, and returns its transpose, whose strides are not the parameter's: the gradient's accumulation then
    copies it into the parameter's layout, one transposing copy per expert weight a step (three kernels of 46 us
    each in the padded MoE layer's forward + backward at 4,096 tokens on an H200, against 4-5 us for a plain copy:
    docs/results/kernels/moe_h200_recompile_fix.json). Here dw = dy^T @ x, (E, N, K) as the weight is, as
    ``F.linear``'s backward gives it."""

    @staticmethod
    def forward(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return torch.bmm(x, w.transpose(1, 2))

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.save_for_backward(*inputs)

    @staticmethod
    def backward(ctx, dy: torch.Tensor):
        x, w = ctx.saved_tensors
        dx = torch.bmm(dy, w) if ctx.needs_input_grad[0] else None
        dw = torch.bmm(dy.transpose(1, 2), x) if ctx.needs_input_grad[1] else None
        return dx, dw


def batched_linear(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``torch.bmm(x, w.transpose(1, 2))`` for x (E, C, K), w (E, N, K) -> (E, C, N): a linear layer per batch entry,
    w's gradient in w's layout (``_BatchedLinear``)."""
    return _BatchedLinear.apply(x, w)


def sort_by_expert(expert: torch.Tensor, n_experts: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Assignments' experts (A,) int64 -> (sorted experts (A,), order (A,), load (n_experts,)): ``order`` the
    stable sort's permutation (``sorted = expert[order]``), ``load`` the assignments per expert. ``ROUTE`` picks
    how (``"auto"``: the counting sort under torch.compile, the sort eagerly): a stable ``torch.sort``, or a
    counting sort (each assignment's slot = the start of its expert's slice + the assignments of that expert before
    it, a running sum over a one-hot (n_experts, A); then ``order`` by scattering each assignment's index to its
    slot). Same results, no host synchronisation either way. The counting sort holds n_experts x A int64 (4 MiB at
    8 experts and 65,536 assignments): it is for few experts. Load is counted by scatter or sum, not bincount,
    which sizes its output from the data (a host sync on CUDA)."""
    if ROUTE not in ROUTES:
        raise ValueError(f"archzoo.layers.moe.ROUTE must be one of {', '.join(ROUTES)}; got {ROUTE!r}")
    route = ("count" if torch.compiler.is_compiling() else "sort") if ROUTE == "auto" else ROUTE
    if route == "sort" or expert.numel() == 0:
        sorted_e, order = torch.sort(expert, stable=True)
        load = expert.new_zeros(n_experts).scatter_add_(0, expert, torch.ones_like(expert))
        return sorted_e, order, load
    seen = _running_counts(expert, n_experts)
    load = seen[:, -1]  # (E,)
    slot = (load.cumsum(0) - load)[expert] + seen.gather(0, expert[None]).squeeze(0) - 1  # (A,) its sorted position
    order = torch.empty_like(expert).scatter_(0, slot, torch.arange(expert.numel(), device=expert.device))
    return expert.new_empty(expert.shape).scatter_(0, slot, expert), order, load


def assignment_ranks(expert: torch.Tensor, n_experts: int) -> torch.Tensor:
    """Assignments' experts (A,) int64 in priority order -> each one's rank among its expert's assignments (A,): how
    many of the same expert come before it (the counting sort's running sum, ``sort_by_expert``), so the first
    ``capacity`` of each expert are those with rank < capacity, as the sorted paths keep them."""
    return _running_counts(expert, n_experts).gather(0, expert[None]).squeeze(0) - 1


def _running_counts(expert: torch.Tensor, n_experts: int) -> torch.Tensor:
    """Assignments' experts (A,) int64 -> (n_experts, A): each expert's assignments up to and including each
    position, a running sum over a one-hot (n_experts x A int64: for few experts)."""
    onehot = (expert[None, :] == torch.arange(n_experts, device=expert.device)[:, None]).to(expert.dtype)
    return onehot.cumsum(1)


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype the expert projections compute in: autocast's where it is on (as ``F.linear`` would), else x's."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype


_CUDA_MAJOR: dict[int, int] = {}


def _cuda_major(index: int) -> int | None:
    """The compute capability's major of CUDA device ``index``, read outside compiled code and kept: torch.compile
    cannot trace ``get_device_properties`` (it returns no tensor; on an H100 the compiled MoE rows failed on it,
    2026-12-05). None inside a compiled forward that no eager call preceded (the check is skipped there; a GPU
    without the kernel then fails in grouped_mm). No ``torch.compiler.assume_constant_result`` at import: that
    imports dynamo, and Triton with it, before the tests choose its mode."""
    major = _CUDA_MAJOR.get(index)
    if major is None and not torch.compiler.is_compiling():
        major = _CUDA_MAJOR[index] = torch.cuda.get_device_properties(index).major
    return major


def grouped_mm_unfit(
    x: torch.Tensor, weights: tuple[torch.Tensor, ...], dtype: torch.dtype, top_k: int = 1
) -> str | None:
    """Why torch's grouped GEMM cannot run these experts, or None when it can.

    x (N, D) the tokens; weights the stacked projections (E, out, in) in the order gate, up, down; dtype the one
    they compute in (``compute_dtype``). The constraints, from torch's checks (GroupedMMUtils.h, GroupedBlas.cpp,
    and the shape function that torch.compile traces with):
    - fp32, bf16 or fp16 (no fp64); on CUDA only bf16 runs the kernel (CUTLASS, compute capability 9.x / 10.x,
      not ROCm), the rest a per-group loop that copies the offsets to the host; at most 1024 experts (one thread
      per group prepares the problem sizes);
    - under torch.compile only bf16: the shape function rejects other dtypes;
    - every operand's leading stride a multiple of 16 bytes, so d_model and d_ff multiples of 16 / itemsize
      (8 in bf16, 4 in fp32), and on CUDA 16-byte aligned data pointers;
    - int32 group offsets: fewer than 2**31 rows.
    """
    if _grouped_mm is None:
        return f"torch {torch.__version__} has neither torch.nn.functional.grouped_mm nor torch._grouped_mm"
    if dtype not in (torch.float32, torch.bfloat16, torch.float16):
        return f"grouped_mm takes float32, bfloat16 or float16, not {dtype}"
    if not torch.is_autocast_enabled(x.device.type) and any(w.dtype != x.dtype for w in weights):
        return f"x is {x.dtype} and the expert weights {weights[0].dtype} (no autocast)"
    if x.device.type == "cuda":
        if torch.version.hip is not None:
            return "not tried on ROCm (grouped_mm's CK kernel covers gfx942 / gfx950; other GPUs loop on the host)"
        if dtype != torch.bfloat16:
            return f"on CUDA grouped_mm runs its kernel in bfloat16 only; {dtype} takes a loop that syncs with the host"
        major = _cuda_major(x.get_device())
        if major is not None and major not in (9, 10):
            return f"grouped_mm's CUDA kernel needs compute capability 9.x or 10.x, this GPU is {major}.x"
        if weights[0].shape[0] > 1024:
            return f"grouped_mm's CUDA kernel takes at most 1024 groups, got {weights[0].shape[0]} experts"
    elif x.device.type != "cpu":
        return f"grouped_mm is used on CPU and CUDA here, not {x.device.type}"
    if torch.compiler.is_compiling() and dtype != torch.bfloat16:
        return f"torch.compile traces grouped_mm in bfloat16 only (its shape function rejects {dtype})"
    align = 16 // dtype.itemsize
    d_ff, d_model = weights[0].shape[-2:]
    for name, size in (("d_model", d_model), ("d_ff", d_ff)):
        if size % align:
            return f"{name}={size} is not a multiple of {align}: grouped_mm needs 16-byte row strides ({dtype})"
    for name, w in zip(("gate_proj", "up_proj", "down_proj"), weights, strict=True):
        if w.stride(-1) != 1 or w.stride(-2) % align or w.stride(-2) < w.shape[-1] or w.stride(0) % align:
            return f"{name}.weight has strides {w.stride()}; grouped_mm needs rows contiguous and 16-byte aligned"
        # Not while compiling: dynamo cannot trace storage_offset() (an int from a tensor method; the compiled MoE
        # rows failed on it on an H200, 2026-12-05), and the eager calls before a compiled one have checked it.
        if x.is_cuda and not torch.compiler.is_compiling() and (w.storage_offset() * w.element_size()) % 16:
            return f"{name}.weight does not start on a 16-byte boundary"
    if x.shape[0] * top_k >= 2**31:
        return f"{x.shape[0] * top_k} assignments overflow grouped_mm's int32 offsets"
    return None


def _check_decode_experts() -> str:
    """``DECODE_EXPERTS``, or ValueError listing the forms."""
    if DECODE_EXPERTS not in DECODE_EXPERTS_FORMS:
        forms = ", ".join(DECODE_EXPERTS_FORMS)
        raise ValueError(f"archzoo.layers.moe.DECODE_EXPERTS must be one of {forms}; got {DECODE_EXPERTS!r}")
    return DECODE_EXPERTS
