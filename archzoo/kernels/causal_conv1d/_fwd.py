"""Causal conv1d, forward kernel: out[t] = act(bias + sum_k w[k] x[t - (W-1) + k]) over one tile of groups
(the step indexing of the group tuples is explained at the end of _layout.py).
"""

from __future__ import annotations

import triton
import triton.language as tl

from ._layout import V, _join8, _load_x, _split8, _store_groups, _weights


@triton.jit
def _out(X, w, bias, j: tl.constexpr, W: tl.constexpr, SILU: tl.constexpr):
    """act(bias + sum_k w[k] x[j - (W-1) + k]) at step j of this group."""
    acc = bias
    for k in tl.static_range(W):
        acc += w[k] * X[(j - W + 9 + k) // 8][(j - W + 9 + k) % 8]  # step j - (W-1) + k
    if SILU:
        acc = acc * tl.sigmoid(acc)
    return acc


@triton.jit
def _conv_fwd_kernel(
    x_ptr, w_ptr, bias_ptr, init_ptr, out_ptr,
    d, L, s_x_b, s_x_d, s_x_l,
    W: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_INIT: tl.constexpr, SILU: tl.constexpr,
    ACC: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr,
):  # fmt: skip
    """out (b, d, L) contiguous; weight contiguous (d, W); initial_states contiguous (b, d, W-1)."""
    G: tl.constexpr = BLOCK_L // V
    pid_b = tl.program_id(0).to(tl.int64)
    pid_d = tl.program_id(1)
    pid_l = tl.program_id(2)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = offs_d < d
    start = pid_l * BLOCK_L
    x_row = x_ptr + pid_b * s_x_b + offs_d * s_x_d  # (BD,) row starts
    i_row = init_ptr + (pid_b * d + offs_d) * (W - 1)
    first = start < V  # the group before the tile reaches t < 0
    xp = _load_x(x_row, s_x_l, i_row, start - V, L, mask_d, first, G, W, HAS_INIT, ACC)  # the group before, again
    xc = _load_x(x_row, s_x_l, i_row, start, L, mask_d, first, G, W, HAS_INIT, ACC)
    X = (_split8(xp), _split8(xc))
    w = _weights(w_ptr, offs_d, mask_d, W, ACC)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(ACC)[:, None]
    else:
        bias = tl.zeros((BLOCK_D, 1), dtype=ACC)
    out = _join8((
        _out(X, w, bias, 0, W, SILU), _out(X, w, bias, 1, W, SILU), _out(X, w, bias, 2, W, SILU),
        _out(X, w, bias, 3, W, SILU), _out(X, w, bias, 4, W, SILU), _out(X, w, bias, 5, W, SILU),
        _out(X, w, bias, 6, W, SILU), _out(X, w, bias, 7, W, SILU),
    ))  # fmt: skip
    _store_groups(out_ptr + (pid_b * d + offs_d) * L, start, 0, L, 0, mask_d, out, G)
