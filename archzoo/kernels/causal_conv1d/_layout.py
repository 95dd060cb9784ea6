"""Causal conv1d, tile layout shared by the forward and backward kernels: groups of V = 8 steps loaded and
stored as whole 16-byte vectors and split into their steps in registers (triton.py has the design).
"""

from __future__ import annotations

import triton
import triton.language as tl

V = tl.constexpr(8)  # steps per group: one 16-byte vector of bf16, and W - 1 <= 7 < V


@triton.jit
def _split8(v):
    """(BD, G, 8) -> the 8 tensors v[:, :, i] (BD, G); the last axis is in-thread, so no data moves."""
    v = tl.reshape(v, (v.shape[0], v.shape[1], 2, 2, 2))  # i = 4a + 2b + c
    c0, c1 = tl.split(v)
    c0b0, c0b1 = tl.split(c0)
    c1b0, c1b1 = tl.split(c1)
    e0, e4 = tl.split(c0b0)
    e2, e6 = tl.split(c0b1)
    e1, e5 = tl.split(c1b0)
    e3, e7 = tl.split(c1b1)
    return e0, e1, e2, e3, e4, e5, e6, e7


@triton.jit
def _join8(e):
    """Inverse of _split8: a tuple of 8 (BD, G) tensors -> (BD, G, 8)."""
    a = tl.join(tl.join(e[0], e[4]), tl.join(e[2], e[6]))  # [.., a, b] = e[4a + 2b]
    b = tl.join(tl.join(e[1], e[5]), tl.join(e[3], e[7]))
    v = tl.join(a, b)  # [.., a, b, c] = e[4a + 2b + c]
    return tl.reshape(v, (v.shape[0], v.shape[1], 8))


@triton.jit
def _vec_steps(start, G: tl.constexpr, H: tl.constexpr):
    """Steps start + g V + i of G groups, laid out (H, 1, G, V / H): a group is H vectors of 16 bytes. The
    vector index is the outermost axis so that the compiler keeps a group's vectors in one thread."""
    VH: tl.constexpr = V // H
    h = (tl.arange(0, H) * VH)[:, None, None, None]
    return start + h + (tl.arange(0, G) * V)[None, None, :, None] + tl.arange(0, VH)[None, None, None, :]


@triton.jit
def _load_groups(row, s_l, start, lo, hi, shift, mask_d, G: tl.constexpr, ACC: tl.constexpr):
    """row[(u + shift) * s_l] at the steps u = start + g V + i with lo <= u < hi (else 0) as ACC (BD, G, V);
    row: (BD,) pointers."""
    H: tl.constexpr = row.dtype.element_ty.primitive_bitwidth // 16  # 16-byte vectors per group
    u = _vec_steps(start, G, H)
    m = mask_d[None, :, None, None] & (u >= lo) & (u < hi)
    v = tl.load(row[None, :, None, None] + (u + shift) * s_l, mask=m, other=0.0)
    return tl.reshape(tl.permute(v, (1, 2, 0, 3)), (row.shape[0], G, V)).to(ACC)


@triton.jit
def _store_groups(row, start, lo, hi, shift, mask_d, v, G: tl.constexpr):
    """Inverse of _load_groups for a contiguous row: row[u + shift] = v (BD, G, V) at the steps lo <= u < hi."""
    H: tl.constexpr = row.dtype.element_ty.primitive_bitwidth // 16
    v = tl.permute(tl.reshape(v, (row.shape[0], G, H, V // H)), (2, 0, 1, 3))
    u = _vec_steps(start, G, H)
    m = mask_d[None, :, None, None] & (u >= lo) & (u < hi)
    tl.store(row[None, :, None, None] + (u + shift), v.to(row.dtype.element_ty), mask=m)


@triton.jit
def _load_x(x_row, s_x_l, i_row, start, L, mask_d, first, G: tl.constexpr, W: tl.constexpr,
            HAS_INIT: tl.constexpr, ACC: tl.constexpr):  # fmt: skip
    """x at the steps of G groups from ``start`` as ACC (BD, G, V). Steps u < 0 read
    initial_states[..., u + W - 1] (zeros before it) in the tiles that can reach them (``first``, a
    runtime flag: the other tiles skip those scalar loads)."""
    v = _load_groups(x_row, s_x_l, start, 0, L, 0, mask_d, G, ACC)
    if HAS_INIT:
        if first:  # same layout as the x groups, so the branch adds no layout conversion
            v += _load_groups(i_row, 1, start, -(W - 1), 0, W - 1, mask_d, G, ACC)
    return v


@triton.jit
def _weights(w_ptr, offs_d, mask_d, W: tl.constexpr, ACC: tl.constexpr):
    """The taps as a tuple of 8 (BD, 1) tensors (zeros past W - 1); weight is contiguous (d, W)."""
    return (
        tl.load(w_ptr + offs_d * W + 0, mask=mask_d, other=0.0).to(ACC)[:, None],
        tl.load(w_ptr + offs_d * W + 1, mask=mask_d, other=0.0).to(ACC)[:, None],
        tl.load(w_ptr + offs_d * W + 2, mask=mask_d & (W > 2), other=0.0).to(ACC)[:, None],
        tl.load(w_ptr + offs_d * W + 3, mask=mask_d & (W > 3), other=0.0).to(ACC)[:, None],
        tl.load(w_ptr + offs_d * W + 4, mask=mask_d & (W > 4), other=0.0).to(ACC)[:, None],
        tl.load(w_ptr + offs_d * W + 5, mask=mask_d & (W > 5), other=0.0).to(ACC)[:, None],
        tl.load(w_ptr + offs_d * W + 6, mask=mask_d & (W > 6), other=0.0).to(ACC)[:, None],
        tl.load(w_ptr + offs_d * W + 7, mask=mask_d & (W > 7), other=0.0).to(ACC)[:, None],
    )


# Step i (-V <= i) of the group tuple X = (group before, this group[, group after]) is
# X[(i + V) // V][(i + V) % V], written out inline with V = 8 (a constexpr name cannot be rebound in an
# unrolled loop, and under the interpreter a helper call re-patches triton.language, which is slow).
