"""The Mamba block (Gu & Dao 2023, "Mamba: Linear-time sequence modeling with selective state
spaces", arXiv:2312.00752, Sec. 3.4 and Fig. 3).

    x, z   = in_proj(u)                             d_model -> 2 d_inner
    x      = SiLU(depthwise causal conv1d(x))       width d_conv
    dt, B, C = x_proj(x)                            d_inner -> dt_rank + 2 d_state
    dt     = softplus(dt_proj(dt))                  dt_rank -> d_inner, with bias
    y      = selective_scan(x, dt, A, B, C) + D x   h_t = exp(dt A) h_{t-1} + dt B_t x_t, y_t = C_t h_t
    out    = out projection(y * SiLU(z))

The convolution and the scan go through ``archzoo.kernels`` (``causal_conv1d_fn`` /
``causal_conv1d_update``, ``selective_scan_fn`` / ``selective_state_update``, with the
causal-conv1d and mamba_ssm signatures). A decode step on the fused path (``FUSED_STEP``) runs the conv update,
x_proj, dt_proj and the state update as one kernel instead (``mamba_decode_step``, issue 18: at batch 1 the
step is bound by launches).

Initialisation (``init_weights``, the reference implementation's): ``A = -exp(A_log)`` with
``A_log[c, n] = log(n + 1)`` (S4D-Real), ``D = 1``, the dt bias the inverse softplus of a ``dt``
drawn log-uniformly in ``[dt_min, dt_max]`` and floored at ``dt_init_floor``, ``dt_proj.weight``
uniform in ``±dt_rank^-0.5``, the conv as PyTorch's default ``Conv1d`` init, biases zero.
``A_log``, ``D`` and ``dt_proj.bias`` carry ``_no_weight_decay = True`` (mamba_ssm's marker;
``no_weight_decay_names`` lists them): an optimiser should exclude them from weight decay.
The output projection is named ``o_proj`` so the model's residual init (std / sqrt(2 L)) applies,
as mamba_ssm rescales its ``out_proj``.

Decode state (``LayerState``):
- ``conv`` (B, d_inner, d_conv - 1) in the cache dtype: the last ``d_conv - 1`` conv inputs,
  oldest first (causal-conv1d's ``conv_state`` convention with ``state_len = d_conv - 1``, the
  least it accepts; mamba_ssm allocates ``d_conv``, one column that is never read);
- ``ssm`` (B, d_inner, d_state) in fp32 (or the cache dtype when it is wider): the scan's state
  accumulates over the whole sequence, so it is not rounded to 16 bits (as mamba_ssm's kernels).

With a state, several tokens (prefill, or a chunk after it) run the sequence kernels from the
stored conv inputs and SSM state and write the final ones back; one token runs the update
kernels. At ``ctx.pos == 0`` the state is zeroed first, so a reused cache starts clean. The
buffers hold values only (no autograd history): gradients do not flow from one call into the
next through the cache, and the one-token update kernels are not differentiable (as mamba_ssm's
are not), so decode belongs under ``torch.no_grad()``.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from ..kernels import (
    causal_conv1d_fn,
    causal_conv1d_update,
    decode_linear_conv,
    mamba_decode_step,
    selective_scan_fn,
    selective_state_update,
)
from ..kernels._dispatch import once, record
from ..kernels.mamba_step import NO_TRITON_DEVICE, fused_step_reason
from . import base
from . import fused as fused_mod
from .base import LayerConfig, LayerState, TakesNormAndResidual, dtype_bytes, field_error, with_residual
from .fused import decode_project, keep_address, signature
from .norm import RMSNorm

# A decode step on the fused path (``fused``: the cache reads the decode copies, as ``generate``'s does) runs the
# conv update, x_proj, dt_proj and the state update as one kernel (``archzoo.kernels.mamba_decode_step``) where it
# runs (CUDA, or CPU under TRITON_INTERPRET=1; d_state and dt_rank within its limits); False: the four kernels as
# before (a benchmark compares both in one process). Read while a step is traced: dynamo guards on it. Off: on an
# H100 its GPU tests passed but it lost the A/B at batch 1 (0.918 against 0.827 ms a step for the Mamba hybrid,
# 1.086 against 0.930 for mamba-quarter) and tied at 16 (docs/kernels.md, "The Mamba decode step in one kernel").
FUSED_STEP = False
# The decode step's x_proj and dt_proj as one projection (``DecodeA.xdt``: [W_dt W_x,dt ; W_x,B ; W_x,C], made by
# ``refresh_fused`` in fp32 and rounded once): dt is linear in x_proj's first dt_rank outputs, so the two GEMVs
# of a step (and the split-K reduce that x_proj's 2 N + dt_rank outputs need) become one. It reads
# (d_inner + 2 N) d_inner weights instead of (dt_rank + 2 N) d_inner + d_inner dt_rank: 0.58 MB more a layer at
# the students' shapes (d_inner 576, N 16, dt_rank 36), about 0.2 us at 3 TB/s, against two launches of 1-3 us
# (docs/decode.md). Large d_inner would read far more, hence FOLD_DT_MAX_EXTRA_BYTES; False: every step unfolded.
FOLD_DT = True
FOLD_DT_MAX_EXTRA_BYTES = 4 << 20
# The decode step's in_proj and conv update as one launch: the conv step in the GEMV's epilogue
# (``archzoo.kernels.decode_linear_conv``; each x channel's conv needs only that channel's in_proj output, its W - 1
# state taps and weights, so the program computing the column does it). Bit for bit the unfused step's values in
# the interpreter (bf16 included). Where the GEMV runs (``gemv_for``) and the shapes fit; else the two kernels.
# Timed in the eighteenth session (H100, tools/decode_profile.py --in-proj-conv on,off --update-pdl on,off, one
# process, docs/results/decode/profile_h100_inprojconv.log): Jamba's batch-1 step 0.571 -> 0.548 ms with the update
# kernels in the PDL chain, 0.679 -> 0.605 without; Mamba 0.496 -> 0.485 and 0.575 -> 0.528. On by default.
# Where it runs it takes the place of FUSED_STEP's kernel (which does the conv itself); where it does not fit, the
# step records why (``last_backend("decode_linear_conv")``: 'unfused').
IN_PROJ_CONV = True


def fold_dt_extra_bytes(d_inner: int, d_state: int, dt_rank: int, itemsize: int) -> int:
    """Bytes a step reads more with x_proj and dt_proj folded into one weight than with the two."""
    folded = (d_inner + 2 * d_state) * d_inner
    unfolded = (dt_rank + 2 * d_state) * d_inner + d_inner * dt_rank
    return (folded - unfolded) * itemsize


class MambaConfig(LayerConfig):
    """The Mamba (selective SSM) block."""

    type: Literal["mamba"] = "mamba"
    d_state: int = Field(default=16, gt=0)
    d_conv: int = Field(default=4, ge=2, le=8, description="depthwise causal conv width (2..8)")
    expand: float = Field(default=2, gt=0)
    dt_rank: int | None = Field(default=None, gt=0, description="default ceil(d_model / 16)")
    dt_min: float = Field(default=1e-3, gt=0)
    dt_max: float = Field(default=1e-1, gt=0)
    dt_init_floor: float = Field(default=1e-4, gt=0)
    conv_bias: bool = True
    bias: bool = False

    @model_validator(mode="after")
    def _check(self) -> MambaConfig:
        if self.dt_min > self.dt_max:
            raise field_error("dt_min", f"dt_min={self.dt_min} must not exceed dt_max={self.dt_max}")
        return self

    def check_dims(self, d_model: int) -> None:
        if int(self.expand * d_model) < 1:
            raise field_error("expand", f"expand={self.expand} gives an empty inner dimension")


def mamba_dims(d_model: int, m: MambaConfig) -> tuple[int, int]:
    """(d_inner, dt_rank) of a Mamba block."""
    return int(m.expand * d_model), m.dt_rank or math.ceil(d_model / 16)


def ssm_state_dtype(dtype: torch.dtype) -> torch.dtype:
    """The SSM state's dtype for a cache of ``dtype``: fp32, or ``dtype`` where it is wider."""
    return torch.promote_types(dtype, torch.float32)


def _rows(t: torch.Tensor) -> torch.Tensor:
    """(B, T, N) -> (B, N, T) contiguous, as mamba_ssm's Mamba makes B and C. The scan reads a state's
    row along time; seen through a transpose, consecutive steps lie N + N + dt_rank elements apart in
    x_proj's output and every load touches another sector. The copy moves B * T * N elements, d_inner / N
    times fewer than u."""
    return t.transpose(1, 2).contiguous()


def _time_last(linear: nn.Linear, x2: torch.Tensor, B: int, T: int, bias: bool = True) -> torch.Tensor:
    """``linear`` over the rows of x2 (B*T, in) -> (B, out, T) with time the unit stride.

    Computed as weight @ x2^T, an (out, B*T) matrix seen as (B, out, T) without a copy, as mamba_ssm's
    Mamba lays it out. ``linear(x).transpose(1, 2)`` has time at stride ``out`` instead: the scan then
    copies u / delta / z to make time contiguous and the conv reads x channel-last, one extra pass over
    each operand per call in a layer bound by memory traffic. (FSDP shards the mixer as one unit, so its
    linears' weights are whole inside its forward.)"""
    if bias and linear.bias is not None:
        y = torch.addmm(linear.bias[:, None], linear.weight, x2.t())
    else:
        y = linear.weight @ x2.t()
    return y.view(y.shape[0], B, T).permute(1, 0, 2)


class Mamba(TakesNormAndResidual, nn.Module):
    no_weight_decay_names = ("A_log", "D", "dt_proj.bias")

    def __init__(self, cfg: MambaConfig, d_model: int, layer_idx: int = 0, kv_source: int | None = None):
        super().__init__()
        self.cfg = cfg
        self.layer_idx = layer_idx
        self.d_model = d_model
        self.d_inner, self.dt_rank = mamba_dims(d_model, cfg)
        self.d_state, self.d_conv = cfg.d_state, cfg.d_conv
        Di, N, R = self.d_inner, self.d_state, self.dt_rank
        self.in_proj = nn.Linear(d_model, 2 * Di, bias=cfg.bias)  # x and z
        self.conv1d = nn.Conv1d(Di, Di, cfg.d_conv, groups=Di, bias=cfg.conv_bias)  # weight (Di, 1, d_conv)
        self.x_proj = nn.Linear(Di, R + 2 * N, bias=False)  # dt, B, C
        self.dt_proj = nn.Linear(R, Di, bias=True)
        self.A_log = nn.Parameter(torch.empty(Di, N))
        self.D = nn.Parameter(torch.empty(Di))
        self.o_proj = nn.Linear(Di, d_model, bias=cfg.bias)
        self.A_log._no_weight_decay = True
        self.D._no_weight_decay = True
        self.dt_proj.bias._no_weight_decay = True
        self.fused = DecodeA(self)  # the decode step's A = -exp(A_log), made once (layers/fused.py's freshness rule)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """Mamba's initialisation (module docstring); the model calls it again after its generic init."""
        cfg, Di, N = self.cfg, self.d_inner, self.d_state
        dev = self.A_log.device
        self.A_log.copy_(torch.log(torch.arange(1, N + 1, dtype=torch.float64, device=dev)).expand(Di, N))
        self.D.fill_(1.0)
        nn.init.uniform_(self.dt_proj.weight, -(self.dt_rank**-0.5), self.dt_rank**-0.5)
        lo, hi = math.log(cfg.dt_min), math.log(cfg.dt_max)
        dt = torch.exp(torch.rand(Di, dtype=torch.float64, device=dev) * (hi - lo) + lo).clamp(min=cfg.dt_init_floor)
        self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
        self.conv1d.reset_parameters()
        for lin in (self.in_proj, self.o_proj):
            if lin.bias is not None:
                lin.bias.zero_()

    # ------------------------------------------------------------------ state

    @staticmethod
    def bounded_state(cfg: MambaConfig) -> bool:
        return True

    @staticmethod
    def state_bytes(cfg: MambaConfig, d_model: int, batch_size: int, seq_len: int, dtype: torch.dtype) -> int:
        d_inner, _ = mamba_dims(d_model, cfg)
        conv = batch_size * d_inner * (cfg.d_conv - 1) * dtype_bytes(dtype)
        ssm = batch_size * d_inner * cfg.d_state * dtype_bytes(ssm_state_dtype(dtype))
        return conv + ssm

    def new_state(self, batch_size: int, max_seq_len: int, dtype: torch.dtype, device) -> LayerState:
        return LayerState(
            conv=torch.zeros(batch_size, self.d_inner, self.d_conv - 1, dtype=dtype, device=device),
            ssm=torch.zeros(batch_size, self.d_inner, self.d_state, dtype=ssm_state_dtype(dtype), device=device),
        )

    # ---------------------------------------------------------------- forward

    def _A(self) -> torch.Tensor:
        return -torch.exp(self.A_log.to(ssm_state_dtype(self.A_log.dtype)))  # (Di, N)

    def _step_A(self, fused: bool) -> torch.Tensor:
        """A for a decode step: on the fused path the copy ``refresh_fused`` made (computed in the step it was an
        Inductor kernel a layer, between the PDL-launched kernels: 15 a step in the Mamba hybrid's), else now."""
        return self.fused.A if fused and self.fused.A is not None and base.ONCE_A_STEP else self._A()

    def forward(
        self,
        x: torch.Tensor,
        state: LayerState | None,
        ctx,
        norm: nn.Module | None = None,
        residual: torch.Tensor | None = None,
    ) -> torch.Tensor:
        B, T, d = x.shape
        if d != self.d_model:
            raise ValueError(f"x has {d} features, expected d_model={self.d_model}")
        if state is not None and ctx.pos == 0:
            state.zero_()  # a sequence starts at position 0 whatever the buffers held
        fused = bool(ctx.fused)
        if state is not None and T == 1 and not torch.is_grad_enabled():  # decode: no host value read
            # The in-place update kernels are for inference; with gradients on, one token takes
            # the sequence path below, which leaves the buffers free of autograd history.
            res = residual[:, 0] if residual is not None else None
            return self._step(x[:, 0], state, fused, norm, res)[:, None]
        if state is not None and ctx.decoding and not torch.is_grad_enabled():
            # A few tokens in a decode step (speculative decoding's verify and replay forwards): token by token
            # through the update kernels, which a compiled step block (fullgraph) traces as custom ops, where the
            # sequence kernels are launched from the host; and the target then computes exactly what it would
            # decoding alone.
            steps = [
                self._step(x[:, t], state, fused, norm, residual[:, t] if residual is not None else None)
                for t in range(T)
            ]
            return torch.stack(steps, dim=1)
        if norm is not None:
            x = norm(x)
        out = self._sequence(x, state, ctx)
        return with_residual(out, residual)

    def _sequence(self, x: torch.Tensor, state: LayerState | None, ctx) -> torch.Tensor:
        """Training and prefill: the causal conv and the selective scan over the whole sequence."""
        B, T, d = x.shape
        R, N = self.dt_rank, self.d_state
        xs, z = _time_last(self.in_proj, x.reshape(B * T, d), B, T).chunk(2, dim=1)  # (B, Di, T) each
        weight = self.conv1d.weight.squeeze(1)  # (Di, d_conv)
        # Initial states: none at position 0; later, copies (a kernel may save its inputs for backward,
        # and the buffers are overwritten below).
        conv0 = ssm0 = None
        if state is not None and (ctx.decoding or ctx.pos > 0):
            conv0, ssm0 = state["conv"].clone(), state["ssm"].clone()
        if state is None:
            xs = causal_conv1d_fn(xs, weight, self.conv1d.bias, activation="silu")
        else:
            xs, conv_final = causal_conv1d_fn(
                xs, weight, self.conv1d.bias, initial_states=conv0, return_final_states=True, activation="silu"
            )
            state["conv"].copy_(conv_final.detach())
        dt, Bm, Cm = self.x_proj(xs.transpose(1, 2)).split([R, N, N], dim=-1)  # (B, T, R), (B, T, N) x2
        dt = _time_last(self.dt_proj, dt.reshape(B * T, R), B, T, bias=False)  # (B, Di, T); bias: in the scan
        out = selective_scan_fn(
            xs,
            dt,
            self._A(),
            _rows(Bm),  # (B, N, T)
            _rows(Cm),
            D=self.D,
            z=z,
            delta_bias=self.dt_proj.bias,
            delta_softplus=True,
            return_last_state=state is not None,
            initial_state=ssm0,
        )
        if state is not None:
            out, last = out
            state["ssm"].copy_(last.detach())
        return self.o_proj(out.transpose(1, 2))  # (B, T, d_model)

    def _step(
        self,
        x: torch.Tensor,
        state: LayerState,
        fused: bool = False,
        norm: nn.Module | None = None,
        residual: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """One token x (B, d_model) -> (B, d_model), ``norm(x)`` first and plus ``residual`` when given; updates
        ``conv`` and ``ssm`` in place. ``fused``: the projections through ``decode_project`` (the decode GEMV with
        the norm and the residual in its epilogues where it runs, ``F.linear`` otherwise), and with ``FUSED_STEP``
        everything between in_proj and o_proj in one kernel where it runs (``mamba_decode_step``), the reason
        recorded where it does not (``last_backend("mamba_decode_step")``: 'unfused'). With ``IN_PROJ_CONV``
        in_proj and the conv update run as one GEMV where it fits (``decode_linear_conv``), the reason recorded
        where it does not."""
        if fused and IN_PROJ_CONV:
            why = self._in_proj_conv_reason(x, state, norm)
            if why is None:  # in_proj and the conv step at once
                nw, eps = (norm.weight, norm.eps) if norm is not None else (None, 1e-5)
                xz = decode_linear_conv(x, self.in_proj.weight, nw, eps, self.in_proj.bias, state["conv"],
                                        self.conv1d.weight.squeeze(1), self.conv1d.bias)  # fmt: skip
                xs, z = xz.chunk(2, dim=-1)
                if FUSED_STEP and not torch.compiler.is_compiling():  # its kernel would redo the conv: not taken
                    record("mamba_decode_step", "unfused", "IN_PROJ_CONV ran the conv step in in_proj's GEMV")
                return self._after_conv(xs, z, state, fused, residual)
            if not torch.compiler.is_compiling():  # a traced step cannot log
                record("decode_linear_conv", "unfused", why)
        xs, z = self._project(x, self.in_proj.weight, fused, self.in_proj.bias, norm).chunk(2, dim=-1)  # (B, Di) each
        if fused and FUSED_STEP:
            weight = self.conv1d.weight.squeeze(1)  # (Di, d_conv)
            why = fused_step_reason(xs, state["conv"], state["ssm"], weight, self.x_proj.weight, self.dt_proj.weight)
            if why is None:  # the conv update, x_proj, dt_proj and the state update in one kernel
                y = mamba_decode_step(
                    xs, state["conv"], state["ssm"], weight, self.conv1d.bias, self.x_proj.weight,
                    self.dt_proj.weight, self._step_A(fused), D=self.D, z=z, dt_bias=self.dt_proj.bias,
                )  # fmt: skip
                return self._project(y, self.o_proj.weight, fused, self.o_proj.bias, residual=residual)
            if not torch.compiler.is_compiling():  # a traced step cannot log
                record("mamba_decode_step", "unfused", None if why is NO_TRITON_DEVICE else why)
        xs = causal_conv1d_update(xs, state["conv"], self.conv1d.weight.squeeze(1), self.conv1d.bias, "silu")
        return self._after_conv(xs, z, state, fused, residual)

    @staticmethod
    def _project(t, weight, fused: bool, bias=None, norm=None, residual=None) -> torch.Tensor:
        """A decode step's projection: ``decode_project`` (the decode GEMV and its epilogues where it runs) on the
        fused path, else the norm, ``F.linear`` and the residual add."""
        if fused:
            return decode_project(t, weight, bias, norm, residual)
        return with_residual(F.linear(norm(t) if norm is not None else t, weight, bias), residual)

    def _in_proj_conv_reason(self, x: torch.Tensor, state: LayerState, norm: nn.Module | None) -> str | None:
        """Why this decode step's in_proj and conv update cannot run as one GEMV (``IN_PROJ_CONV``), None when they
        can: the GEMV must run for its rows, in one dtype, behind an ``RMSNorm`` (the kernel repeats its roundings)
        or none."""
        w, conv, rows = self.in_proj.weight, state["conv"], x.shape[0]
        if x.dim() != 2:
            return f"x is {tuple(x.shape)}: one token a row, (batch, d_model), is what the kernel takes"
        if not fused_mod.gemv_for(rows, x.device) or not 1 <= rows <= fused_mod.MAX_M:
            return f"the decode GEMV does not run for {rows} rows on {x.device} (DECODE_LINEAR, AUTO_MAX_ROWS)"
        if not x.dtype == w.dtype == conv.dtype or (
            self.in_proj.bias is not None and self.in_proj.bias.dtype != x.dtype
        ):
            return f"x {x.dtype}, in_proj {w.dtype}, the conv state {conv.dtype}: one dtype is needed"
        if norm is not None and not isinstance(norm, RMSNorm):
            return f"the block's norm is {type(norm).__name__}, not the RMSNorm the kernel repeats"
        return None

    def _after_conv(self, xs, z, state: LayerState, fused: bool, residual: torch.Tensor | None) -> torch.Tensor:
        """The decode step after the conv: x_proj / dt_proj (or their folded copy), the state update, o_proj."""
        R, N = self.dt_rank, self.d_state
        project = self._project

        if fused and self.fused.xdt is not None:  # x_proj and dt_proj folded (FOLD_DT): one projection
            dt, Bm, Cm = project(xs, self.fused.xdt, fused).split([self.d_inner, N, N], dim=-1)
        else:
            dt, Bm, Cm = project(xs, self.x_proj.weight, fused).split([R, N, N], dim=-1)
            dt = project(dt, self.dt_proj.weight, fused)  # (B, Di); its bias goes in the state update (dt_bias)
        y = selective_state_update(
            state["ssm"],
            xs,
            dt,
            self._step_A(fused),
            Bm,
            Cm,
            D=self.D,
            z=z,
            dt_bias=self.dt_proj.bias,
            dt_softplus=True,
        )
        # called without gradients only, so the buffers carry no autograd history
        return project(y, self.o_proj.weight, fused, self.o_proj.bias, residual=residual)


class DecodeA:
    """A Mamba layer's decode copies, made by ``refresh()`` outside the steps (in place when they change, as
    ``layers/fused.py``'s copies: a captured graph reads their addresses; ``ArchZooLM.refresh_fused`` calls it):
    ``A`` = -exp(A_log), and with ``FOLD_DT`` (within ``FOLD_DT_MAX_EXTRA_BYTES``) ``xdt``, x_proj and dt_proj as
    one (d_inner + 2 d_state, d_inner) weight giving [dt before its bias | B | C]. Read only by steps whose cache
    has ``fused_weights`` set."""

    def __init__(self, layer: Mamba):
        self.layer = [layer]  # a list: not registered as a submodule, no reference cycle in the module tree
        self.A: torch.Tensor | None = None
        self.xdt: torch.Tensor | None = None
        self._signature: tuple | None = None

    def folds(self) -> bool:
        """Whether this layer's decode steps read x_proj and dt_proj folded (FOLD_DT); a layer too large for it says
        once why it keeps the two."""
        if not FOLD_DT:
            return False
        m = self.layer[0]
        extra = fold_dt_extra_bytes(m.d_inner, m.d_state, m.dt_rank, m.x_proj.weight.element_size())
        if extra > FOLD_DT_MAX_EXTRA_BYTES:
            cap = FOLD_DT_MAX_EXTRA_BYTES >> 20
            more = f"{extra / 2**20:.1f} MiB more a layer (> FOLD_DT_MAX_EXTRA_BYTES = {cap} MiB)"
            once("mamba_fold_dt", f"Mamba decode keeps x_proj and dt_proj unfolded: the folded copy would read {more}")
            return False
        return True

    @torch.no_grad()
    def refresh(self) -> bool:
        m = self.layer[0]
        fold = self.folds()
        src = [m.A_log, m.x_proj.weight, m.dt_proj.weight] if fold else [m.A_log]
        sig = (fold, signature(src))
        if sig == self._signature:
            return False
        self.A = keep_address(self.A, m._A())
        if fold:
            wx, wdt = m.x_proj.weight, m.dt_proj.weight
            acc = torch.promote_types(wx.dtype, torch.float32)  # fp32 product, fp64 for an fp64 model
            xdt = torch.cat([wdt.to(acc) @ wx[: m.dt_rank].to(acc), wx[m.dt_rank :].to(acc)])
            self.xdt = keep_address(self.xdt, xdt.to(wx.dtype))
        else:
            self.xdt = None
        self._signature = sig
        return True

    def release(self) -> None:
        """Drop the copies; the next ``refresh`` makes them again."""
        self.A = self.xdt = self._signature = None
