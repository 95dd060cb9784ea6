"""S4D: a diagonal state-space layer (Gu, Gupta, Goel, Ré 2022, "On the parameterization and
initialization of diagonal state space models", arXiv:2206.11893).

Each of the ``d_model`` channels is an independent linear time-invariant SSM

    h'(t) = A h(t) + B u(t),    y(t) = C h(t) + D u(t)

with a diagonal ``A``, discretised by zero-order hold with a learnt step ``dt`` per channel:
``dA = exp(dt A)``, ``dB = (dA - 1) / A * B``. Initialisations of ``A`` (``S4Config.init``):

- ``lin``  (S4D-Lin):  ``A_n = -1/2 + i pi n``;
- ``inv``  (S4D-Inv):  ``A_n = -1/2 + i N/pi (N/(2n+1) - 1)``;
- ``real`` (S4D-Real): ``A_n = -(n+1)``.

The complex inits keep ``d_state / 2`` modes and take ``2 Re(.)`` of the output: the other half
of the state is their complex conjugates (S4D section 3). ``real`` keeps ``d_state`` real modes.
Either way a state of ``d_state`` real numbers per channel. ``B`` starts at 1, ``C`` at a
standard (complex) normal, ``D`` at a standard normal, ``log dt`` uniform in
``[log dt_min, log dt_max]`` (the paper's defaults).

Block (kept simple): ``o_proj(GELU(SSM(x)))``, the S4D paper's layer with a linear output map in
place of its GLU; the model's pre-norm and residual wrap it.

Three paths, all exact:
- training / prefill: the kernel ``K_l = 2 Re(sum_n C_n dB_n dA_n^l)`` through a Vandermonde
  product, and an FFT convolution of length ``2T``; continuing from a state ``h`` adds
  ``2 Re(C dA^{t+1} h)`` to output ``t`` and writes the closed-form final state
  ``dA^T h + dB sum_j dA^{T-1-j} u_j`` (also a Vandermonde product);
- decode (one token): the recurrence ``h = dA h + dB u``.

Decode state: ``ssm`` of shape ``(B, d_model, d_state)`` real, in fp32 (or the cache dtype when it
is wider): a complex mode is stored as its (re, im) pair. The recurrence accumulates over the
whole sequence, so it is not rounded to a 16-bit cache dtype. The buffer holds values only:
gradients flow within a call (prefill and decode alike) but not from one call into the next.

``A``, ``B``, ``log_dt`` and ``D`` carry ``_no_weight_decay = True`` (as in mamba_ssm and the S4
recipe, which trains them without weight decay); ``no_weight_decay_names`` lists them too.

The S4D scan could also run through ``selective_scan_fn`` with an input-independent ``dt`` (real
init only); we use the convolution, which is exact and parallel.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from ..kernels import s4d_decode_step
from .base import LayerConfig, LayerState, TakesNormAndResidual, dtype_bytes, field_error, with_residual
from .fused import decode_project, keep_address, signature

# A decode step on the fused path (the precomputed spectrum, ``DiscretizedS4``) runs the block's norm, the diagonal
# update, D and GELU as one kernel (``archzoo.kernels.s4d_decode_step``: Triton on CUDA, its reference, these same
# ops, elsewhere) instead of the ops below, which torch.compile made three kernels of (8.6 us an S4 layer at batch 1
# on an H100, for 295 KB of state: docs/decode.md, "Twentieth session"). On since the twenty-first session, once its
# (re, im) tiles were read as contiguous rows: the S4D student's replayed step at batch 1 / 4 / 16 / 64 took 0.397 /
# 0.677 / 0.721 / 0.999 ms against 0.498 / 0.759 / 0.994 / 1.270 compiled (H100, tools/decode_profile.py --s4-step
# kernel,compiled; docs/results/decode/s4step_h100_2026-12-07b.log).
FUSED_STEP = True


class S4Config(LayerConfig):
    """S4D: a diagonal state-space layer with input-independent step sizes."""

    type: Literal["s4"] = "s4"
    d_state: int = Field(default=64, gt=0)
    init: Literal["lin", "inv", "real"] = "lin"
    dt_min: float = Field(default=1e-3, gt=0)
    dt_max: float = Field(default=1e-1, gt=0)

    @model_validator(mode="after")
    def _check(self) -> S4Config:
        if self.dt_min > self.dt_max:
            raise field_error("dt_min", f"dt_min={self.dt_min} must not exceed dt_max={self.dt_max}")
        return self


def state_dtype(dtype: torch.dtype) -> torch.dtype:
    """The SSM state's dtype for a cache of ``dtype``: fp32, or ``dtype`` where it is wider."""
    return torch.promote_types(dtype, torch.float32)


class S4D(TakesNormAndResidual, nn.Module):
    no_weight_decay_names = ("A_log_re", "A_im", "B", "log_dt", "D")
    # The spectrum stays in fp32 when the model is cast to a 16-bit dtype: bf16 keeps 3 digits, and
    # A_im (up to pi * d_state / 2) then drifts by whole radians over a sequence (measured: 1.3e-1
    # relative error of a bf16 model's logits on an H100). The layer computes in fp32 anyway.
    fp32_params = ("log_dt", "A_log_re", "A_im", "B", "C", "D")

    def _apply(self, fn, recurse=True):
        keep = {n: p.data for n in self.fp32_params if (p := getattr(self, n, None)) is not None}
        super()._apply(fn, recurse)
        for name, old in keep.items():
            p = getattr(self, name)
            if p.dtype in (torch.float16, torch.bfloat16):
                p.data = old.to(device=p.device, dtype=torch.float32)
        return self

    def __init__(self, cfg: S4Config, d_model: int, layer_idx: int = 0, kv_source: int | None = None):
        super().__init__()
        self.cfg = cfg
        self.layer_idx = layer_idx
        self.d_model = d_model
        self.is_complex = cfg.init != "real"
        if self.is_complex and cfg.d_state % 2:
            raise ValueError(
                f"mixer.d_state={cfg.d_state} must be even for init '{cfg.init}' "
                "(d_state / 2 complex modes and their conjugates); use an even d_state or init 'real'"
            )
        H, M = d_model, cfg.d_state // 2 if self.is_complex else cfg.d_state
        self.n_modes = M
        c = (2,) if self.is_complex else ()  # a complex number as its (re, im) pair
        self.log_dt = nn.Parameter(torch.empty(H))
        self.A_log_re = nn.Parameter(torch.empty(H, M))  # Re A = -exp(A_log_re)
        self.A_im = nn.Parameter(torch.empty(H, M)) if self.is_complex else None
        self.B = nn.Parameter(torch.empty(H, M, *c))
        self.C = nn.Parameter(torch.empty(H, M, *c))
        self.D = nn.Parameter(torch.empty(H))
        self.o_proj = nn.Linear(H, H, bias=False)
        self.fused = DiscretizedS4(self)  # the decode step's dA, dB, C, made once (layers/fused.py)
        for name in self.no_weight_decay_names:
            p = getattr(self, name)
            if p is not None:
                p._no_weight_decay = True
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """The S4D initialisation (module docstring); called again by the model after its generic init."""
        H, M, N = self.d_model, self.n_modes, self.cfg.d_state
        dev = self.log_dt.device
        lo, hi = math.log(self.cfg.dt_min), math.log(self.cfg.dt_max)
        self.log_dt.copy_(torch.rand(H, device=dev) * (hi - lo) + lo)
        n = torch.arange(M, dtype=torch.float64, device=dev).expand(H, M)
        if self.cfg.init == "real":
            self.A_log_re.copy_(torch.log(n + 1))
        else:
            self.A_log_re.fill_(math.log(0.5))
            imag = math.pi * n if self.cfg.init == "lin" else N / math.pi * (N / (2 * n + 1) - 1)
            self.A_im.copy_(imag)
        if self.is_complex:
            self.B.zero_()[..., 0] = 1.0
            self.C.normal_(0.0, math.sqrt(0.5))  # a standard complex normal
        else:
            self.B.fill_(1.0)
            self.C.normal_()
        self.D.normal_()

    # ------------------------------------------------------------------ state

    @staticmethod
    def bounded_state(cfg: S4Config) -> bool:
        return True

    @staticmethod
    def state_bytes(cfg: S4Config, d_model: int, batch_size: int, seq_len: int, dtype: torch.dtype) -> int:
        return batch_size * d_model * cfg.d_state * dtype_bytes(state_dtype(dtype))

    def new_state(self, batch_size: int, max_seq_len: int, dtype: torch.dtype, device) -> LayerState:
        shape = (batch_size, self.d_model, self.cfg.d_state)
        return LayerState(ssm=torch.zeros(shape, dtype=state_dtype(dtype), device=device))

    def _state_view(self, state: LayerState) -> torch.Tensor:
        """The ``ssm`` buffer as (B, H, M) modes, complex for the complex inits (a view: writes go through)."""
        s = state["ssm"]
        if not self.is_complex:
            return s
        return torch.view_as_complex(s.view(*s.shape[:2], self.n_modes, 2))

    # ----------------------------------------------------------- parameters

    def _complex(self, p: torch.Tensor) -> torch.Tensor:
        return torch.view_as_complex(p) if self.is_complex else p

    def discretize(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """ZOH: (dtA, dB, C), each (H, M), complex for the complex inits, computed in ``dtype`` (real)."""
        A = -torch.exp(self.A_log_re.to(dtype))
        if self.is_complex:
            A = torch.complex(A, self.A_im.to(dtype))
        dtA = torch.exp(self.log_dt.to(dtype))[:, None] * A  # (H, M)
        B = self._complex(self.B.to(dtype))
        dB = torch.expm1(dtA) / A * B
        return dtA, dB, self._complex(self.C.to(dtype))

    def _out(self, t: torch.Tensor) -> torch.Tensor:
        """Sum over modes, adding the conjugate half: 2 Re(.) for complex modes."""
        return 2 * t.real if self.is_complex else t

    def kernel(self, length: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The convolution kernel K (H, length): ``K_l = 2 Re(sum_n C_n dB_n dA_n^l)``."""
        dtA, dB, C = self.discretize(dtype)
        steps = torch.arange(length, device=dtA.device, dtype=dtype)
        vander = torch.exp(dtA[..., None] * steps)  # (H, M, L)
        return self._out(torch.einsum("hm,hml->hl", C * dB, vander))

    # ---------------------------------------------------------------- forward

    def forward(
        self,
        x: torch.Tensor,
        state: LayerState | None,
        ctx,
        norm: nn.Module | None = None,
        residual: torch.Tensor | None = None,
    ) -> torch.Tensor:
        B, T, H = x.shape
        if H != self.d_model:
            raise ValueError(f"x has {H} channels, expected d_model={self.d_model}")
        if FUSED_STEP and state is not None and T == 1 and ctx.fused:  # pos is None: no zeroing to do
            d = self.fused
            nw, eps = (norm.weight, norm.eps) if norm is not None else (None, 1e-5)
            y = s4d_decode_step(x[:, 0], nw, eps, state["ssm"], d.dA, d.dB, d.C, self.D)[:, None]
            return decode_project(y, self.o_proj.weight, self.o_proj.bias, residual=residual)
        if norm is not None:
            x = norm(x)
        cdt = torch.promote_types(x.dtype, self.log_dt.dtype)
        cdt = torch.promote_types(cdt, torch.float32)
        u = x.transpose(1, 2).to(cdt)  # (B, H, T)
        if state is not None and ctx.pos == 0:
            state.zero_()  # a sequence starts at position 0 whatever the buffers held
        if state is not None and T == 1 and ctx.fused:
            y = self._step_real(u[..., 0], state["ssm"], cdt)[..., None]  # (B, H, 1)
        elif state is not None and T == 1:
            y = self._step(u[..., 0], self._state_view(state), cdt)[..., None]  # (B, H, 1)
        else:
            y = self._conv(u, cdt)
            if state is not None:
                y = y + self._continue(u, self._state_view(state), cdt)
        y = y + self.D.to(cdt)[:, None] * u
        y = F.gelu(y).transpose(1, 2).to(x.dtype)  # (B, T, H)
        if state is not None and T == 1 and ctx.fused:  # the decode GEMV where it runs, the residual in its epilogue
            return decode_project(y, self.o_proj.weight, self.o_proj.bias, residual=residual)
        out = self.o_proj(y)
        return with_residual(out, residual)

    def _conv(self, u: torch.Tensor, cdt: torch.dtype) -> torch.Tensor:
        """Causal convolution of u (B, H, T) with the kernel, by FFT of length 2T (no wrap-around)."""
        T = u.shape[-1]
        K = self.kernel(T, cdt)  # (H, T)
        n = 2 * T
        return torch.fft.irfft(torch.fft.rfft(u, n=n) * torch.fft.rfft(K, n=n), n=n)[..., :T]

    def _continue(self, u: torch.Tensor, h: torch.Tensor, cdt: torch.dtype) -> torch.Tensor:
        """The initial state's part of the output, and the final state written into ``h`` (B, H, M) in place.

        Output t gains ``2 Re(sum_n C_n dA_n^{t+1} h_n)``; the final state is
        ``dA^T h + dB sum_j dA^{T-1-j} u_j``.
        """
        T = u.shape[-1]
        dtA, dB, C = self.discretize(cdt)
        h0 = h.to(dtA.dtype, copy=True)  # (B, H, M); a copy, as h is overwritten below
        steps = torch.arange(1, T + 1, device=u.device, dtype=cdt)
        vander = torch.exp(dtA[..., None] * steps)  # (H, M, T): dA^1 .. dA^T
        y = self._out(torch.einsum("bhm,hml->bhl", C * h0, vander))
        back = torch.exp(dtA[..., None] * (T - steps))  # (H, M, T): dA^{T-1-j} for input j = 0 .. T-1
        hT = vander[..., -1] * h0 + dB * torch.einsum("bhl,hml->bhm", u.to(back.dtype), back)
        h.copy_(hT.detach().to(h.dtype))
        return y

    def _step_real(self, u: torch.Tensor, s: torch.Tensor, cdt: torch.dtype) -> torch.Tensor:
        """``_step`` from the precomputed dA = exp(dtA), dB, C (``DiscretizedS4``), in real arithmetic: complex
        modes as (re, im) pairs, so the compiler fuses the step into a couple of kernels (it does not
        generate code for complex tensors: each complex op was a kernel of its own, about 20 per layer)."""
        d = self.fused
        dA, dB, C = d.dA.to(cdt), d.dB.to(cdt), d.C.to(cdt)
        u = u[..., None]  # (B, H, 1)
        if not self.is_complex:
            h = dA * s.to(cdt) + dB * u
            s.copy_(h.to(s.dtype))
            return (C * h).sum(-1)
        h = s.view(*s.shape[:2], self.n_modes, 2).to(cdt)  # (B, H, M, 2)
        hr, hi = h[..., 0], h[..., 1]
        nr = dA[..., 0] * hr - dA[..., 1] * hi + dB[..., 0] * u
        ni = dA[..., 0] * hi + dA[..., 1] * hr + dB[..., 1] * u
        s.copy_(torch.stack([nr, ni], dim=-1).view(s.shape).to(s.dtype))
        return 2 * (C[..., 0] * nr - C[..., 1] * ni).sum(-1)

    def _step(self, u: torch.Tensor, h: torch.Tensor, cdt: torch.dtype) -> torch.Tensor:
        """One token: u (B, H); h (B, H, M) updated in place; returns the SSM output (B, H) without D."""
        dtA, dB, C = self.discretize(cdt)
        h_new = torch.exp(dtA) * h.to(dtA.dtype, copy=True) + dB * u[..., None]
        h.copy_(h_new.detach().to(h.dtype))
        return self._out((C * h_new).sum(-1))


class DiscretizedS4:
    """The decode step's discretised spectrum of one ``S4D`` layer, made by ``refresh()`` outside the step.

    ``S4D.discretize`` derives dA, dB from the parameters with complex exponentials; a decode step did
    that every token. This holds dA = exp(dt A), dB and C (complex ones as (..., 2) real pairs) in the
    parameters' dtype (fp32 or wider), recomputed in place when a parameter changes (the freshness rule
    of ``layers/fused.py``; ``ArchZooLM.refresh_fused`` calls it).
    """

    def __init__(self, layer: S4D):
        self.layer = [layer]  # a list: not registered as a submodule, no reference cycle in the module tree
        self.dA = self.dB = self.C = None
        self._signature: tuple | None = None

    def _sources(self) -> list[torch.Tensor]:
        m = self.layer[0]
        return [p for p in (m.log_dt, m.A_log_re, m.A_im, m.B, m.C) if p is not None]

    @torch.no_grad()
    def refresh(self) -> bool:
        sig = signature(self._sources())
        if sig == self._signature:
            return False
        m = self.layer[0]
        dtype = torch.promote_types(m.log_dt.dtype, torch.float32)
        dtA, dB, C = m.discretize(dtype)
        dA = torch.exp(dtA)
        new = [torch.view_as_real(t) if m.is_complex else t for t in (dA, dB, C)]
        # in place where they fit: a captured graph reads these addresses
        self.dA, self.dB, self.C = (keep_address(o, t) for o, t in zip((self.dA, self.dB, self.C), new, strict=True))
        self._signature = sig
        return True

    def release(self) -> None:
        """Drop the precomputed tensors; the next ``refresh`` makes them again."""
        self.dA = self.dB = self.C = self._signature = None
