"""Triton: the middle of a Mamba layer's decode step in one kernel (issue 18).

Unfused, a Mamba layer's step launches in_proj -> ``causal_conv1d_update`` -> x_proj -> dt_proj ->
``selective_state_update`` -> o_proj; at batch 1 each launch costs more than its work. This kernel does the
four in the middle: the conv update and SiLU, x_proj (d -> dt_rank + 2n: dt_low, B, C), dt_proj (dt_rank -> d)
with dt_bias and softplus, and the state update (h = exp(dt A) h + dt B xc; y = C.h + D xc; y *= silu(z)),
writing the new conv and SSM states in place.

Grid (batch, splits); program (b, s):

- Phase 1, every program over ALL d channels in blocks of BLOCK_C: xc = silu(conv(the OLD conv state's last
  w - 1 inputs, x) + conv_bias) for the block, and dt_low, B, C += W_x[:, block] xc, in ACC (fp32) with 2-D
  accumulators reduced once after the loop (x_proj has no bias in Mamba). Each program reads all of W_x
  ((dt_rank + 2n) x d: 78 KB in bf16 at the SmolLM2-sized students' d 576, n 16, dt_rank 36) and row b's conv
  state; after the first program the other splits find W_x in L2.
- Phase 2, over the program's own slice of ``slice_len`` channels in blocks of BLOCK_S: xc again (w taps: cheaper
  than keeping it), dt = softplus(W_dt[slice] dt_low + dt_bias), the SSM state slice updated, y stored.
- The conv state's write, by ONE program per row, after every program of the row has read it. Phase 1 of each
  program reads the old conv state of every channel, so a program cannot write its own slice's new state while
  another program of the row may still be in phase 1 (it would read the shifted state: the oldest input lost).
  With one split the program itself writes it at its end; with several, each program takes a ticket from its
  row's arrival counter (``kernels/_fixup.py``: ``tl.atomic_add`` with acquire-release semantics at GPU scope,
  after a barrier, so every thread's reads of the conv state come before it) and the program that draws the
  last ticket shifts the whole row's state (d x state_len: 3.5 KB at the students' shape) and sets the counter
  back to zero. The SSM state and y are written by the slice owners only, each read and written by one program.

Splits (``plan``): at small batch one program per row would leave a single SM streaming the row's whole SSM state
(d x n fp32, read and written), A and W_dt (d x dt_rank): 36 + 36 + 41 KB at the students' shape, where phase 1's
L2 reads are the same for any split count. So rows get splits of at least SLICE channels while batch x splits
stays within the SM count: 9 splits of 64 channels at batch 1 on an H100, 8 of 80 at batch 16; one split per row
once the batch alone fills the SMs (then the redundant phase 1 buys nothing). Not yet timed on a GPU: the sizes
are tuning hooks (CONFIG_OVERRIDE). Under Triton's interpreter the programs run one after another, so one split
(tests pass ``splits`` to exercise several).

Inputs fp32, bf16 or fp16 (fp64 runs in fp64: ACC); the SSM state in its own dtype (fp32 for 16-bit
activations); y in x's dtype. dt, B, C and xc stay in ACC between the ops (the unfused step rounds them to x's
dtype). softplus uses an accurate log1p (1e-7 relative in fp32 at dt ~ 1e-3, where log(1 + exp) loses 1e-4).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._fixup import counters as _counters
from .._launch import launch
from .._sizes import cdiv as _cdiv
from .._sizes import next_pow2 as _next_pow2
from .._sizes import prev_pow2 as _prev_pow2
from .._sizes import sm_count as _sm_count
from ._checks import check_step, compute_dtype

# BLOCK_C: channels per phase-1 block, at most; TILE: elements of phase 1's accumulators (dt_rank + 2n padded rows x
# BLOCK_C), which lowers BLOCK_C for wide ranks / states; BLOCK_S: channels per phase-2 block; SLICE: the least
# channels a split gets (splits = min(SMs / batch, d / SLICE)); ALIGN: slices are a multiple of it (aligned loads).
CUDA_CONFIG = dict(BLOCK_C=64, TILE=8192, BLOCK_S=64, SLICE=64, ALIGN=16, num_warps=4)
# Under the interpreter (CPU tensors): large blocks (numpy does a block as fast as an element) and one split.
INTERPRET_CONFIG = dict(BLOCK_C=128, TILE=1 << 16, BLOCK_S=128, SLICE=1 << 30, ALIGN=1, num_warps=1, SM_COUNT=1)
# Overrides of either (tests, tuners); "SPLITS" forces the split count. Plans are keyed on it.
CONFIG_OVERRIDE: dict = {}
# The last compiled kernel launched (tools/sm90_compile.py reads its registers); None under the interpreter.
LAST_COMPILED: dict[str, object] = {}


@triton.jit
def _softplus(v):
    """log(1 + exp(v)) with an accurate log1p (Goldberg's: log(u) * e / (u - 1), u = 1 + e), v itself past 20."""
    e = tl.exp(tl.minimum(v, 20.0))
    u = 1.0 + e
    lp = tl.where(u == 1.0, e, tl.log(u) * (e / (u - 1.0)))
    return tl.where(v > 20.0, v, lp)


@triton.jit
def _conv_silu(
    x_row, cs_row, cw_ptr, cb_ptr, offs, mask, S, s_x_d, s_cs_d, s_cs_k, s_cw_d, s_cw_k,
    W: tl.constexpr, HAS_CONV_BIAS: tl.constexpr, ACC: tl.constexpr,
):  # fmt: skip
    """xc = silu(sum_k w[c, k] window[c, k] + bias[c]) for channels ``offs``: the window is the conv state's last
    W - 1 inputs (oldest first), then x. Taps summed in the naive reference's order, the bias last."""
    acc = tl.zeros(offs.shape, ACC)
    for k in tl.static_range(W - 1):
        v = tl.load(cs_row + offs * s_cs_d + (S - (W - 1) + k) * s_cs_k, mask=mask, other=0.0).to(ACC)
        acc += tl.load(cw_ptr + offs * s_cw_d + k * s_cw_k, mask=mask, other=0.0).to(ACC) * v
    xn = tl.load(x_row + offs * s_x_d, mask=mask, other=0.0).to(ACC)
    acc += tl.load(cw_ptr + offs * s_cw_d + (W - 1) * s_cw_k, mask=mask, other=0.0).to(ACC) * xn
    if HAS_CONV_BIAS:
        acc += tl.load(cb_ptr + offs, mask=mask, other=0.0).to(ACC)
    return acc * tl.sigmoid(acc)


@triton.jit
def _mamba_step_kernel(
    x_ptr, z_ptr, cs_ptr, h_ptr, cw_ptr, cb_ptr, wx_ptr, wdt_ptr, dtb_ptr, A_ptr, D_ptr, out_ptr, cnt_ptr,
    d, n, r, S, slice_len, splits,
    s_x_b, s_x_d, s_z_b, s_z_d, s_cs_b, s_cs_d, s_cs_k, s_h_b, s_h_d, s_h_n, s_cw_d, s_cw_k,
    s_wx_o, s_wx_i, s_wdt_o, s_wdt_i, s_A_d, s_A_n, s_o_b, s_o_d,
    W: tl.constexpr, HAS_CONV_BIAS: tl.constexpr, HAS_DT_BIAS: tl.constexpr, HAS_D: tl.constexpr,
    HAS_Z: tl.constexpr, TICKET: tl.constexpr, ACC: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):  # fmt: skip
    pid_b = tl.program_id(0).to(tl.int64)
    pid_s = tl.program_id(1)
    x_row = x_ptr + pid_b * s_x_b
    cs_row = cs_ptr + pid_b * s_cs_b
    offs_r = tl.arange(0, BLOCK_R)
    mask_r = offs_r < r
    offs_n = tl.arange(0, BLOCK_N)
    mask_n = offs_n < n

    # Phase 1: dt_low (r), B (n), C (n) = W_x @ xc over all channels
    acc_dt = tl.zeros((BLOCK_R, BLOCK_C), ACC)
    acc_b = tl.zeros((BLOCK_N, BLOCK_C), ACC)
    acc_c = tl.zeros((BLOCK_N, BLOCK_C), ACC)
    wx_dt = wx_ptr + offs_r[:, None] * s_wx_o
    wx_b = wx_ptr + (r + offs_n)[:, None] * s_wx_o
    wx_c = wx_ptr + (r + n + offs_n)[:, None] * s_wx_o
    for c0 in range(0, d, BLOCK_C):
        offs_c = c0 + tl.arange(0, BLOCK_C)
        mask_c = offs_c < d
        xc = _conv_silu(x_row, cs_row, cw_ptr, cb_ptr, offs_c, mask_c, S, s_x_d, s_cs_d, s_cs_k, s_cw_d, s_cw_k,
                        W, HAS_CONV_BIAS, ACC)[None, :]  # fmt: skip
        col = offs_c[None, :] * s_wx_i
        acc_dt += tl.load(wx_dt + col, mask=mask_r[:, None] & mask_c[None, :], other=0.0).to(ACC) * xc
        acc_b += tl.load(wx_b + col, mask=mask_n[:, None] & mask_c[None, :], other=0.0).to(ACC) * xc
        acc_c += tl.load(wx_c + col, mask=mask_n[:, None] & mask_c[None, :], other=0.0).to(ACC) * xc
    dt_low = tl.sum(acc_dt, axis=1)  # (BLOCK_R,)
    Bv = tl.sum(acc_b, axis=1)  # (BLOCK_N,)
    Cv = tl.sum(acc_c, axis=1)

    # Phase 2: this program's channels [start, end): dt, the SSM state, y
    start = pid_s * slice_len
    end = tl.minimum(start + slice_len, d)
    for i in range(0, slice_len, BLOCK_S):
        offs = start + i + tl.arange(0, BLOCK_S)
        mask = offs < end
        xc = _conv_silu(x_row, cs_row, cw_ptr, cb_ptr, offs, mask, S, s_x_d, s_cs_d, s_cs_k, s_cw_d, s_cw_k,
                        W, HAS_CONV_BIAS, ACC)  # fmt: skip
        wdt = tl.load(wdt_ptr + offs[:, None] * s_wdt_o + offs_r[None, :] * s_wdt_i,
                      mask=mask[:, None] & mask_r[None, :], other=0.0).to(ACC)  # fmt: skip
        dt = tl.sum(wdt * dt_low[None, :], axis=1)  # (BLOCK_S,)
        if HAS_DT_BIAS:
            dt += tl.load(dtb_ptr + offs, mask=mask, other=0.0).to(ACC)
        dt = _softplus(dt)
        mask_dn = mask[:, None] & mask_n[None, :]
        h_ptrs = h_ptr + pid_b * s_h_b + offs[:, None] * s_h_d + offs_n[None, :] * s_h_n
        h = tl.load(h_ptrs, mask=mask_dn, other=0.0).to(ACC)
        A = tl.load(A_ptr + offs[:, None] * s_A_d + offs_n[None, :] * s_A_n, mask=mask_dn, other=0.0).to(ACC)
        h = tl.exp(dt[:, None] * A) * h + (dt * xc)[:, None] * Bv[None, :]
        tl.store(h_ptrs, h.to(h_ptr.dtype.element_ty), mask=mask_dn)
        y = tl.sum(h * Cv[None, :], axis=1)
        if HAS_D:
            y += tl.load(D_ptr + offs, mask=mask, other=0.0).to(ACC) * xc
        if HAS_Z:
            zz = tl.load(z_ptr + pid_b * s_z_b + offs * s_z_d, mask=mask, other=0.0).to(ACC)
            y = y * zz * tl.sigmoid(zz)
        tl.store(out_ptr + pid_b * s_o_b + offs * s_o_d, y.to(out_ptr.dtype.element_ty), mask=mask)

    # The conv state's shift, by one program of the row once all have read the old state (module docstring)
    if TICKET:
        tl.debug_barrier()  # every thread's reads of the conv state come before the ticket
        ticket = tl.atomic_add(cnt_ptr + pid_b, 1, sem="acq_rel", scope="gpu")
        writer = ticket == splits - 1
    else:
        writer = pid_s == 0
    if writer:
        offs_k = tl.arange(0, BLOCK_K)
        q = offs_k + 1  # new[k] = cat(old, x)[k + 1]
        mask_k = offs_k < S
        for c0 in range(0, d, BLOCK_C):
            offs_c = c0 + tl.arange(0, BLOCK_C)
            mask_c = offs_c < d
            m = mask_c[:, None] & mask_k[None, :]
            v = tl.load(cs_row + offs_c[:, None] * s_cs_d + q[None, :] * s_cs_k, mask=m & (q < S)[None, :],
                        other=0.0)  # fmt: skip
            xn = tl.load(x_row + offs_c * s_x_d, mask=mask_c, other=0.0).to(v.dtype)
            v = tl.where((q == S)[None, :], xn[:, None], v)
            tl.debug_barrier()  # this block's reads before its writes (threads share columns)
            tl.store(cs_row + offs_c[:, None] * s_cs_d + offs_k[None, :] * s_cs_k, v, mask=m)
        if TICKET:
            tl.store(cnt_ptr + pid_b, 0)  # zero again for the next call (a captured graph's next replay)


def _config(device: torch.device) -> dict:
    base = CUDA_CONFIG if device.type == "cuda" else INTERPRET_CONFIG
    return {**base, **CONFIG_OVERRIDE}


_PLANS: dict[tuple, tuple] = {}


def plan(b: int, d: int, n: int, r: int, S: int, device: torch.device, splits: int | None = None) -> tuple:
    """-> (splits, slice_len, BLOCK_C, BLOCK_S, BLOCK_R, BLOCK_N, BLOCK_K, num_warps) for these sizes (module
    docstring: why the split count)."""
    key = (b, d, n, r, S, device, splits, tuple(sorted(CONFIG_OVERRIDE.items())))
    got = _PLANS.get(key)
    if got is not None:
        return got
    cfg = _config(device)
    if splits is None:
        splits = cfg.get("SPLITS")
    if splits is None:
        sms = cfg.get("SM_COUNT")
        if not sms:
            sms = _sm_count(device.index if device.index is not None else torch.cuda.current_device())
        splits = max(1, min(sms // b, _cdiv(d, cfg["SLICE"])))
    if splits < 1:
        raise ValueError(f"splits must be at least 1, got {splits}")
    slice_len = _cdiv(_cdiv(d, splits), cfg["ALIGN"]) * cfg["ALIGN"]
    if cfg["ALIGN"] > 1:  # aligned slices may need fewer programs than asked for
        splits = _cdiv(d, slice_len)
    block_r, block_n = _next_pow2(r), _next_pow2(n)
    rows = block_r + 2 * block_n
    block_c = min(cfg["BLOCK_C"], max(16, _prev_pow2(cfg["TILE"] // rows)), _next_pow2(d))
    block_s = min(cfg["BLOCK_S"], max(16, _prev_pow2(cfg["TILE"] // max(block_r, block_n))), _next_pow2(slice_len))
    got = (splits, slice_len, block_c, block_s, block_r, block_n, _next_pow2(S), cfg["num_warps"])
    if len(_PLANS) > 256:
        _PLANS.clear()
    _PLANS[key] = got
    return got


def mamba_decode_step(
    x: torch.Tensor,
    conv_state: torch.Tensor,
    ssm_state: torch.Tensor,
    conv_weight: torch.Tensor,
    conv_bias: torch.Tensor | None,
    x_proj_weight: torch.Tensor,
    dt_proj_weight: torch.Tensor,
    A: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    splits: int | None = None,
) -> torch.Tensor:
    """One Mamba decode step in Triton; ``conv_state`` and ``ssm_state`` are updated IN PLACE. Same semantics as
    ``naive_mamba_decode_step``; ``splits`` forces the channel splits per row (default: ``plan``'s). Returns y
    (b, d) in x's dtype, contiguous. Any strides (x and z as views of in_proj's output). Not differentiable."""
    b, d, n, r, W, S = check_step(
        x, conv_state, ssm_state, conv_weight, conv_bias, x_proj_weight, dt_proj_weight, A, D, z, dt_bias
    )
    n_splits, slice_len, block_c, block_s, block_r, block_n, block_k, warps = plan(b, d, n, r, S, x.device, splits)
    ticket = n_splits > 1
    out = torch.empty((b, d), device=x.device, dtype=x.dtype)
    cnt = _counters(x.device, b) if ticket else out  # unused with one split
    acc = compute_dtype(x, conv_state, ssm_state, conv_weight, conv_bias, x_proj_weight, dt_proj_weight, A, D, z,
                        dt_bias)  # fmt: skip
    zz = z if z is not None else x
    ptrs = (x, zz, conv_state, ssm_state, conv_weight, conv_bias if conv_bias is not None else x, x_proj_weight,
            dt_proj_weight, dt_bias if dt_bias is not None else x, A, D if D is not None else x, out, cnt)  # fmt: skip
    ints = (d, n, r, S, slice_len, n_splits, *x.stride(), *zz.stride(), *conv_state.stride(),
            *ssm_state.stride(), *conv_weight.stride(), *x_proj_weight.stride(), *dt_proj_weight.stride(),
            *A.stride(), *out.stride())  # fmt: skip
    consts = (W, conv_bias is not None, dt_bias is not None, D is not None, z is not None, ticket,
              tl.float64 if acc == torch.float64 else tl.float32,
              block_c, block_s, block_r, block_n, block_k)  # fmt: skip
    LAST_COMPILED["step"] = launch(_mamba_step_kernel, (b, n_splits), ptrs, ints, consts, warps, x.get_device())
    return out
