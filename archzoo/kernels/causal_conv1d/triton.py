"""Triton depthwise causal conv1d (H3 / Mamba short conv; arXiv:2212.14052, arXiv:2312.00752): forward,
backward and decode update, for widths 2..8.

- Forward: one program per (batch, BLOCK_D channels, BLOCK_L steps); the W taps are W shifted tile
  loads (the overlap hits L1), bias and SiLU fused; ``initial_states`` supplies x at t < 0.
- Backward: the same grid; for each of the W output positions t = p + j that read x[p] the kernel
  recomputes the pre-activation (so nothing but x is saved), forms dpre = dout * silu'(pre) and
  adds w[W-1-j] * dpre to dx[p]. dweight / dbias are reduced over the block's steps in registers
  and written as per-block partials that the host sums. With ``initial_states`` the grid also
  covers the W-1 positions before 0 and writes their gradient to dinitial_states.
- Update: one program per (batch, BLOCK_D channels) reads the conv state (state_len >= W-1) and
  the new inputs, writes the outputs, then shifts the state in place.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from ._checks import check_activation, check_fn, check_update, compute_dtype


@triton.jit
def _x_at(x_ptr, init_ptr, pid_b, offs_d, mask_d, p, L,
          s_x_b, s_x_d, s_x_l, s_i_b, s_i_d, s_i_k,
          W: tl.constexpr, HAS_INIT: tl.constexpr, ACC: tl.constexpr):  # fmt: skip
    """x[b, offs_d, p] as ACC (BLOCK_D, BLOCK_L); p < 0 reads initial_states[..., p + W - 1] (or 0)."""
    m = mask_d[:, None] & ((p >= 0) & (p < L))[None, :]
    v = tl.load(x_ptr + pid_b * s_x_b + offs_d[:, None] * s_x_d + p[None, :] * s_x_l, mask=m, other=0.0)
    v = v.to(ACC)
    if HAS_INIT:
        q = p + (W - 1)
        mi = mask_d[:, None] & ((p < 0) & (q >= 0))[None, :]
        vi = tl.load(init_ptr + pid_b * s_i_b + offs_d[:, None] * s_i_d + q[None, :] * s_i_k, mask=mi, other=0.0)
        v += vi.to(ACC)
    return v


@triton.jit
def _conv_fwd_kernel(
    x_ptr, w_ptr, bias_ptr, init_ptr, out_ptr,
    d, L,
    s_x_b, s_x_d, s_x_l, s_w_d, s_w_k, s_i_b, s_i_d, s_i_k, s_o_b, s_o_d, s_o_l,
    W: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_INIT: tl.constexpr, SILU: tl.constexpr,
    ACC: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr,
):  # fmt: skip
    pid_b = tl.program_id(0).to(tl.int64)
    pid_d = tl.program_id(1)
    pid_l = tl.program_id(2)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_t = pid_l * BLOCK_L + tl.arange(0, BLOCK_L)
    mask_d = offs_d < d
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(ACC)
        acc = tl.zeros((BLOCK_D, BLOCK_L), dtype=ACC) + bias[:, None]
    else:
        acc = tl.zeros((BLOCK_D, BLOCK_L), dtype=ACC)
    for k in tl.static_range(W):
        wk = tl.load(w_ptr + offs_d * s_w_d + k * s_w_k, mask=mask_d, other=0.0).to(ACC)
        xk = _x_at(x_ptr, init_ptr, pid_b, offs_d, mask_d, offs_t - (W - 1) + k, L,
                   s_x_b, s_x_d, s_x_l, s_i_b, s_i_d, s_i_k, W, HAS_INIT, ACC)  # fmt: skip
        acc += wk[:, None] * xk
    if SILU:
        acc = acc * tl.sigmoid(acc)
    mask = mask_d[:, None] & (offs_t < L)[None, :]
    o_ptrs = out_ptr + pid_b * s_o_b + offs_d[:, None] * s_o_d + offs_t[None, :] * s_o_l
    tl.store(o_ptrs, acc.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _conv_bwd_kernel(
    x_ptr, w_ptr, bias_ptr, init_ptr, dout_ptr, dx_ptr, dinit_ptr, dw_ptr, dbias_ptr, scratch_ptr,
    d, L, n_seg, blocks_per_prog,
    s_x_b, s_x_d, s_x_l, s_w_d, s_w_k, s_i_b, s_i_d, s_i_k, s_do_b, s_do_d, s_do_l, s_dx_b, s_dx_d, s_dx_l,
    W: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_INIT: tl.constexpr, DINIT: tl.constexpr, SILU: tl.constexpr,
    ACC: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr,
):  # fmt: skip
    """Each program walks ``blocks_per_prog`` blocks of OWN = BLOCK_L - (W - 1) positions p. For a block it
    computes dpre = dout * act'(pre) once per step over a BLOCK_L tile (its OWN steps plus the W - 1 after),
    parks it in a private fp32 scratch tile, and reads it back shifted: dx[p] = sum_j w[W-1-j] dpre[p+j].
    dw (b, n_seg, d, W) and dbias (b, n_seg, d) are fp32 partials summed by the host."""
    OWN: tl.constexpr = BLOCK_L - (W - 1)
    pid_b = tl.program_id(0).to(tl.int64)
    pid_d = tl.program_id(1)
    pid_s = tl.program_id(2)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    offs = tl.arange(0, BLOCK_L)
    mask_d = offs_d < d
    own = offs < OWN
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(ACC)
    scratch = scratch_ptr + ((pid_b * n_seg + pid_s) * d + offs_d[:, None]) * BLOCK_L  # (BLOCK_D, 1) row starts
    dbias_acc = tl.zeros((BLOCK_D,), dtype=ACC)
    dw_acc = tl.zeros((BLOCK_D, 8), dtype=ACC)  # column k: dweight[:, k] (W <= 8)
    offs_k = tl.arange(0, 8)
    first = -(W - 1) if DINIT else 0  # with dinit the blocks also cover the W-1 steps before 0
    for blk in range(0, blocks_per_prog):
        t = first + (pid_s * blocks_per_prog + blk) * OWN + offs  # (BLOCK_L,) steps of the tile
        valid = mask_d[:, None] & ((t >= 0) & (t < L))[None, :]
        dpre = tl.load(
            dout_ptr + pid_b * s_do_b + offs_d[:, None] * s_do_d + t[None, :] * s_do_l, mask=valid, other=0.0
        ).to(ACC)
        if SILU:
            if HAS_BIAS:
                pre = tl.zeros((BLOCK_D, BLOCK_L), dtype=ACC) + bias[:, None]
            else:
                pre = tl.zeros((BLOCK_D, BLOCK_L), dtype=ACC)
            for k in tl.static_range(W):
                wk = tl.load(w_ptr + offs_d * s_w_d + k * s_w_k, mask=mask_d, other=0.0).to(ACC)
                xk = _x_at(x_ptr, init_ptr, pid_b, offs_d, mask_d, t - (W - 1) + k, L,
                           s_x_b, s_x_d, s_x_l, s_i_b, s_i_d, s_i_k, W, HAS_INIT, ACC)  # fmt: skip
                pre += wk[:, None] * xk
            sig = tl.sigmoid(pre)
            dpre = dpre * sig * (1.0 + pre * (1.0 - sig))
        dpre_own = tl.where(own[None, :], dpre, 0.0)
        if HAS_BIAS:
            dbias_acc += tl.sum(dpre_own, axis=1)
        for k in tl.static_range(W):
            xk = _x_at(x_ptr, init_ptr, pid_b, offs_d, mask_d, t - (W - 1) + k, L,
                       s_x_b, s_x_d, s_x_l, s_i_b, s_i_d, s_i_k, W, HAS_INIT, ACC)  # fmt: skip
            dw_acc += tl.where(offs_k[None, :] == k, tl.sum(dpre_own * xk, axis=1)[:, None], 0.0)
        tl.store(scratch + offs[None, :], dpre, mask=mask_d[:, None])
        tl.debug_barrier()
        dx = tl.zeros((BLOCK_D, BLOCK_L), dtype=ACC)
        for j in tl.static_range(W):
            wj = tl.load(w_ptr + offs_d * s_w_d + (W - 1 - j) * s_w_k, mask=mask_d, other=0.0).to(ACC)
            dj = tl.load(scratch + (offs + j)[None, :], mask=mask_d[:, None] & (offs + j < BLOCK_L)[None, :], other=0.0)
            dx += wj[:, None] * dj
        tl.debug_barrier()  # the next block overwrites the scratch tile
        m = mask_d[:, None] & (own & (t >= 0) & (t < L))[None, :]
        dx_ptrs = dx_ptr + pid_b * s_dx_b + offs_d[:, None] * s_dx_d + t[None, :] * s_dx_l
        tl.store(dx_ptrs, dx.to(dx_ptr.dtype.element_ty), mask=m)
        if DINIT:
            q = t + (W - 1)
            mi = mask_d[:, None] & (own & (t < 0) & (q >= 0))[None, :]
            di_ptrs = dinit_ptr + pid_b * (d * (W - 1)) + offs_d[:, None] * (W - 1) + q[None, :]
            tl.store(di_ptrs, dx.to(dinit_ptr.dtype.element_ty), mask=mi)
    part = (pid_b * n_seg + pid_s) * d + offs_d
    if HAS_BIAS:
        tl.store(dbias_ptr + part, dbias_acc, mask=mask_d)
    tl.store(dw_ptr + part[:, None] * W + offs_k[None, :], dw_acc, mask=mask_d[:, None] & (offs_k < W)[None, :])


@triton.jit
def _conv_update_kernel(
    x_ptr, state_ptr, w_ptr, bias_ptr, out_ptr,
    d, S, s,
    s_x_b, s_x_d, s_x_l, s_s_b, s_s_d, s_s_k, s_w_d, s_w_k, s_o_b, s_o_d, s_o_l,
    W: tl.constexpr, HAS_BIAS: tl.constexpr, SILU: tl.constexpr, ACC: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_S: tl.constexpr,
):  # fmt: skip
    """Index q in the virtual sequence cat(state, x) of length S + s: q < S reads the state, else x[q - S]."""
    pid_b = tl.program_id(0).to(tl.int64)
    pid_d = tl.program_id(1)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = offs_d < d
    x_row = x_ptr + pid_b * s_x_b + offs_d * s_x_d
    s_row = state_ptr + pid_b * s_s_b + offs_d * s_s_d
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(ACC)
    for j in range(0, s):
        if HAS_BIAS:
            acc = bias
        else:
            acc = tl.zeros((BLOCK_D,), dtype=ACC)
        for k in tl.static_range(W):
            q = tl.zeros((BLOCK_D,), dtype=tl.int32) + (S + j - (W - 1) + k)  # same index for every channel
            v = tl.load(s_row + q * s_s_k, mask=mask_d & (q < S), other=0.0).to(ACC)
            v += tl.load(x_row + (q - S) * s_x_l, mask=mask_d & (q >= S), other=0.0).to(ACC)
            acc += tl.load(w_ptr + offs_d * s_w_d + k * s_w_k, mask=mask_d, other=0.0).to(ACC) * v
        if SILU:
            acc = acc * tl.sigmoid(acc)
        tl.store(out_ptr + pid_b * s_o_b + offs_d * s_o_d + j * s_o_l, acc.to(out_ptr.dtype.element_ty), mask=mask_d)
    # shift: new_state[i] = cat(state, x)[s + i]; read everything before writing
    offs_i = tl.arange(0, BLOCK_S)
    q = s + offs_i
    m = mask_d[:, None] & (offs_i < S)[None, :]
    v = tl.load(s_row[:, None] + q[None, :] * s_s_k, mask=m & (q < S)[None, :], other=0.0)
    v += tl.load(x_row[:, None] + (q - S)[None, :] * s_x_l, mask=m & (q >= S)[None, :], other=0.0).to(v.dtype)
    tl.debug_barrier()
    tl.store(s_row[:, None] + offs_i[None, :] * s_s_k, v, mask=m)


# ----------------------------------------------------------------------------------------------
# host side


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _next_pow2(x: int) -> int:
    return 1 << max(0, (x - 1).bit_length())


def _tl_dtype(*tensors: torch.Tensor | None):
    """Accumulation dtype of the kernels: fp32, or fp64 when an input is fp64."""
    return tl.float64 if compute_dtype(*tensors) == torch.float64 else tl.float32


def conv_config(d: int, L: int, W: int, device: torch.device) -> dict:
    if device.type != "cuda":  # interpreter: small tiles so tests cover several blocks
        return dict(BLOCK_D=4, BLOCK_L=8 if W <= 4 else 16, num_warps=1)
    return dict(BLOCK_D=16, BLOCK_L=256, num_warps=4)


@functools.lru_cache
def _num_sms(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 4


class _CausalConv1dFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, init, silu):
        b, d, L = x.shape
        W = weight.shape[1]
        cfg = conv_config(d, L, W, x.device)
        out = torch.empty((b, d, L), device=x.device, dtype=x.dtype)
        ii = init if init is not None else x
        grid = (b, _cdiv(d, cfg["BLOCK_D"]), _cdiv(L, cfg["BLOCK_L"]))
        _conv_fwd_kernel[grid](
            x, weight, bias if bias is not None else weight, ii, out,
            d, L,
            *x.stride(), *weight.stride(), *ii.stride(), *out.stride(),
            W=W, HAS_BIAS=bias is not None, HAS_INIT=init is not None, SILU=silu, ACC=_tl_dtype(x, weight, bias, init),
            BLOCK_D=cfg["BLOCK_D"], BLOCK_L=cfg["BLOCK_L"], num_warps=cfg["num_warps"],
        )  # fmt: skip
        ctx.save_for_backward(x, weight, bias, init)
        ctx.silu = silu
        return out

    @staticmethod
    def backward(ctx, dout):
        x, weight, bias, init = ctx.saved_tensors
        b, d, L = x.shape
        W = weight.shape[1]
        cfg = conv_config(d, L, W, x.device)
        dinit_needed = init is not None and ctx.needs_input_grad[3]
        span = L + (W - 1 if dinit_needed else 0)
        own = cfg["BLOCK_L"] - (W - 1)
        n_blocks = _cdiv(span, own)
        d_blocks = _cdiv(d, cfg["BLOCK_D"])
        # programs walk several blocks each so the per-program scratch tile stays small; ~4 programs per SM
        n_seg = max(1, min(n_blocks, _cdiv(4 * _num_sms(x.device), b * d_blocks)))
        blocks_per_prog = _cdiv(n_blocks, n_seg)
        n_seg = _cdiv(n_blocks, blocks_per_prog)
        f32 = dict(device=x.device, dtype=compute_dtype(x, weight, bias, init, dout))
        dx = torch.empty((b, d, L), device=x.device, dtype=x.dtype)
        dinit = torch.empty((b, d, W - 1), device=x.device, dtype=init.dtype) if dinit_needed else None
        dw = torch.empty((b, n_seg, d, W), **f32)
        dbias = torch.empty((b, n_seg, d), **f32) if bias is not None else None
        scratch = torch.empty((b, n_seg, d, cfg["BLOCK_L"]), **f32)
        ii = init if init is not None else x
        grid = (b, d_blocks, n_seg)
        _conv_bwd_kernel[grid](
            x, weight, bias if bias is not None else weight, ii, dout, dx,
            dinit if dinit is not None else dx, dw, dbias if dbias is not None else dw, scratch,
            d, L, n_seg, blocks_per_prog,
            *x.stride(), *weight.stride(), *ii.stride(), *dout.stride(), *dx.stride(),
            W=W, HAS_BIAS=bias is not None, HAS_INIT=init is not None, DINIT=dinit_needed, SILU=ctx.silu,
            ACC=_tl_dtype(x, weight, bias, init, dout),
            BLOCK_D=cfg["BLOCK_D"], BLOCK_L=cfg["BLOCK_L"], num_warps=cfg["num_warps"],
        )  # fmt: skip
        dweight = dw.sum((0, 1)).to(weight.dtype)
        dbias = dbias.sum((0, 1)).to(bias.dtype) if bias is not None else None
        return dx, dweight, dbias, dinit, None


def causal_conv1d_fn(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    seq_idx: torch.Tensor | None = None,
    initial_states: torch.Tensor | None = None,
    return_final_states: bool = False,
    final_states_out: torch.Tensor | None = None,
    activation: str | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Depthwise causal conv in Triton; same signature and semantics as ``naive_causal_conv1d_fn``.

    x (b, d, l); weight (d, w), 2 <= w <= 8; bias (d,); initial_states (b, d, w - 1). Returns out
    (b, d, l) in x's dtype, and with ``return_final_states`` the last w - 1 inputs (b, d, w - 1).
    """
    b, d, L, W = check_fn(x, weight, bias, seq_idx, initial_states, final_states_out, activation)
    silu = check_activation(activation)
    init = initial_states.contiguous() if initial_states is not None else None
    if L == 0:
        out = x.new_empty(x.shape)
    else:
        out = _CausalConv1dFn.apply(x, weight, bias, init, silu)
    if not return_final_states:
        return out
    # the last w - 1 inputs, differentiable through plain indexing
    pre = init if init is not None else x.new_zeros((b, d, W - 1))
    final = torch.cat([pre.to(x.dtype), x[:, :, max(0, L - (W - 1)) :]], dim=-1)[:, :, -(W - 1) :]
    if final_states_out is not None:
        final_states_out.copy_(final)
        final = final_states_out
    return out, final


def causal_conv1d_update(
    x: torch.Tensor,
    conv_state: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str | None = None,
) -> torch.Tensor:
    """Decode step(s) in Triton; ``conv_state`` (b, d, state_len >= w - 1) is updated IN PLACE.

    x (b, d) or (b, d, s). Returns out with x's shape and dtype. Not differentiable.
    """
    squeeze = x.dim() == 2
    x3 = x.unsqueeze(-1) if squeeze else x
    b, d, s, W, S = check_update(x3, conv_state, weight, bias, activation)
    silu = check_activation(activation)
    out = torch.empty((b, d, s), device=x.device, dtype=x.dtype)
    block_d = 4 if x.device.type != "cuda" else 64
    grid = (b, _cdiv(d, block_d))
    _conv_update_kernel[grid](
        x3, conv_state, weight, bias if bias is not None else weight, out,
        d, S, s,
        *x3.stride(), *conv_state.stride(), *weight.stride(), *out.stride(),
        W=W, HAS_BIAS=bias is not None, SILU=silu, ACC=_tl_dtype(x3, conv_state, weight, bias),
        BLOCK_D=block_d, BLOCK_S=_next_pow2(S),
        num_warps=1 if x.device.type != "cuda" else 2,
    )  # fmt: skip
    return out.squeeze(-1) if squeeze else out
