"""The stages of the persistent decode kernels in ``persistent_mlp_bench.py``, ``persistent_step_bench.py`` and
``persistent_prefetch.py`` (issue 18, item 4), shared by them: Triton helpers a program runs between two grid-wide
barriers (``grid_sync_bench.grid_sync``), with the decode GEMV's roundings (``archzoo.kernels.decode_linear``: the
norm's x * rstd rounded, times its weight, rounded; g, u, SiLU(g) and the product rounded; a product plus the
residual rounded once). Row-major weights; a program takes row tiles pid, pid + P, ... of a stage.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl


@triton.jit
def _rnd(v, DT: tl.constexpr):
    """v rounded to DT (as the unfused ops store it), back in fp32."""
    return v.to(DT).to(tl.float32)


@triton.jit
def rms_rstd(x_ptr, eps, D: tl.constexpr, BLOCK_K: tl.constexpr):
    """1 / sqrt(mean(x^2) + eps) of x (D,), in fp32 (``RMSNorm``'s rms)."""
    ss = tl.zeros([BLOCK_K], tl.float32)
    for k0 in tl.static_range(0, D, BLOCK_K):
        kk = k0 + tl.arange(0, BLOCK_K)
        xv = tl.load(x_ptr + kk, mask=kk < D, other=0.0).to(tl.float32)
        ss += xv * xv
    return 1.0 / tl.sqrt(tl.sum(ss, axis=0) / D + eps)


@triton.jit
def normed_rows_dot(x_ptr, nw_ptr, w_ptr, rows, rstd, DT: tl.constexpr, D: tl.constexpr, BLOCK_K: tl.constexpr):
    """W[rows] @ (x * rstd rounded, times the norm weight, rounded), fp32 (len(rows),): the normed GEMV's rows, its
    K loop unrolled so that every tile's loads issue together. W (N, D) row-major."""
    acc = tl.zeros(rows.shape, tl.float32)
    for k0 in tl.static_range(0, D, BLOCK_K):
        kk = k0 + tl.arange(0, BLOCK_K)
        mk = kk < D
        xv = tl.load(x_ptr + kk, mask=mk, other=0.0).to(tl.float32)
        nw = tl.load(nw_ptr + kk, mask=mk, other=0.0).to(tl.float32)
        xn = _rnd(_rnd(xv * rstd, DT) * nw, DT)
        w = tl.load(w_ptr + rows[:, None] * D + kk[None, :], mask=mk[None, :], other=0.0)
        acc += tl.sum(w.to(tl.float32) * xn[None, :], axis=1)
    return acc


@triton.jit
def gate_up_stage(
    x_ptr, nw_ptr, w_ptr, h_ptr, pid, nprog, eps,
    DT: tl.constexpr, D: tl.constexpr, F: tl.constexpr, ROWS: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    """h (F,) = silu(g) * u of norm(x), W (2F, D) with gate / up rows interleaved; this program's row tiles."""
    rstd = rms_rstd(x_ptr, eps, D, BLOCK_K)
    for t in tl.range(pid, (2 * F) // ROWS, nprog):
        acc = normed_rows_dot(x_ptr, nw_ptr, w_ptr, t * ROWS + tl.arange(0, ROWS), rstd, DT, D, BLOCK_K)
        swiglu_store(acc, t, h_ptr, DT, ROWS)


@triton.jit
def swiglu_store(acc, t, h_ptr, DT: tl.constexpr, ROWS: tl.constexpr):
    """h of tile t's (gate, up) row pairs from their fp32 products: silu(g) * u with the unfused roundings."""
    HALF: tl.constexpr = ROWS // 2
    g, u = tl.split(tl.reshape(acc, (HALF, 2)))
    g = _rnd(g, DT)
    s = _rnd(g / (1.0 + tl.exp(-g)), DT)
    tl.store(h_ptr + t * HALF + tl.arange(0, HALF), _rnd(s * _rnd(u, DT), DT))


@triton.jit
def residual_stage(
    w_ptr, v_ptr, x_ptr, pid, nprog,
    DT: tl.constexpr, N: tl.constexpr, K: tl.constexpr, ROWS: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    """x[rows] += W[rows] @ v (W (N, K), v (K,)), rounded once; this program's row tiles, each reading and writing
    only its own rows of x."""
    for t in tl.range(pid, N // ROWS, nprog):
        rows = t * ROWS + tl.arange(0, ROWS)
        acc = tl.zeros([ROWS], tl.float32)
        for k0 in tl.static_range(0, K, BLOCK):
            kk = k0 + tl.arange(0, BLOCK)
            mk = kk < K
            v = tl.load(v_ptr + kk, mask=mk, other=0.0).to(tl.float32)
            w = tl.load(w_ptr + rows[:, None] * K + kk[None, :], mask=mk[None, :], other=0.0)
            acc += tl.sum(w.to(tl.float32) * v[None, :], axis=1)
        residual_store(acc, rows, x_ptr, DT)


@triton.jit
def residual_store(acc, rows, x_ptr, DT: tl.constexpr):
    """x[rows] = x[rows] + acc, rounded once."""
    tl.store(x_ptr + rows, (acc + tl.load(x_ptr + rows).to(tl.float32)).to(DT))


@triton.jit
def _qkv_stage(
    x_ptr, nw_ptr, w_ptr, q_ptr, kc_ptr, vc_ptr, cos_ptr, sin_ptr, pid, nprog, pos, T_max, eps,
    DT: tl.constexpr, D: tl.constexpr, H: tl.constexpr, HKV: tl.constexpr, HD: tl.constexpr, ROWS: tl.constexpr,
    BLOCK_K: tl.constexpr,
):  # fmt: skip
    """Q|K|V of norm(x), RoPE on Q / K, Q to q, K / V to slot ``pos`` of this layer's caches (HKV, T_max, HD)."""
    rstd = rms_rstd(x_ptr, eps, D, BLOCK_K)
    for t in tl.range(pid, (H + 2 * HKV) * HD // ROWS, nprog):
        r0 = t * ROWS  # a tile lies in one head (HD % ROWS == 0, checked on the host)
        acc = normed_rows_dot(x_ptr, nw_ptr, w_ptr, r0 + tl.arange(0, ROWS), rstd, DT, D, BLOCK_K)
        qkv_store(acc, t, q_ptr, kc_ptr, vc_ptr, cos_ptr, sin_ptr, pos, T_max, DT, H, HKV, HD, ROWS)


@triton.jit
def qkv_store(
    acc, t, q_ptr, kc_ptr, vc_ptr, cos_ptr, sin_ptr, pos, T_max,
    DT: tl.constexpr, H: tl.constexpr, HKV: tl.constexpr, HD: tl.constexpr, ROWS: tl.constexpr,
):  # fmt: skip
    """Tile t of Q|K|V (its rows in one head) from its fp32 products: rounded, RoPE at ``pos`` on Q / K rows (pairs
    (i, i + HD / 2) of the head on adjacent rows), rounded; Q into q, K / V into slot ``pos`` of the caches."""
    HALF: tl.constexpr = ROWS // 2
    r0 = t * ROWS
    a, b = tl.split(tl.reshape(_rnd(acc, DT), (HALF, 2)))
    p = (r0 % HD) // 2 + tl.arange(0, HALF)
    c = tl.load(cos_ptr + p)
    s = tl.load(sin_ptr + p)
    rot = r0 < (H + HKV) * HD  # Q and K rows; V keeps its values
    ra = tl.where(rot, _rnd(a * c - b * s, DT), a)
    rb = tl.where(rot, _rnd(b * c + a * s, DT), b)
    vals = tl.reshape(tl.join(ra, rb), (ROWS,)).to(DT)
    j = r0 % HD + tl.arange(0, ROWS)  # the column within the head
    if r0 < H * HD:
        tl.store(q_ptr + r0 + tl.arange(0, ROWS), vals)
    elif r0 < (H + HKV) * HD:
        tl.store(kc_ptr + ((r0 - H * HD) // HD * T_max + pos) * HD + j, vals)
    else:
        tl.store(vc_ptr + ((r0 - (H + HKV) * HD) // HD * T_max + pos) * HD + j, vals)


@triton.jit
def _attention_stage(
    q_ptr, kc_ptr, vc_ptr, o_ptr, pid, nprog, pos, T_max, scale,
    DT: tl.constexpr, H: tl.constexpr, HKV: tl.constexpr, HD: tl.constexpr, BLOCK_T: tl.constexpr,
    SPLITS: tl.constexpr = 1, B: tl.constexpr = 1,
):  # fmt: skip
    """o[b, h] = softmax(q[b, h] . K[b, g]^T * scale) V[b, g] over positions 0 .. pos, g = h's KV head, for B rows
    (q (B, H, HD), this layer's caches (B, HKV, T_max, HD)); a task a (row, query head), or with SPLITS > 1 a (row,
    head, split): split s takes tiles s, s + SPLITS, ... and stores its partial (acc (HD,), max, sum) at o + task *
    (HD + 2), for ``merged_attention`` to combine (a split with no tile: max -inf, sum 0)."""
    d = tl.arange(0, HD)
    for task in tl.range(pid, B * H * SPLITS, nprog):
        bh = task // SPLITS  # b * H + h
        g = (bh // H) * HKV + (bh % H) // (H // HKV)  # b * HKV + the KV head
        q = tl.load(q_ptr + bh * HD + d).to(tl.float32) * scale
        m = tl.full([1], float("-inf"), tl.float32)
        den = tl.zeros([1], tl.float32)
        acc = tl.zeros([HD], tl.float32)
        for t0 in tl.range((task % SPLITS) * BLOCK_T, pos + 1, SPLITS * BLOCK_T):
            tt = t0 + tl.arange(0, BLOCK_T)
            valid = tt <= pos
            kv = (g * T_max + tt)[:, None] * HD + d[None, :]
            k = tl.load(kc_ptr + kv, mask=valid[:, None], other=0.0).to(tl.float32)
            sc = tl.where(valid, tl.sum(k * q[None, :], axis=1), float("-inf"))  # (BLOCK_T,)
            m_new = tl.maximum(m, tl.max(sc, axis=0))
            alpha = tl.exp(m - m_new)
            pr = tl.exp(sc - m_new)
            v = tl.load(vc_ptr + kv, mask=valid[:, None], other=0.0).to(tl.float32)
            acc = acc * alpha + tl.sum(pr[:, None] * v, axis=0)
            den = den * alpha + tl.sum(pr, axis=0)
            m = m_new
        if SPLITS == 1:
            tl.store(o_ptr + bh * HD + d, (acc / den).to(DT))
        else:
            part = o_ptr + task * (HD + 2)
            tl.store(part + d, acc)
            tl.store(part + HD + tl.arange(0, 1), m)
            tl.store(part + HD + 1 + tl.arange(0, 1), den)


@triton.jit
def merged_attention(
    o_ptr, DT: tl.constexpr, H: tl.constexpr, HD: tl.constexpr, SPLITS: tl.constexpr, AP: tl.constexpr,
):  # fmt: skip
    """Attention's output (AP,) fp32 for one row: ``merged_attention_rows`` of B = 1."""
    return tl.reshape(merged_attention_rows(o_ptr, 1, DT, H, HD, SPLITS, AP, 1), (AP,))


@triton.jit
def merged_attention_rows(
    o_ptr, B, DT: tl.constexpr, H: tl.constexpr, HD: tl.constexpr, SPLITS: tl.constexpr, AP: tl.constexpr,
    BP: tl.constexpr,
):  # fmt: skip
    """Attention's output (BP, AP) fp32, [b, h * HD + d] (zeros past B rows and H * HD), rounded to DT as the
    one-task form stores it: from its SPLITS partials a (row, head), or read as stored where SPLITS is 1."""
    i = tl.arange(0, AP)[None, :]
    b = tl.arange(0, BP)[:, None]
    live = (i < H * HD) & (b < B)
    if SPLITS == 1:
        return tl.load(o_ptr + b * (H * HD) + i, mask=live, other=0.0).to(tl.float32)
    part = o_ptr + ((b * H + i // HD) * SPLITS) * (HD + 2)  # each element's (row, head)'s first partial
    mx = tl.full([BP, AP], float("-inf"), tl.float32)
    for sp in tl.static_range(SPLITS):
        mx = tl.maximum(mx, tl.load(part + sp * (HD + 2) + HD, mask=live, other=0.0))
    num = tl.zeros([BP, AP], tl.float32)
    den = tl.zeros([BP, AP], tl.float32)
    for sp in tl.static_range(SPLITS):
        w = tl.exp(tl.load(part + sp * (HD + 2) + HD, mask=live, other=0.0) - mx)
        num += w * tl.load(part + sp * (HD + 2) + i % HD, mask=live, other=0.0)
        den += w * tl.load(part + sp * (HD + 2) + HD + 1, mask=live, other=1.0)
    return tl.where(live, _rnd(num / den, DT), 0.0)


@triton.jit
def _w_tile(w_ptr, t, n_tiles, ROWS: tl.constexpr, K: tl.constexpr, KP: tl.constexpr):
    """Row tile t of W (N, K) row-major, whole along K (zeros past K, and everywhere where t >= n_tiles)."""
    kk = tl.arange(0, KP)
    rows = t * ROWS + tl.arange(0, ROWS)
    live = rows < n_tiles * ROWS  # the whole tile or none of it
    return tl.load(w_ptr + rows[:, None] * K + kk[None, :], mask=live[:, None] & (kk < K)[None, :], other=0.0)


@triton.jit
def _vec(v_ptr, K: tl.constexpr, KP: tl.constexpr):
    kk = tl.arange(0, KP)
    return tl.load(v_ptr + kk, mask=kk < K, other=0.0).to(tl.float32)


@triton.jit
def _normed(x_ptr, nw_ptr, eps, DT: tl.constexpr, K: tl.constexpr, KP: tl.constexpr):
    """x * rstd rounded, times the norm weight, rounded (``RMSNorm``'s roundings), fp32 (KP,), zeros past K."""
    x = _vec(x_ptr, K, KP)
    rstd = 1.0 / tl.sqrt(tl.sum(x * x, axis=0) / K + eps)
    return _rnd(_rnd(x * rstd, DT) * _vec(nw_ptr, K, KP), DT)


@triton.jit
def _qkv_tile(
    w, t, xn, q_ptr, kc, vc, cos_ptr, sin_ptr, pos, T_max,
    DT: tl.constexpr, H: tl.constexpr, HKV: tl.constexpr, HD: tl.constexpr, ROWS: tl.constexpr,
):  # fmt: skip
    """Tile t of Q|K|V from its weight tile ``w`` (whole along K) and the normed x: ``qkv_store``."""
    qkv_store(tl.sum(w.to(tl.float32) * xn[None, :], axis=1), t, q_ptr, kc, vc, cos_ptr, sin_ptr, pos, T_max, DT, H,
              HKV, HD, ROWS)  # fmt: skip


@triton.jit
def _residual_tile(w, t, v, x_ptr, DT: tl.constexpr, ROWS: tl.constexpr):
    """x[rows of tile t] += w @ v, rounded once."""
    residual_store(tl.sum(w.to(tl.float32) * v[None, :], axis=1), t * ROWS + tl.arange(0, ROWS), x_ptr, DT)


@triton.jit
def _gate_up_tile(w, t, xn, h_ptr, DT: tl.constexpr, ROWS: tl.constexpr):
    """h of tile t's pairs from its weight tile ``w`` (whole along K) and the normed x: ``swiglu_store``."""
    swiglu_store(tl.sum(w.to(tl.float32) * xn[None, :], axis=1), t, h_ptr, DT, ROWS)


@triton.jit
def residual_stage_ahead(
    w_first, w_ptr, v, x_ptr, pid, nprog, n_tiles,
    DT: tl.constexpr, ROWS: tl.constexpr, K: tl.constexpr, KP: tl.constexpr,
):  # fmt: skip
    """``residual_stage`` with this program's first tile already loaded (``w_first``, tile pid); further tiles load
    here."""
    if pid < n_tiles:
        _residual_tile(w_first, pid, v, x_ptr, DT, ROWS)
    for t in tl.range(pid + nprog, n_tiles, nprog):
        _residual_tile(_w_tile(w_ptr, t, n_tiles, ROWS, K, KP), t, v, x_ptr, DT, ROWS)


def launch_stack(kernel, st: dict, prep: dict, H: int, HKV: int, pos: int, eps: float, programs: int, consts: dict,
                 num_warps: int) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """One launch of a layer-stack kernel (``persistent_step_bench._step_stack_kernel`` or
    ``persistent_prefetch._prefetch_stack_kernel``, which share their pointer and integer arguments) on
    ``persistent_step_bench.make_stack``'s and ``prepare``'s tensors, with its own constexprs ``consts``:
    (x after it, flag: 1 where a barrier gave up)."""
    x, w = st["x"], prep["wqkv"]
    L, NQKV, D = w.shape
    HD = NQKV // (H + 2 * HKV)
    F, T_max = st["wd"].shape[2], prep["kc"].shape[-2]
    B = x.numel() // D  # x (D,), or (B, D) for ``persistent_batch``
    out = x.clone()
    q = torch.empty(B * H * HD, device=x.device, dtype=x.dtype)
    # attention's output, or its partials (SPLITS of them a (row, head), HD + 2 values each), fp32
    o = torch.empty(B * H * max(HD, consts.get("SPLITS", 1) * (HD + 2)), device=x.device, dtype=torch.float32)
    h = torch.empty(B * F, device=x.device, dtype=x.dtype)
    counter = torch.zeros(1, device=x.device, dtype=torch.int32)
    flag = torch.zeros(1, device=x.device, dtype=torch.int32)
    kernel[(programs,)](
        out, st["n1"], w, prep["kc"], prep["vc"], st["wo"], st["n2"], st["wgu"], st["wd"], q, o, h, st["cos"],
        st["sin"], counter, flag, L, pos, T_max, eps, 1.0 / math.sqrt(HD),
        D=D, H=H, HKV=HKV, HD=HD, F=F, num_warps=num_warps, **consts,
    )  # fmt: skip
    return out, flag


def teacher_shape() -> dict:
    """The teacher's shape from ``configs/students/teacher.yaml`` (the one place it is written): layers L, d_model D,
    query / KV heads H / HKV, head_dim HD, d_ff F, the norm's eps and RoPE's theta."""
    import os

    import archzoo

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cfg = archzoo.load_config(os.path.join(root, "configs", "students", "teacher.yaml"))
    m = cfg.mixer
    return dict(L=cfg.n_layers, D=cfg.d_model, H=m.n_heads, HKV=m.n_kv_heads, HD=m.head_dim, F=cfg.ffn.d_ff,
                eps=cfg.norm_eps, theta=m.rope_theta)  # fmt: skip
