"""Decode GEMV: a projection of a few rows, with the RMSNorm before it fused in (issue 18, item 3).

``decode_linear(x, weight, norm_weight=None, eps=1e-5)`` = ``F.linear(RMSNorm(x), weight)`` for the decode step's
M = batch rows. Dispatch: the Triton kernel (``triton.py``: every weight element read once, split-K when the rows
of weight alone would not fill the GPU) for CUDA tensors, and for CPU tensors under ``TRITON_INTERPRET=1``; the
naive reference (``naive.py``) otherwise. Inputs the kernel does not take (M > 64, float64) run the unfused
PyTorch form (``torch_decode_linear``: the norm, then ``F.linear``), the reason logged once.
``archzoo.kernels.last_backend("decode_linear")`` says which one ran: 'triton', 'torch' or 'naive'.
"""

from __future__ import annotations

import torch

from .._dispatch import kernel_failed, record, try_kernel, use_triton
from ._checks import MAX_M, check_conv_epilogue, check_decode_linear
from .naive import (
    naive_decode_linear,
    naive_decode_linear_conv,
    naive_decode_qkv_rope,
    naive_decode_rope_write,
    rms_norm,
    rope_pair_order,
    swiglu_pairs,
    torch_decode_linear,
)


def decode_linear(
    x: torch.Tensor, weight: torch.Tensor, norm_weight: torch.Tensor | None = None, eps: float = 1e-5,
    residual: torch.Tensor | None = None, swiglu: bool = False, bias: torch.Tensor | None = None,
) -> torch.Tensor:  # fmt: skip
    """``(RMSNorm(x) * norm_weight if norm_weight is given else x) @ weight.T``, in x's dtype, computed in fp32.

    x (M, K), any strides; weight (N, K), nn.Linear's layout (row-major: the kernel's loads run along K);
    norm_weight (K,) or None; eps the norm's epsilon (``ModelConfig.norm_eps``). Returns (M, N), contiguous, in
    x's dtype. The norm is ``layers/norm.py``'s ``RMSNorm`` with the same roundings: the rms in fp32, x * rstd
    rounded to x's dtype, times norm_weight in their promoted dtype. x and weight share a dtype: float16,
    bfloat16 or float32 (float64 runs the PyTorch form); norm_weight any of these.

    The kernel takes 1 <= M <= 64 (decode batches); larger M is a GEMM, left to cuBLAS (``F.linear``), with
    the reason logged once. No host synchronisation: the call can be captured in a CUDA graph. Inside
    ``torch.compile`` call ``archzoo.kernels.decode_linear`` (a custom op) instead.

    Epilogues (issue 18: the decode step's residual adds and SiLU x up without kernels of their own):

    - ``residual`` (M, N), x's dtype, any strides: returns ``residual + y``, added to the fp32 accumulator before
      the one rounding (the unfused ``x + linear(h)`` rounds twice: the product, then the sum).
    - ``swiglu``: weight's rows are the gate and up rows interleaved ([g0, u0, g1, u1, ...], N = 2F); returns
      (M, F) = silu(g) * u with the unfused path's roundings (g and u rounded to x's dtype, ``F.silu`` of g
      rounded, the product rounded), so it matches ``F.silu(gate) * up`` up to the exp's last fp32 bit.
    Not both at once. Under split-K the reduction kernel applies them.
    - ``bias`` (N,), x's dtype: added to the fp32 accumulator (before the residual), as ``F.linear``'s bias (the
      Mamba layers' in_proj and o_proj have one); not with ``swiglu``.
    """
    M, _, _ = check_decode_linear(x, weight, norm_weight, eps, residual, swiglu, bias)
    op = "decode_linear"
    if use_triton(x, weight, norm_weight):
        dev = x.device.type
        reason = _unsupported(M, x, norm_weight) or kernel_failed(op, dev)
        if reason is None:  # tested in the interpreter; where it does not compile, the PyTorch form runs
            from .triton import _run

            out = try_kernel(op, dev, lambda: _run(x, weight, norm_weight, eps, residual, swiglu, bias=bias))
            if out is not None:
                record(op, "triton")
                return out
            reason = kernel_failed(op, dev)
        record(op, "torch", reason)
        return torch_decode_linear(x, weight, norm_weight, eps, residual, swiglu, bias)
    record(op, "naive")
    return naive_decode_linear(x, weight, norm_weight, eps, residual, swiglu, bias)


def decode_qkv_rope(
    x: torch.Tensor, weight: torch.Tensor, norm_weight: torch.Tensor | None, eps: float, positions: torch.Tensor,
    inv_freq: torch.Tensor, n_heads: int, n_kv_heads: int, head_dim: int, k_cache: torch.Tensor,
    v_cache: torch.Tensor, tokens_per_row: int = 1,
) -> torch.Tensor:  # fmt: skip
    """An attention layer's decode-step projection in one kernel: ``RMSNorm(x) @ Q|K|V``, RoPE on Q and K at each
    row's position, K and V written into the caches; returns q (M, n_heads * head_dim) with RoPE applied.

    x (M, K), one token per batch row, or ``tokens_per_row`` tokens a row (a speculative verify's (B, k+1) forward: x's
    rows are each cache row's tokens in order, M = B x tokens_per_row); weight (N, K), N = (n_heads + 2 n_kv_heads)
    head_dim, the fused Q|K|V rows in ``rope_pair_order`` (each Q and K head's RoPE pairs on adjacent rows, so one
    program holds both halves of a pair); positions (M,) integer, the position of each row's token (its slot is
    ``positions % slots``: a global cache or a sliding window's ring); inv_freq (head_dim / 2,) fp32, the RoPE
    frequencies; k_cache and v_cache (M // tokens_per_row, n_kv_heads, slots, head_dim), written in place (with several
    tokens a row, a ring narrower than them would have a token overwrite a slot an earlier one of the row still needs:
    the attention layer passes only global caches then). The roundings are the unfused step's (the projection, then
    ``apply_rope`` in x's dtype), so the step computes what it computed without the fusion, bit for bit where ``tl.cos``
    / ``tl.sin`` round as torch's do. Where the Triton kernel does not run (no Triton, float64, M > 64), the reference
    does it in PyTorch (``naive_decode_qkv_rope``).
    """
    M, _, N = check_decode_linear(x, weight, norm_weight, eps)
    D, T = head_dim, tokens_per_row
    _check_rope(M, N, x.device, positions, inv_freq, n_heads, n_kv_heads, D, k_cache, v_cache, T, "weight has")

    def kernel():
        from .triton import Rope, _run

        rope = Rope(positions, inv_freq, k_cache, v_cache, n_heads * D, n_kv_heads * D, D, T)
        return _run(x, weight, norm_weight, eps, rope=rope)

    args = (positions, inv_freq, n_heads, n_kv_heads, D, k_cache, v_cache, T)
    return _kernel_or_reference("decode_qkv_rope", x, weight, norm_weight, kernel,
                                lambda: naive_decode_qkv_rope(x, weight, norm_weight, eps, *args))  # fmt: skip


def decode_rope_write(
    y: torch.Tensor, positions: torch.Tensor, inv_freq: torch.Tensor, n_heads: int, n_kv_heads: int, head_dim: int,
    k_cache: torch.Tensor, v_cache: torch.Tensor, tokens_per_row: int = 1,
) -> torch.Tensor:  # fmt: skip
    """``decode_qkv_rope``'s RoPE and cache write on a projection made elsewhere: y (M, N) the fused Q|K|V copy's
    output (``F.linear`` of the normed x on the copy's weight: columns in ``rope_pair_order``), any M. Above 16 rows
    the decode step projects with cuBLAS, and torch.compile made RoPE and the cache write two kernels a layer; this
    is one. The same arguments and checks as ``decode_qkv_rope`` (positions, inv_freq, the caches, written in
    place); returns q (M, n_heads * head_dim) with RoPE, in y's dtype. Float64 runs the reference
    (``naive_decode_rope_write``)."""
    if y.dim() != 2 or not y.is_floating_point():
        raise ValueError(f"y must be a floating-point (M, N) tensor, got {tuple(y.shape)} {y.dtype}")
    M, N = y.shape
    D, T = head_dim, tokens_per_row
    _check_rope(M, N, y.device, positions, inv_freq, n_heads, n_kv_heads, D, k_cache, v_cache, T, "y has")
    args = (positions, inv_freq, n_heads, n_kv_heads, D, k_cache, v_cache, T)

    def kernel():
        from .triton import Rope, rope_write

        rope = Rope(positions, inv_freq, k_cache, v_cache, n_heads * D, n_kv_heads * D, D, T)
        return rope_write(y if y.stride(1) == 1 else y.contiguous(), rope)

    f64 = "float64: the kernel computes in fp32" if y.dtype == torch.float64 else None
    return _dispatch("decode_rope_write", (y, k_cache, v_cache), f64, kernel,
                     lambda: naive_decode_rope_write(y, *args))  # fmt: skip


def _check_rope(M, N, device, positions, inv_freq, n_heads, n_kv_heads, D, k_cache, v_cache, T, what) -> None:
    """The RoPE and cache-write arguments of ``decode_qkv_rope`` / ``decode_rope_write``: ValueError naming the bad
    one."""
    if D % 2 or N != (n_heads + 2 * n_kv_heads) * D:
        raise ValueError(f"{what} {N} rows; Q|K|V of {n_heads} + 2 x {n_kv_heads} heads of an even head_dim {D} "
                         f"need {(n_heads + 2 * n_kv_heads) * D}")  # fmt: skip
    if not isinstance(T, int) or T < 1 or M % T:
        raise ValueError(f"tokens_per_row must be a positive int dividing M={M}, got {T!r}")
    want = (M // T, n_kv_heads, k_cache.shape[2] if k_cache.dim() == 4 else -1, D)
    for name, c in (("k_cache", k_cache), ("v_cache", v_cache)):
        if c.dim() != 4 or tuple(c.shape) != want or c.device != device:
            raise ValueError(f"{name} must be (M // tokens_per_row, n_kv_heads, slots, head_dim) = {want} on "
                             f"{device}, got {tuple(c.shape)} on {c.device}")  # fmt: skip
    if tuple(positions.shape) != (M,) or positions.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"positions must be an (M,) = ({M},) integer tensor, got {tuple(positions.shape)} "
                         f"{positions.dtype}")  # fmt: skip
    if tuple(inv_freq.shape) != (D // 2,) or inv_freq.dtype != torch.float32:
        raise ValueError(f"inv_freq must be a ({D // 2},) float32 tensor, got {tuple(inv_freq.shape)} {inv_freq.dtype}")


def decode_linear_conv(
    x: torch.Tensor, weight: torch.Tensor, norm_weight: torch.Tensor | None, eps: float, bias: torch.Tensor | None,
    conv_state: torch.Tensor, conv_weight: torch.Tensor, conv_bias: torch.Tensor | None = None,
) -> torch.Tensor:  # fmt: skip
    """A Mamba layer's decode-step in_proj with its causal conv step in the GEMV's epilogue (issue 18: one launch
    where the step had two): ``decode_linear(x, weight, norm_weight, eps, bias=bias)``, then its first D =
    conv_weight.shape[0] columns (the x half) through ``causal_conv1d_update(..., activation="silu")``; the other
    columns (z) as they are.

    x (M, K), one token a row; conv_state (M, D, W - 1), Mamba's layout, updated in place (the oldest tap dropped,
    this step's x appended, rounded to the state's dtype); conv_weight (D, W), 2 <= W <= 8; conv_bias (D,) or None.
    Returns (M, N) in x's dtype. The roundings are the unfused step's (the projection rounded to x's dtype, the conv
    in fp32 from it, rounded once), so the two agree bit for bit where the kernels' fp32 sums do. Where the Triton
    kernel does not run (no Triton, float64, M > 64) the reference does it in PyTorch (``naive_decode_linear_conv``).
    """
    _, _, N = check_decode_linear(x, weight, norm_weight, eps, bias=bias)
    check_conv_epilogue(x, N, conv_state, conv_weight, conv_bias)

    def kernel():
        from .triton import Conv, _run

        return _run(x, weight, norm_weight, eps, bias=bias, conv=Conv(conv_state, conv_weight, conv_bias))

    args = (x, weight, norm_weight, eps, bias, conv_state, conv_weight, conv_bias)
    return _kernel_or_reference("decode_linear_conv", x, weight, norm_weight, kernel,
                                lambda: naive_decode_linear_conv(*args))  # fmt: skip


def _kernel_or_reference(op: str, x: torch.Tensor, weight: torch.Tensor, norm_weight: torch.Tensor | None,
                         kernel, reference) -> torch.Tensor:  # fmt: skip
    """``kernel()`` (the Triton kernel) where it runs and takes these inputs, else ``reference()`` (its PyTorch
    reference), the backend and why recorded for ``last_backend(op)``: 'triton' or 'naive'."""
    return _dispatch(op, (x, weight, norm_weight), _unsupported(x.shape[0], x, norm_weight), kernel, reference)


def _dispatch(op: str, tensors: tuple, unsupported: str | None, kernel, reference) -> torch.Tensor:
    """``kernel()`` where Triton runs on ``tensors`` and nothing makes them ``unsupported`` (a reason) and the kernel
    has not failed to compile on this device before, else ``reference()``; the backend and why recorded."""
    if use_triton(*tensors):
        dev = tensors[0].device.type
        reason = unsupported or kernel_failed(op, dev)
        if reason is None:
            out = try_kernel(op, dev, kernel)
            if out is not None:
                record(op, "triton")
                return out
            reason = kernel_failed(op, dev)
        record(op, "naive", reason)
    else:
        record(op, "naive")
    return reference()


def _unsupported(M: int, x: torch.Tensor, norm_weight: torch.Tensor | None) -> str | None:
    """Why the Triton kernel does not take these inputs, or None when it does."""
    if M > MAX_M:
        return f"M={M} rows > {MAX_M}: a GEMM, not a decode GEMV; the norm and F.linear (cuBLAS) run"
    if M == 0:
        return "M=0 rows: nothing to compute; F.linear returns the empty result"
    if x.dtype == torch.float64 or (norm_weight is not None and norm_weight.dtype == torch.float64):
        return "float64 inputs: the kernel computes in fp32; the norm and F.linear run in float64"
    return None


__all__ = [
    "MAX_M",
    "decode_linear",
    "decode_linear_conv",
    "decode_qkv_rope",
    "decode_rope_write",
    "naive_decode_linear",
    "naive_decode_linear_conv",
    "naive_decode_qkv_rope",
    "naive_decode_rope_write",
    "rms_norm",
    "rope_pair_order",
    "swiglu_pairs",
    "torch_decode_linear",
]
