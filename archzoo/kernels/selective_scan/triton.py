"""Triton selective scan (Mamba's S6, Gu & Dao 2023, arXiv:2312.00752): forward, backward, decode step.

Design (docs/kernels.md has the long form):
- One program per (batch, block of BLOCK_D channels) walks the sequence in chunks of BLOCK_L
  steps. A chunk loads (BLOCK_D, BLOCK_L) tiles of u / delta (/ z) once, coalesced along time,
  and then loops over the n state dimensions: for state i it discretises on the fly
  (dt = softplus(delta + bias), a = exp(dt A_i), b = dt u B_i), runs h_t = a_t h_{t-1} + b_t over
  the chunk as an associative scan along time (each thread scans its own run of consecutive steps,
  then the runs are joined across lanes), adds C_i h to y and keeps the last column as the carry.
  The D skip and the SiLU(z) gate are fused at the end of the chunk.
- The forward stores only the state at the start of each chunk (b, n_chunks, d, n) fp32 (and,
  when z is given, the pre-gate y for dz). The backward walks the chunks in reverse, recomputes
  each state's h from that checkpoint, and runs the adjoint g_t = dy_t C_t + a_{t+1} g_{t+1} as a
  reverse associative scan (a_{t+1} comes from a second, shifted load of delta).
- Per-channel parameter gradients (A, D, delta_bias, and B / C when they are (d, n)) are summed in
  registers and added once per program with fp32 atomics (the batch's programs share them);
  gradients of B / C of shape (b, [g,] n, l) are summed over the program's channels and added with
  fp32 atomics. Sums by atomics are not bitwise reproducible run to run (as in mamba_ssm's CUDA
  backward); the host path (see _Plan) is short because nothing is left to reduce after the kernel.
Inputs may be fp32, bf16 or fp16, and the state and all arithmetic are fp32; with an fp64 input
everything runs in fp64 instead (ACC), so float64 models keep float64 accuracy.

Files: ``_fwd.py`` (forward kernel and the per-state helpers), ``_bwd.py`` (backward kernel),
``_update.py`` (decode step kernel), ``_host.py`` (block and stride arithmetic); this module holds the
configuration (``CUDA_CONFIG``, ``CONFIG_OVERRIDE``, ``scan_config``), the host path (sites, ``_Plan``,
the autograd Function) and the public functions ``selective_scan_fn`` and ``selective_state_update``.
"""

from __future__ import annotations

import torch

from .. import _pdl
from .._dispatch import once
from .._launch import Site, launch, launch_site
from .._pdl import pdl_enabled
from .._sizes import cdiv as _cdiv
from .._sizes import next_pow2 as _next_pow2
from ._bwd import _scan_bwd_kernel
from ._checks import check_scan, check_update, compute_dtype
from ._fwd import _scan_fwd_kernel
from ._host import (
    _bc_strides,
    _bc_view,
    _block_d,
    _contig_last,
    _contig_strides,
    _groups,
    _sig,
    _tl_dtype,
)
from ._update import _state_update_kernel

# Tuning hook (tools/tune_ssm_kernels.py): {"fwd" | "bwd": {"BLOCK_D", "BLOCK_L", "num_warps",
# optional "PREFETCH" (bool), "RELOAD" (bool, backward only)}}.
CONFIG_OVERRIDE: dict[str, dict] = {}
# The last compiled kernel launched for "fwd" / "bwd" (its n_regs / n_spills are reported by the tuner).
LAST_COMPILED: dict[str, object] = {}
# Defaults on CUDA, from tools/tune_ssm_kernels.py on an H100 (b=4, d=2048, n=16, bf16; swept at
# l=4096, the best re-timed at 1024 and 16384, then side by side in archzoo bench kernels):
# one warp per program, so the scans and row reductions stay inside a warp, and many programs per SM.
# The backward runs one channel per program and two states per iteration (PAIR: two independent
# scans give the scheduler work while the other waits on its shuffles), 128 regs and no spills;
# at l=1k..16k it beat the best one-state configurations by 3-10% end to end. MIRROR (the adjoint as a
# forward scan over reversed operands) cut the backward kernel's shuffles per state pair from 242 to 102
# (tools/sm90_compile.py) and its time at l=4k from about 2.5 to 1.91 ms (0.56 / 6.96 ms at 1k /
# 16k); with MIRROR on, this configuration was still the best of the sweep (1-2 channels, 64-256 steps,
# 1-2 warps, PAIR, RELOAD) at all three lengths. The forward keeps its 512-step chunks when it stores
# checkpoints for a backward with shorter ones (0.71 ms at 4k, where 128-step chunks took 0.8-0.9).
CUDA_CONFIG = {
    "fwd": dict(BLOCK_D=1, BLOCK_L=512, num_warps=1, PREFETCH=True),
    "bwd": dict(BLOCK_D=1, BLOCK_L=128, num_warps=1, PREFETCH=False, RELOAD=False, PAIR=True, MIRROR=True),
}


_FLAGS = ("PREFETCH", "RELOAD", "PAIR", "MIRROR")  # code-path switches of CUDA_CONFIG (the rest are sizes)


_CONFIGS: dict[tuple, dict] = {}  # scan_config's answers (host time at short l); keyed on the override too


def _override_key() -> tuple:
    return tuple((k, tuple(sorted(v.items()))) for k, v in CONFIG_OVERRIDE.items())


def scan_config(d: int, n: int, L: int, groups: int, backward: bool, device: torch.device) -> dict:
    """Block sizes and warps: small blocks under the interpreter (tests), tuned ones on CUDA.

    The backward must use the forward's BLOCK_L when it reads the forward's checkpoints; the
    callers take care of that. Answers are memoised per shape and CONFIG_OVERRIDE (not CUDA_CONFIG:
    clear ``_CONFIGS`` and ``_PLANS`` after editing it at run time).
    """
    key = (d, n, L, groups, backward, device.type == "cuda", _override_key() if CONFIG_OVERRIDE else ())
    cfg = _CONFIGS.get(key)
    if cfg is None:
        if len(_CONFIGS) > 4096:
            _CONFIGS.clear()
        cfg = _CONFIGS[key] = _scan_config(d, n, L, groups, backward, device)
    return cfg


def _scan_config(d: int, n: int, L: int, groups: int, backward: bool, device: torch.device) -> dict:
    block_n = _next_pow2(n)
    key = "bwd" if backward else "fwd"
    if device.type != "cuda":  # the CUDA code path (its flags, an override's too) on small blocks: tests run it
        over = CONFIG_OVERRIDE.get(key, {})
        flags = {k: v for k, v in {**CUDA_CONFIG[key], **over}.items() if k in _FLAGS}
        # the forward's chunk twice the backward's, as on CUDA: checkpoints inside a chunk are exercised
        block_l = over.get("BLOCK_L", 8 if backward else 16)
        return dict(BLOCK_D=_block_d(d, groups, 4), BLOCK_N=block_n, BLOCK_L=block_l, num_warps=1, **flags)
    cfg = {**CUDA_CONFIG[key], **CONFIG_OVERRIDE.get(key, {})}
    # short sequences: a smaller chunk wastes less work on padding
    block_l = min(cfg["BLOCK_L"], max(16, _next_pow2(L)))
    return dict(cfg, BLOCK_D=_block_d(d, groups, cfg["BLOCK_D"]), BLOCK_N=block_n, BLOCK_L=block_l)


def _states_per_iteration(cfg: dict, n: int) -> int:
    """2 when the config asks for PAIR and n is even; an odd n runs one state per iteration, logged once."""
    if not cfg.get("PAIR", False):
        return 1
    if n % 2:
        once("scan_pair_odd_n", f"selective scan: PAIR needs an even d_state, got n={n}; one state per iteration")
        return 1
    return 2


def _prefetch(cfg: dict, states: int) -> bool:
    """PREFETCH applies to one state per iteration; a config asking for it with PAIR runs without, logged once."""
    if not cfg.get("PREFETCH", True):
        return False
    if states == 2:
        if "PREFETCH" in cfg:
            once("scan_prefetch_pair", "selective scan: PREFETCH does not combine with PAIR; running without")
        return False
    return True


# Host path. At l ~ 1k the scan's forward+backward is bound by the host (bench_ssm_kernels.py's host
# column), so what does not change between calls is worked out once: a forward or backward *site*
# holds a launch's grid, integer and constexpr arguments (a _launch.Site, which keeps the compiled
# kernel), and the shapes of the buffers to allocate; a _Plan holds the validated signature's sites.
# A call then allocates, launches and returns views.


class _FwdSite:
    __slots__ = ("site", "out_shape", "store_y", "hlast_shape", "ckpt_shape", "cdt")


class _BwdSite:
    # grads: (count, b, d, l) for du / ddelta (/ dz) in one buffer, or None (separate, mixed dtypes);
    # acc_sizes: the zeroed fp32 (fp64) buffer's parts in order dA, dB, dC, dD, dbias (0 when absent);
    # finish: per part, (shape, dtype to convert to or None); var_tail: convert dB / dC (b, [g,] n, l) at once
    __slots__ = ("site", "grads", "acc", "acc_sizes", "finish", "var_tail", "dh0_shape")


def _forward_site(u, delta, A, B, C, D, z, delta_bias, h0, softplus, store_ckpt, store_last) -> _FwdSite:
    b, d, L = u.shape
    n = A.shape[1]
    groups = _groups(B, C, 4)
    cfg = scan_config(d, n, L, groups, False, u.device)
    # The backward re-reads the checkpoints at its own (shorter) chunk length; the forward keeps its chunks
    # and stores the state every ckpt_l steps inside them (both are powers of two).
    ckpt_l = scan_config(d, n, L, groups, True, u.device)["BLOCK_L"] if store_ckpt else cfg["BLOCK_L"]
    if cfg["BLOCK_L"] < ckpt_l:
        once("scan_fwd_block_l", f"selective scan: forward BLOCK_L={cfg['BLOCK_L']} is below the backward's "
             f"{ckpt_l}; the forward that stores checkpoints runs {ckpt_l}-step chunks")  # fmt: skip
    cfg = dict(cfg, BLOCK_L=max(cfg["BLOCK_L"], ckpt_l))
    n_chunks = _cdiv(L, cfg["BLOCK_L"])
    n_ckpt = _cdiv(L, ckpt_l)
    states = _states_per_iteration(cfg, n)
    fs = _FwdSite()
    fs.out_shape = (b, d, L)
    fs.store_y = store_ckpt and z is not None
    fs.cdt = compute_dtype(u, delta, A, B, C, D, z, delta_bias, h0)
    fs.hlast_shape = (b, d, n) if store_last else None
    fs.ckpt_shape = (b, n_ckpt, d, n) if store_ckpt else None
    var_b, sB = _bc_view(B)
    var_c, sC = _bc_view(C)
    zz = z if z is not None else u
    ints = (
        d, L, n, n_chunks, n_ckpt, d // groups,
        *u.stride(), *delta.stride(), *zz.stride(), *_contig_strides(fs.out_shape), *A.stride(), *sB, *sC,
    )  # fmt: skip
    consts = (
        var_b, var_c, D is not None, z is not None, delta_bias is not None, softplus, h0 is not None,
        store_ckpt, fs.store_y, store_last, _prefetch(cfg, states), states, _tl_dtype(fs.cdt),
        cfg["BLOCK_D"], cfg["BLOCK_N"], cfg["BLOCK_L"], ckpt_l,
    )  # fmt: skip
    grid = (b, _cdiv(d, cfg["BLOCK_D"]))
    # the first 9 pointers are the inputs; the rest are fresh allocations
    fs.site = Site(_scan_fwd_kernel, grid, ints, consts, cfg["num_warps"], u.get_device(), checked=9)
    return fs


def _run_forward(fs: _FwdSite, u, delta, A, B, C, D, z, delta_bias, h0):
    """-> out, last state or None, checkpoints or None, pre-gate y or None (saved for dz)."""
    dev = u.device
    out = torch.empty(fs.out_shape, device=dev, dtype=u.dtype)
    y = torch.empty(fs.out_shape, device=dev, dtype=u.dtype) if fs.store_y else None
    hlast = torch.empty(fs.hlast_shape, device=dev, dtype=fs.cdt) if fs.hlast_shape else None
    ckpt = torch.empty(fs.ckpt_shape, device=dev, dtype=fs.cdt) if fs.ckpt_shape else None
    dummy = out
    ptrs = (
        u, delta, A, B, C,
        dummy if D is None else D, u if z is None else z, dummy if delta_bias is None else delta_bias,
        dummy if h0 is None else h0, out, dummy if y is None else y,
        dummy if hlast is None else hlast, dummy if ckpt is None else ckpt,
    )  # fmt: skip
    LAST_COMPILED["fwd"] = launch_site(fs.site, ptrs, launch)
    return out, hlast, ckpt, y


def _scan_forward(u, delta, A, B, C, D, z, delta_bias, h0, softplus, store_ckpt, store_last):
    """One forward launch, its site built for this call (the tuner's entry; selective_scan_fn plans)."""
    fs = _forward_site(u, delta, A, B, C, D, z, delta_bias, h0, softplus, store_ckpt, store_last)
    return _run_forward(fs, u, delta, A, B, C, D, z, delta_bias, h0)


def _backward_site(u, delta, A, B, C, D, z, delta_bias, ckpt, y, dout, dlast, softplus, need_dh0) -> _BwdSite:
    b, d, L = u.shape
    n = A.shape[1]
    groups = _groups(B, C, 4)
    cfg = scan_config(d, n, L, groups, True, u.device)
    n_chunks = ckpt.shape[1]
    if n_chunks != _cdiv(L, cfg["BLOCK_L"]):
        raise RuntimeError("selective scan: the checkpoints were written with another chunk length")
    states = _states_per_iteration(cfg, n)
    acc = compute_dtype(u, delta, A, B, C, D, z, delta_bias, dout)
    bs = _BwdSite()
    bs.acc = acc
    # du, ddelta (and dz) share one allocation when their dtypes agree.
    count = 3 if z is not None else 2
    same = delta.dtype == u.dtype and (z is None or z.dtype == u.dtype)
    bs.grads = (count, b, d, L) if same else None
    # The per-channel gradients (dA, dD, dbias, a (d, n) dB / dC) are atomic targets summed over the
    # batch, and so is a variable dB / dC (over channels): all in one zeroed buffer, one zero fill, in the
    # order dA, dD, dbias, dB, dC (a part is empty when its input is None). Parts whose offsets are not
    # 16-byte aligned (odd shapes) are correct but launch through launch()'s key every call.
    var_b, sB = _bc_view(B)
    var_c, sC = _bc_view(C)
    bs.acc_sizes = (
        d * n, d if D is not None else 0, d if delta_bias is not None else 0,
        B.numel() if var_b else d * n, C.numel() if var_c else d * n,
    )  # fmt: skip
    conv = lambda t: None if t.dtype == acc else t.dtype  # noqa: E731
    # a variable dB and dC converted to one dtype are converted at once: the buffer's tail
    bs.var_tail = conv(B) if var_b and var_c and B.dtype == C.dtype else None
    bs.finish = (  # (shape to view as, or None: already (d,); dtype to convert to, or None)
        ((d, n), conv(A)),
        (None, conv(D)) if D is not None else None,
        (None, conv(delta_bias)) if delta_bias is not None else None,
        (B.shape, None if bs.var_tail else conv(B)),
        (C.shape, None if bs.var_tail else conv(C)),
    )  # fmt: skip
    bs.dh0_shape = (b, d, n) if need_dh0 else None
    g_strides = _contig_strides((b, d, L))
    sdB = _bc_strides(B.dim(), _contig_strides(B.shape))[1] if var_b else (0, 0, 0, 0)
    sdC = _bc_strides(C.dim(), _contig_strides(C.shape))[1] if var_c else (0, 0, 0, 0)
    zz = z if z is not None else u
    yy = y if y is not None else u
    ints = (
        d, L, n, n_chunks, d // groups,
        *u.stride(), *delta.stride(), *zz.stride(), *yy.stride(), *dout.stride(), *g_strides,
        *A.stride(), *sB, *sC, *sdB, *sdC,
    )  # fmt: skip
    consts = (
        var_b, var_c, D is not None, z is not None, delta_bias is not None, softplus, dlast is not None, need_dh0,
        _prefetch(cfg, states), cfg.get("RELOAD", False), states, cfg.get("MIRROR", False),
        _tl_dtype(acc), cfg["BLOCK_D"], cfg["BLOCK_N"], cfg["BLOCK_L"],
    )  # fmt: skip
    grid = (b, _cdiv(d, cfg["BLOCK_D"]))
    # the first 12 pointers are inputs (or the forward's buffers); the rest are fresh allocations or views
    # of them, whose offsets are checked here
    offsets = [i * b * d * L * u.element_size() for i in range(count)] if same else [0]
    offsets += [sum(bs.acc_sizes[:i]) * acc.itemsize for i in range(5)]
    checked = 12 if all(o % 16 == 0 for o in offsets) else None
    bs.site = Site(_scan_bwd_kernel, grid, ints, consts, cfg["num_warps"], u.get_device(), checked=checked)
    return bs


def _run_backward(bs: _BwdSite, u, delta, A, B, C, D, z, delta_bias, ckpt, y, dout, dlast):
    """-> du, ddelta, dA, dB, dC, dD, dz, dbias, dh0 (None for an absent input)."""
    dev = u.device
    if bs.grads is not None:
        g = torch.empty(bs.grads, device=dev, dtype=u.dtype).unbind(0)
        du, ddelta, dz = g if z is not None else (*g, None)
    else:
        du = torch.empty(u.shape, device=dev, dtype=u.dtype)
        ddelta = torch.empty(u.shape, device=dev, dtype=delta.dtype)
        dz = torch.empty(u.shape, device=dev, dtype=z.dtype) if z is not None else None
    buf = torch.zeros(sum(bs.acc_sizes), device=dev, dtype=bs.acc)
    parts = buf.split_with_sizes(bs.acc_sizes)
    dh0 = torch.empty(bs.dh0_shape, device=dev, dtype=bs.acc) if bs.dh0_shape else None
    dummy = buf
    ptrs = (
        u, delta, A, B, C, dummy if D is None else D, u if z is None else z,
        dummy if delta_bias is None else delta_bias, ckpt, u if y is None else y, dout,
        dummy if dlast is None else dlast, du, ddelta, dummy if dz is None else dz,
        parts[0], parts[3], parts[4], parts[1], parts[2], dummy if dh0 is None else dh0,
    )  # fmt: skip
    LAST_COMPILED["bwd"] = launch_site(bs.site, ptrs, launch)
    if bs.var_tail is not None:
        nb, nc = bs.acc_sizes[3:]
        parts = (*parts[:3], *buf[buf.numel() - nb - nc :].to(bs.var_tail).split_with_sizes((nb, nc)))
    dA, dD, dbias, dB, dC = (_finish(p, f) for p, f in zip(parts, bs.finish, strict=True))
    return du, ddelta, dA, dB, dC, dD, dz, dbias, dh0


def _finish(part: torch.Tensor, how: tuple | None) -> torch.Tensor | None:
    if how is None:
        return None
    shape, dtype = how
    if shape is not None:
        part = part.view(shape)
    return part if dtype is None else part.to(dtype)


def _scan_backward(u, delta, A, B, C, D, z, delta_bias, ckpt, y, dout, dlast, softplus, need_dh0):
    """One backward launch, its site built for this call (the tuner's entry; selective_scan_fn plans)."""
    bs = _backward_site(u, delta, A, B, C, D, z, delta_bias, ckpt, y, dout, dlast, softplus, need_dh0)
    return _run_backward(bs, u, delta, A, B, C, D, z, delta_bias, ckpt, y, dout, dlast)


class _Plan:
    """A validated selective_scan_fn signature (the inputs' shapes, strides, dtypes and devices, the flags,
    CONFIG_OVERRIDE) and its sites: forward by whether checkpoints are stored, backward by dout's strides
    and whether dlast / dh0 take part. Built on the first call with the signature; kept in _PLANS."""

    __slots__ = ("cdt", "softplus", "return_last", "copy", "h0_dtype", "fwd", "bwd")


_PLANS: dict[tuple, _Plan] = {}
_PLANS_MAX = 4096  # distinct signatures kept (inference sees many lengths); cleared when full


def _plan(key: tuple, u, delta, A, B, C, D, z, delta_bias, initial_state, softplus, return_last) -> _Plan:
    check_scan(u, delta, A, B, C, D, z, delta_bias, initial_state)
    p = _Plan()
    p.cdt = compute_dtype(u, delta, A, B, C, D, z, delta_bias, initial_state)
    p.softplus, p.return_last = softplus, return_last
    # time not the unit stride: u / delta / z are copied (coalesced tile loads), and so is a variable B / C,
    # whose state rows would otherwise load one sector per step (b * n * l elements, d / n times fewer than u)
    copied = [k for k, t in (("u", u), ("delta", delta), ("z", z)) if t is not None and t.stride(-1) != 1]
    copied += [k for k, t in (("B", B), ("C", C)) if t.dim() >= 3 and t.stride(-1) != 1]
    p.copy = bool(copied)
    if copied:  # said once per layout: an extra pass over each on every call
        msg = (
            f"selective scan: {', '.join(copied)} have time (the last axis) at a stride other than 1 and are "
            "copied on every call; pass them with time contiguous to skip the copy"
        )
        once(f"scan_copy:{copied}", msg)
    p.h0_dtype = initial_state.dtype if initial_state is not None else None
    p.fwd, p.bwd = [None, None], {}
    if len(_PLANS) >= _PLANS_MAX:
        _PLANS.clear()
    _PLANS[key] = p
    return p


class _SelectiveScanFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, h0, plan):
        if plan.copy:
            u, delta, z = _contig_last(u), _contig_last(delta), _contig_last(z)
            B = _contig_last(B) if B.dim() >= 3 else B
            C = _contig_last(C) if C.dim() >= 3 else C
        need_grad = any(ctx.needs_input_grad[:9])
        fs = plan.fwd[need_grad]
        if fs is None:
            fs = plan.fwd[need_grad] = _forward_site(
                u, delta, A, B, C, D, z, delta_bias, h0, plan.softplus, need_grad, plan.return_last
            )
        out, hlast, ckpt, y = _run_forward(fs, u, delta, A, B, C, D, z, delta_bias, h0)
        if need_grad:
            ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, ckpt, y)
        ctx.plan = plan
        return (out, hlast) if plan.return_last else out

    @staticmethod
    def backward(ctx, dout, *rest):
        u, delta, A, B, C, D, z, delta_bias, ckpt, y = ctx.saved_tensors
        plan = ctx.plan
        dlast = rest[0] if plan.return_last else None
        if dout.stride(-1) != 1:
            dout = dout.contiguous()
        if dlast is not None:
            dlast = dlast.to(ckpt.dtype).contiguous()
        need_dh0 = plan.h0_dtype is not None and ctx.needs_input_grad[8]
        key = (dout.stride(), dlast is not None, need_dh0)
        bs = plan.bwd.get(key)
        if bs is None:
            bs = plan.bwd[key] = _backward_site(
                u, delta, A, B, C, D, z, delta_bias, ckpt, y, dout, dlast, plan.softplus, need_dh0
            )
        du, ddelta, dA, dB, dC, dD, dz, dbias, dh0 = _run_backward(
            bs, u, delta, A, B, C, D, z, delta_bias, ckpt, y, dout, dlast
        )
        if dh0 is not None:
            dh0 = dh0.to(plan.h0_dtype)
        return du, ddelta, dA, dB, dC, dD, dz, dbias, dh0, None


def selective_scan_fn(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
    initial_state: torch.Tensor | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Selective scan in Triton; same signature and semantics as ``naive_selective_scan_fn``.

    u, delta, z (b, d, l); A (d, n); B, C (d, n), (b, n, l) or (b, g, n, l); D, delta_bias (d,);
    initial_state (b, d, n). Returns out (b, d, l) in u's dtype (and the final state (b, d, n) in fp32, or
    fp64 when an input is fp64).
    """
    over = _override_key() if CONFIG_OVERRIDE else ()
    key = (
        _sig(u), _sig(delta), _sig(A), _sig(B), _sig(C), _sig(D), _sig(z), _sig(delta_bias), _sig(initial_state),
        bool(delta_softplus), bool(return_last_state), over,
    )  # fmt: skip
    plan = _PLANS.get(key)
    if plan is None:  # validates: a signature is planned only once it passed
        plan = _plan(key, u, delta, A, B, C, D, z, delta_bias, initial_state, bool(delta_softplus),
                     bool(return_last_state))  # fmt: skip
    h0 = initial_state.to(plan.cdt).contiguous() if initial_state is not None else None
    if u.shape[-1] == 0:
        out = u.new_empty(u.shape)
        if not return_last_state:
            return out
        return out, h0.clone() if h0 is not None else u.new_zeros((*u.shape[:2], A.shape[1]), dtype=plan.cdt)
    return _SelectiveScanFn.apply(u, delta, A, B, C, D, z, delta_bias, h0, plan)


def selective_state_update(
    state: torch.Tensor,
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    dt_softplus: bool = False,
) -> torch.Tensor:
    """One decode step in Triton; ``state`` (b, d, n) is updated IN PLACE. Same semantics as the naive one."""
    b, d, n = check_update(state, x, dt, A, B, C, D, z, dt_bias)
    groups = _groups(B, C, 3)
    block_n = _next_pow2(n)
    cuda = state.is_cuda
    block_d = _block_d(d, groups, max(1, 2048 // block_n) if cuda else 4)
    out = torch.empty((b, d), device=x.device, dtype=x.dtype)
    sB = (B.stride(0), 0, B.stride(1)) if B.dim() == 2 else B.stride()
    sC = (C.stride(0), 0, C.stride(1)) if C.dim() == 2 else C.stride()
    zz = z if z is not None else x
    dummy = x
    grid = (b, _cdiv(d, block_d))
    ptrs = (state, x, dt, A, B, C, D if D is not None else dummy, zz, dt_bias if dt_bias is not None else dummy, out)
    ints = (
        d, n, d // groups,
        *state.stride(), *x.stride(), *dt.stride(), *zz.stride(), *out.stride(), *A.stride(), *sB, *sC,
    )  # fmt: skip
    pdl = _pdl.UPDATE_KERNELS and pdl_enabled(state.device)  # a decode step's chain (archzoo/kernels/_pdl.py)
    consts = (
        D is not None, z is not None, dt_bias is not None, dt_softplus,
        _tl_dtype(compute_dtype(state, x, dt, A, B, C, D, z, dt_bias)), block_d, block_n, pdl,
    )  # fmt: skip
    launch(_state_update_kernel, grid, ptrs, ints, consts, 4 if cuda else 1, state.get_device(), pdl)
    return out
