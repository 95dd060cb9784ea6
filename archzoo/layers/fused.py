"""One GEMM where a layer has several projections of the same input, for the decode step.

At batch 1 a decode step is a few hundred small kernels and their launches, not memory traffic:
the teacher's block ran 7 GEMMs (Q, K, V, O, gate, up, down). ``FusedLinears`` holds a
concatenated *copy* of some ``nn.Linear`` weights (Q|K|V, gate|up) so the step runs one GEMM for
them. The parameters stay as they are (checkpoints, converters, the trainer and the HF export see
the usual names), and only the decode step of ``generate`` reads the copy.

Why a copy and not fused parameters: renaming the parameters would change every checkpoint and
converter, and views of one parameter do not survive ``module.to(...)``. The price is the copy's
memory (the teacher: 72M parameters, 144 MB in bf16) while the model decodes; a step reads the copy
instead of the originals, so its traffic does not grow.

The same holds for other values a step can derive from the weights once: S4D's discretised spectrum
(``layers/s4.py:DiscretizedS4``). Each such object sits on its layer as ``fused`` and has a
``refresh()``; ``ArchZooLM.refresh_fused()`` refreshes them all.

Freshness: ``refresh()`` runs outside any compiled or captured region (``generate`` calls
``ArchZooLM.refresh_fused()`` before each call). It compares each source weight's storage, dtype
and version counter (bumped by every in-place update: an optimizer step, ``load_state_dict``) with
what it copied, and recopies into the same tensor when only the values changed, so a captured CUDA
graph keeps reading the right address. Code that runs decode steps itself opts in per cache
(``cache.fused_weights = True``) and calls ``refresh_fused()`` after changing weights.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..kernels import decode_linear
from ..kernels._dispatch import record
from ..kernels.decode_linear import MAX_M, rope_pair_order, swiglu_pairs  # not .triton: that fixes Triton's mode

# How a decode step's projections run (the fused Q|K|V and gate|up copies, O, down): "cublas" is F.linear;
# "kernel" is ``archzoo.kernels.decode_linear`` (a Triton GEMV for <= 64 rows, its epilogues fused) where it fits;
# "auto" (the default since 2026-12-05) the GEMV for steps of at most AUTO_MAX_ROWS rows on the devices of
# AUTO_DEVICES, F.linear otherwise (``gemv_for``).
# Measured on an H100 in one process each (docs/decode.md, "Decode kernels measured"): the teacher's step with the
# GEMV and programmatic dependent launch ran 1,614 tokens/s at batch 1 against cuBLAS's 956 (1.69x), 4,304
# against 4,013 at batch 4 (1.07x), 7,710 against 7,876 at batch 8 (0.98x) and 14,818 against 15,056 at 16; at
# batch 64 the GEMV's tl.dot path lost (31,491 against 53,017 at 128-token prompts). Hence 4, until the GEMV's
# L2 prefetch (decode_linear.triton, CUDA_CONFIG["L2_PREFETCH"]): on an H200 (2026-12-06, one process,
# docs/results/decode/decode_h200_l2ab.md) the GEMV with PDL and the prefetch ran the teacher shape at 8,690 / 16,314
# tokens/s at batch 8 / 16 against cuBLAS's 8,281 / 16,058 (MQA 8,959 / 17,237 against 8,348 / 15,664), and lost at
# 64 (decode_h200_m16.md: 33,425 against 48,071). Hence 16.
DECODE_LINEAR = "auto"
AUTO_MAX_ROWS = 16
# Where "auto" takes the GEMV: CUDA, where it was measured. Not the CPU: there the kernel is its fp32 reference, or
# Triton's interpreter (a test vehicle, far slower than F.linear). Tests add "cpu" to check "auto" itself.
AUTO_DEVICES = ("cuda",)
# Under "auto", an attention layer's Q|K|V with RoPE and the K/V cache write (``decode_qkv_rope``, one launch
# for what cuBLAS's step does in four or five) up to QKV_MAX_ROWS rows, even where its other projections take
# F.linear (more than AUTO_MAX_ROWS rows). At 16 rows the whole GEMV step tied cuBLAS's on an H100 (14,818
# against 15,056 tokens/s): fewer launches, slower products. Taking only the Q|K|V launch, whose fusion saves the
# most kernels, is the experiment ``archzoo bench decode --decode-linear auto-qkv`` (QKV_MAX_ROWS 64) runs;
# None (the default) keeps it with the other projections (AUTO_MAX_ROWS) until it has been timed.
QKV_MAX_ROWS: int | None = None
# Where an attention layer's Q|K|V is a plain projection of the fused copy (F.linear: cuBLAS above AUTO_MAX_ROWS
# rows), RoPE and the K/V cache write as one kernel on its output (``decode_rope_write``) from this many rows on, up to
# any batch; None leaves them to the compiled ops (two kernels a layer: 2.2 + 1.8 us at batch 64 on an H100,
# docs/results/decode/profile_h100_stepprof_b1_16_64.log). On since the twenty-first session: the teacher's replayed
# step 1.241 -> 1.073 ms at batch 32 and 1.283 -> 1.195 ms at batch 64, MQA's 1.052 -> 1.018 / 1.063 -> 1.084 (H100,
# tools/decode_profile.py --rope-write on,off, docs/results/decode/ropewrite_h100_2026-12-07.log).
ROPE_WRITE_MIN_ROWS: int | None = AUTO_MAX_ROWS + 1


def gemv_for(rows: int, device: torch.device | None = None) -> bool:
    """Whether a decode step of ``rows`` rows (batch x tokens) on ``device`` runs its projections through the decode
    GEMV and its epilogues: ``DECODE_LINEAR`` "kernel"; or "auto" with at most ``AUTO_MAX_ROWS`` rows on a device
    of ``AUTO_DEVICES`` (CUDA). Every site that fuses a norm or a residual into a projection asks this, so a step is
    all GEMV or all cuBLAS."""
    if DECODE_LINEAR == "kernel":
        return True
    if DECODE_LINEAR != "auto" or rows > AUTO_MAX_ROWS:
        return False
    return device is None or device.type in AUTO_DEVICES


def rope_write_for(rows: int, device: torch.device | None = None) -> bool:
    """Whether a decode step of ``rows`` rows whose Q|K|V is not ``decode_qkv_rope``'s runs RoPE and the cache write
    through ``decode_rope_write``: ``ROPE_WRITE_MIN_ROWS`` set and reached, on a device of ``AUTO_DEVICES``."""
    if ROPE_WRITE_MIN_ROWS is None or rows < ROPE_WRITE_MIN_ROWS:
        return False
    return device is None or device.type in AUTO_DEVICES


def qkv_kernel_for(rows: int, device: torch.device | None = None) -> bool:
    """Whether a decode step of ``rows`` rows runs an attention layer's Q|K|V through ``decode_qkv_rope``: where
    ``gemv_for`` says so, or under "auto" within ``QKV_MAX_ROWS`` (when set) on a device of ``AUTO_DEVICES``."""
    if gemv_for(rows, device):
        return True
    if DECODE_LINEAR != "auto" or QKV_MAX_ROWS is None or rows > QKV_MAX_ROWS:
        return False
    return device is None or device.type in AUTO_DEVICES


def decode_project(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    norm: nn.Module | None = None,
    residual: torch.Tensor | None = None,
    swiglu: bool = False,
) -> torch.Tensor:
    """``norm(x)`` (or x) (..., K) @ weight (N, K).T (+ bias) for a decode step: the norm and ``F.linear``, or
    ``decode_linear`` with the RMSNorm fused in where ``gemv_for`` says so and the shapes fit (a bias in its
    epilogue, not with ``swiglu``; one dtype,
    at most 64 rows; it runs its Triton kernel on CUDA and under Triton's interpreter, its reference form
    elsewhere); a step that asked for the GEMV and does not fit records why (``last_backend("decode_linear")``).
    ``norm``: an ``RMSNorm`` (its ``weight`` and ``eps``); the kernel repeats its roundings.

    ``residual`` (..., N): returns ``residual + ...`` (in the GEMV's epilogue: one rounding). ``swiglu``: weight's
    rows are (gate, up) pairs (``FusedLinears`` with ``pairs``); returns silu(g) * u (..., N // 2)."""
    rows = x.numel() // x.shape[-1]
    if gemv_for(rows, x.device):
        reason = None
        if bias is not None and swiglu:
            reason = "a SwiGLU pair with a bias"
        elif bias is not None and bias.dtype != x.dtype:
            reason = f"the bias is {bias.dtype} and the step computes in {x.dtype}"
        elif x.dtype != weight.dtype:
            reason = f"the step computes in {x.dtype} and the weights are {weight.dtype}"
        elif not 1 <= rows <= MAX_M:
            reason = f"{rows} rows (batch x tokens) > {MAX_M}: a GEMM, not a GEMV"
        elif residual is not None and residual.dtype != x.dtype:
            reason = f"the residual is {residual.dtype} and the step computes in {x.dtype}"
        if reason is None:
            nw, eps = (norm.weight, norm.eps) if norm is not None else (None, 1e-5)
            res = residual.reshape(rows, residual.shape[-1]) if residual is not None else None
            y = decode_linear(x.reshape(rows, x.shape[-1]), weight, nw, eps, res, swiglu, bias)
            return y.view(*x.shape[:-1], y.shape[-1])
        if not torch.compiler.is_compiling():  # a traced step cannot log; bench decode reports linear_backend
            record("decode_linear", "cublas", f"DECODE_LINEAR={DECODE_LINEAR!r} but F.linear runs: {reason}")
    elif DECODE_LINEAR == "auto" and rows > AUTO_MAX_ROWS and not torch.compiler.is_compiling():
        record("decode_linear", "cublas", f"DECODE_LINEAR='auto': {rows} rows > AUTO_MAX_ROWS={AUTO_MAX_ROWS}")
    y = F.linear(norm(x) if norm is not None else x, weight, bias)
    if swiglu:
        y = swiglu_pairs(y)
    return y if residual is None else residual + y


def swiglu_step(fused: FusedLinears, down_weight: torch.Tensor, x: torch.Tensor, norm: nn.Module | None):
    """``x + down(silu(gate(norm(x))) * up(norm(x)))`` of a decode step on a ``pairs`` gate|up copy: two GEMVs,
    the norm fused into the first, SiLU x up into its epilogue, the residual add into the second's; the block's
    decode path calls it where ``DECODE_LINEAR`` is "kernel" (``Block.forward``)."""
    return decode_project(decode_project(x, fused.weight, None, norm, swiglu=True), down_weight, residual=x)


def keep_address(old: torch.Tensor | None, new: torch.Tensor) -> torch.Tensor:
    """A derived tensor refreshed: ``new``'s values written at ``old``'s address where ``old`` has its shape, dtype
    and device (a captured graph reads that address), else ``new`` itself, contiguous."""
    if old is not None and (old.shape, old.dtype, old.device) == (new.shape, new.dtype, new.device):
        return old.copy_(new)
    return new.contiguous()


def signature(tensors) -> tuple:
    """Where each tensor lives and how often it was changed in place: equal signatures, equal contents."""
    return tuple((t.data_ptr(), t.dtype, t.device, t._version) for t in tensors)


class FusedLinears:
    """A refreshable concatenation of ``linears``' weights (and biases) along the output dim.

    Two linears of one width without biases (a SwiGLU's gate and up) are stored with their rows interleaved
    ([g0, u0, g1, u1, ...], ``pairs``), so the decode GEMV's SwiGLU epilogue finds each pair in one program
    (``swiglu_step``, where ``DECODE_LINEAR`` is "kernel"); ``__call__`` returns the two outputs as strided views
    of one product for cuBLAS. An attention layer's Q|K|V (``rope=(n_heads, n_kv_heads, head_dim)``) is stored
    with each Q and K head's RoPE pairs on adjacent rows (``rope_pair_order``), so ``decode_qkv_rope`` rotates
    them and writes K / V to the cache in the GEMV's epilogue; ``__call__`` returns Q and K in head order.
    One layout whatever the switch says: flipping ``DECODE_LINEAR`` then keeps the
    copy's address, so a pooled captured step of the other setting is found again (its pool key holds the switch
    and the address).
    """

    def __init__(self, *linears: nn.Linear, rope: tuple[int, int, int] | None = None):
        if len({lin.bias is None for lin in linears}) != 1 or len({lin.in_features for lin in linears}) != 1:
            raise ValueError("FusedLinears: the linears need one input width, and biases on all or none")
        if rope is not None and (len(linears) != 3 or sum(lin.out_features for lin in linears) !=
                                 (rope[0] + 2 * rope[1]) * rope[2] or rope[2] % 2):  # fmt: skip
            raise ValueError(f"FusedLinears: rope=(n_heads, n_kv_heads, head_dim) {rope} does not fit Q, K, V")
        self.rope = rope
        self.linears = linears
        self.sizes = tuple(lin.out_features for lin in linears)
        self.weight: torch.Tensor | None = None
        self.bias: torch.Tensor | None = None
        self._signature: tuple | None = None
        self.pairs = False  # the copy's layout: interleaved (gate, up) rows, or concatenated

    def _want_pairs(self) -> bool:
        lins = self.linears
        return len(lins) == 2 and lins[0].bias is None and lins[0].out_features == lins[1].out_features

    def _sources(self) -> list[torch.Tensor]:
        ws = [lin.weight for lin in self.linears]
        return ws + ([lin.bias for lin in self.linears] if self.linears[0].bias is not None else [])

    @torch.no_grad()
    def refresh(self) -> bool:
        """Recopy the weights if any changed since the last copy; True when it copied."""
        src = self._sources()
        sig = signature(src)
        pairs = self._want_pairs()
        if sig == self._signature and pairs == self.pairs:
            return False
        ws = [lin.weight for lin in self.linears]
        remake = self.weight is None or self.pairs != pairs or (self.weight.dtype, self.weight.device) != (
            ws[0].dtype, ws[0].device)  # fmt: skip
        if pairs:
            F_, K = ws[0].shape
            if remake:
                self.weight = torch.empty((2 * F_, K), dtype=ws[0].dtype, device=ws[0].device)
            w = self.weight.view(F_, 2, K)  # in place otherwise: a captured graph reads this address
            w[:, 0].copy_(ws[0])
            w[:, 1].copy_(ws[1])
            self.bias, self.pairs = None, True
        elif self.rope is not None:  # Q|K|V rows in rope_pair_order (decode_qkv_rope), in place when it can
            order = rope_pair_order(*self.rope).to(ws[0].device)
            bs = [lin.bias for lin in self.linears] if self.linears[0].bias is not None else None
            if remake:
                self.weight = torch.cat(ws)[order]
                self.bias = torch.cat(bs)[order] if bs is not None else None
            else:
                torch.index_select(torch.cat(ws), 0, order, out=self.weight)
                if bs is not None:
                    torch.index_select(torch.cat(bs), 0, order, out=self.bias)
            self.pairs = False
        elif remake:
            self.weight = torch.cat(ws)
            self.bias = torch.cat([lin.bias for lin in self.linears]) if self.linears[0].bias is not None else None
            self.pairs = False
        else:  # in place: a captured graph reads this address
            torch.cat(ws, out=self.weight)
            if self.bias is not None:
                torch.cat([lin.bias for lin in self.linears], out=self.bias)
        self._signature = signature(src)
        return True

    def release(self) -> None:
        """Drop the copy (its memory); the next ``refresh`` makes it again."""
        self.weight = self.bias = self._signature = None
        self.pairs = False

    def __call__(self, x: torch.Tensor, norm: nn.Module | None = None) -> tuple[torch.Tensor, ...]:
        """x (..., d_in) -> one output per source linear, as views of one GEMM's result; ``norm`` (an RMSNorm)
        is applied to x first, fused into the GEMV where ``decode_project`` runs it."""
        if self.weight is None:
            raise RuntimeError("FusedLinears: refresh() has not run (ArchZooLM.refresh_fused())")
        y = decode_project(x, self.weight, self.bias, norm)
        if self.rope is not None:  # the Q and K rows back in head order (a copy eagerly; compiled, fused away)
            H, Hkv, D = self.rope
            n = (H + Hkv) * D
            qk = y[..., :n].unflatten(-1, (H + Hkv, D // 2, 2)).transpose(-1, -2).flatten(-3)
            return qk[..., : H * D], qk[..., H * D :], y[..., n:]
        return y.unflatten(-1, (-1, 2)).unbind(-1) if self.pairs else y.split(self.sizes, dim=-1)
