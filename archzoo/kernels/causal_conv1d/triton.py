"""Triton depthwise causal conv1d (H3 / Mamba short conv; arXiv:2212.14052, arXiv:2312.00752): forward,
backward and decode update, for widths 2..8.

Both sequence kernels use one grid, (batch, BLOCK_D channels, BLOCK_L steps), and one data layout:
a program views its tile as (BLOCK_D, G, V) with V = 8 consecutive steps per *group*. A group is
loaded and stored whole, as 16-byte aligned vectors (one in bf16 / fp16, two in fp32, four in fp64;
the vector index is the outermost axis of the loaded tile, which keeps a group inside one thread),
and split into its 8 steps in registers (``tl.split``; nothing moves through shared memory). Since
W - 1 <= 7 < V, every tap of a step lies in its own group or the one before (forward) or, for the
backward's adjoint taps, the one after. The neighbour groups are loaded again as whole aligned
groups and hit L1 / L2, so DRAM traffic is one read of each input and one write of each output.
Why: the kernels this replaces loaded each tap as a tile shifted by 1..W-1 steps, which is
misaligned and compiled to 2-byte scalar loads (3 of 4 taps at W = 4); their backward also
round-tripped dpre through a per-program fp32 scratch tile with two barriers and spilled registers.

- Forward: out[t] = act(bias + sum_k w[k] x[t - (W-1) + k]); x at t < 0 comes from
  ``initial_states`` (read only by the first tile, behind a runtime branch).
- Backward: dpre[t] = dout[t] * act'(pre[t]) is recomputed from x (nothing but the inputs is saved)
  at the group's steps and the first W-1 steps of the next group, then
  dx[p] = sum_k w[k] dpre[p + (W-1) - k]. dweight / dbias are reduced over the tile in registers
  and added per program to one zeroed fp32 buffer by relaxed atomics (not bitwise reproducible;
  until the host path was planned they were rows of partials the host summed, one more op on a
  path that is host-bound at short l). When ``initial_states`` needs a gradient the
  tiles start V steps early, so the first tile also covers t in [-(W-1), 0) and writes those dx to
  dinitial_states.
- Update: one program per (batch, BLOCK_D channels) reads the conv state (state_len >= W-1) and
  the new inputs, writes the outputs, then shifts the state in place.

Host path (it dominates at short l): validation and launch arguments are planned once per signature;
the forward is then one allocation and one launch, and skips autograd when no input needs a gradient;
the backward is two allocations (one zeroed, the weight / bias sums, which the programs add to by
atomics: not bitwise reproducible run to run) and one launch; the update (decode) is validation by a few
int compares, one allocation and one launch.
Launches go through the shared cache of compiled kernels (``archzoo.kernels._launch.launch``), which
skips Triton's per-call argument specialisation. Block sizes and warps come from ``CUDA_CONFIG``
(tuned with ``tools/tune_causal_conv1d.py``), overridable through ``CONFIG_OVERRIDE``; ``LAST_COMPILED``
keeps the last compiled kernel per key.

Files: ``_layout.py`` (the group layout both sequence kernels share), ``_fwd.py`` (forward kernel),
``_bwd.py`` (backward kernel), ``_update.py`` (decode kernel); this module holds the configuration
(``CUDA_CONFIG``, ``CONFIG_OVERRIDE``, ``conv_config``), the host path (sites, plans, the autograd
Function) and the public functions ``causal_conv1d_fn`` and ``causal_conv1d_update``.
"""

from __future__ import annotations

import json
import os

import torch
import triton.language as tl

from .. import _pdl
from .._launch import Site, launch, launch_site
from .._pdl import pdl_enabled
from .._sizes import cdiv as _cdiv
from .._sizes import next_pow2 as _next_pow2
from ._bwd import _conv_bwd_kernel
from ._checks import check_fn, check_update
from ._fwd import _conv_fwd_kernel
from ._update import _conv_update_kernel

_V = 8  # V on the host
# Tuning hook (tools/tune_causal_conv1d.py): {"fwd" | "bwd": {"BLOCK_D", "BLOCK_L", "num_warps"}, and "TILES",
# "OWN", "STAGES", "PREFETCH" for "bwd"}; applies on CUDA and under the interpreter alike. It starts from the
# environment variable CONFIG_ENV (the same JSON), so a process started with a tuned configuration runs it: plans are
# made once per signature, so an override set after a signature's first call does not reach that signature.
CONFIG_ENV = "ARCHZOO_CAUSAL_CONV1D_CONFIG"
_CONFIG_KEYS = {"BLOCK_D", "BLOCK_L", "num_warps", "TILES", "OWN", "STAGES", "PREFETCH"}
_BWD_ONLY = ("TILES", "OWN", "STAGES", "PREFETCH")  # keys only the backward takes
_MIN = {"OWN": 0, "STAGES": 0, "PREFETCH": 0}  # the least value a key takes (1 for the others)
_FLAGS = ("OWN", "PREFETCH")  # keys that are 0 or 1


def config_from_env(text: str | None) -> dict[str, dict]:
    """CONFIG_ENV's value -> the override it asks for ({} when unset or empty); ValueError naming what is wrong."""
    if not text or not text.strip():
        return {}
    try:
        cfg = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f'{CONFIG_ENV} must be a JSON object like \'{{"bwd": {{"TILES": 4}}}}\'; {e}') from None
    if not isinstance(cfg, dict) or not set(cfg) <= {"fwd", "bwd"}:
        raise ValueError(f"{CONFIG_ENV} must be a JSON object with the keys 'fwd' and / or 'bwd'; got {text!r}")
    for key, sub in cfg.items():
        if not isinstance(sub, dict) or not set(sub) <= _CONFIG_KEYS:
            raise ValueError(f"{CONFIG_ENV}[{key!r}] must be an object of {sorted(_CONFIG_KEYS)}; got {sub!r}")
        bad = {k: v for k, v in sub.items() if isinstance(v, bool) or not isinstance(v, int) or v < _MIN.get(k, 1)}
        if bad:
            raise ValueError(
                f"{CONFIG_ENV}[{key!r}]: values must be positive integers (OWN, PREFETCH: 0 or 1, STAGES: 0 or more); "
                f"got {bad}"
            )
        for flag in _FLAGS:
            if flag in sub and sub[flag] > 1:
                raise ValueError(f"{CONFIG_ENV}[{key!r}][{flag!r}] must be 0 or 1; got {sub!r}")
        if key == "fwd" and set(sub) & set(_BWD_ONLY):
            raise ValueError(f"{CONFIG_ENV}['fwd']: {sorted(set(sub) & set(_BWD_ONLY))} only 'bwd' takes; got {sub!r}")
    return cfg


CONFIG_OVERRIDE: dict[str, dict] = config_from_env(os.environ.get(CONFIG_ENV))
# The last compiled kernel launched for "fwd" / "bwd" / "update" (the tuner reports its n_regs / n_spills).
LAST_COMPILED: dict[str, object] = {}
# Defaults on CUDA. BLOCK_L: a power of two >= V; each thread holds BLOCK_D * BLOCK_L / (V * 32 * num_warps)
# groups (at least 1, or the tile repeats across threads).
# Tuned on an H100 (tools/tune_causal_conv1d.py --lengths 1024,4096,16384; b=4, d=2048, width 4,
# bf16): one channel per program and long tiles; the winners at l=4k / 16k (l=1k is host-bound). The
# backward was swept again once its sums became atomics (tools/device/kernels10.sh, tiles up to 8192
# steps, docs/results/kernels/tune_conv_bwd_h100_atomics.json): two groups per thread (72 registers) won at 4k and
# 16k, 1024 steps on 2 warps (0.342 ms at 16k, 2.36 TB/s) level with 2048 on 4 warps (0.341) and ahead of
# the former 1024 on 4 warps (0.367); longer tiles, with four groups per thread (160+ registers), were slower.
# (Since the eighteenth session the backward walks whole rows, 1,024 steps on 4 warps: TILES below.)
# The forward was swept again in the seventeenth session (docs/results/kernels/conv_tune_h100.json, one process):
# 4,096 steps on 4 warps (four groups a thread) took 0.1924 / 0.0513 ms at 16k / 4k against 0.1962 / 0.0527 for
# 2,048 on 4 warps; 4,096 on 8 warps (0.1916 / 0.0510) is level there but leaves half its threads idle at 1k (the
# tile shrinks to 1,024 steps: 0.63x causal-conv1d, conv_h100_best.log), where 4 warps run as before.
CUDA_CONFIG = {
    "fwd": dict(BLOCK_D=1, BLOCK_L=4096, num_warps=4),
    "bwd": dict(BLOCK_D=1, BLOCK_L=1024, num_warps=4, TILES=16, PREFETCH=1),
}
# Tried and taken out (seventeenth session): the neighbour groups gathered from the tile through shared memory
# (tl.gather) instead of loaded again; it lost everywhere on an H100 (16k forward + backward 0.834 against 0.549 ms,
# docs/results/kernels/conv_h100_halo1.log, conv_tune_h100.log; docs/kernels.md), so the re-reads, which hit L1 / L2,
# are not what holds the backward under the copy rate.
# TILES (backward, 1 when absent): consecutive tiles a program walks, summing dweight / dbias in registers across
# them, so a row's programs do TILES times fewer cross-thread reductions and atomic adds (causal-conv1d's backward
# walks a whole row in one block). Written in the seventeenth session for the 16k forward + backward cell (0.88x
# causal-conv1d on an H100). Swept in the eighteenth (docs/results/kernels/conv_tune_h100_tiles.log, H100, one
# process): one program a row won at both lengths, 1,024 steps on 4 warps with 16 tiles at 16k (0.297 ms against
# 0.354 for the former 1,024 on 2 warps, one tile) and with 4 at 4k (0.0888 against 0.0970); a program walking
# more tiles than its row has pays for the masked ones (16 at 4k: 0.233 ms), so TILES is a cap: ``_backward_site``
# shares a row's tiles evenly among the fewest programs it allows (one compiled variant per tiles-a-program value).
# OWN (backward, 0 when absent): where TILES covers a row (one program a row), one program walks its channels' rows
# in every batch too and stores their dweight / dbias, rounded once in the weight's dtype: no zeroed fp32 buffer
# before the kernel and no casts after (three small launches at a few microseconds each, about 1% of the 16k
# forward + backward, where the cell stands at 0.99x causal-conv1d), no atomics (the same bits every run); b times
# fewer programs (2,048 at d = 2,048, each walking b x 16 tiles at 16k). Built in the eighteenth session on the
# CPU, off on CUDA until timed (`ARCHZOO_CAUSAL_CONV1D_CONFIG='{"bwd": {"OWN": 1}}'`, the queue's `convown`).
# Timed in the nineteenth session on an H200 (docs/results/kernels/conv_h200_2026-12-06i_own*.log): OWN lost at 16k
# (0.413 against 0.397 ms forward + backward) and won at 1k / 4k by 7 / 4 us; off.
# STAGES (backward, 0 when absent): the tile loop annotated num_stages=STAGES, so Triton pipelines its loads (x and
# dout of the next tiles copied into shared memory by cp.async while one computes: 10 KiB a program at 2 stages,
# 20 at 3; 56 / 48 registers on sm_90, no spills). Written in the nineteenth session for the H200, where the
# H100's defaults reach 0.88x causal-conv1d at 16k forward + backward (the backward at 3.2 TB/s against the peer's
# 3.8). Timed on an H100 in the same session (docs/results/kernels/conv_tune_h100_stages.log, one process): it lost
# at every tile, 16k 0.334 (3 stages) / 0.339 (2) against 0.291 ms unpipelined at the default tile, 4k 0.094 /
# 0.098 against 0.088; off. Not yet timed on an H200 (`tools/tune_causal_conv1d.py --stages 0,2,3`).
# PREFETCH (backward, 0 when absent): each tile loads the next tile's x and dout (its new bytes) into registers
# before it computes, so the loads are in flight during the FMAs without STAGES' shared-memory round trip (which
# lost on the H100); the groups before and after a tile, loaded again, then hit L1 / L2. Written in the twenty-first
# session, CPU only, for the H200's 16k forward + backward (0.88x causal-conv1d: the backward at 3.2 TB/s against
# the peer's 3.8, too few bytes in flight). Timed in the twenty-second on an H100 at the default tile
# (docs/results/kernels/conv_tune_h100_2026-12-07h.log, one process): level at 1k (0.0314 ms both), 0.0886 -> 0.0870
# at 4k, 0.2965 -> 0.2949 at 16k, no loss at any length; on since (its GPU test passed in the same lease:
# docs/results/gpu-tests/gpu_tests_h100_2026-12-07h.log). Not yet timed on an H200.
# Under the interpreter: small tiles, so the tests cover several tiles and channel blocks, and two tiles a backward
# program (the tests run one tile through CONFIG_OVERRIDE); OWN where two tiles cover the row (l <= 32).
INTERPRET_CONFIG = {
    "fwd": dict(BLOCK_D=4, BLOCK_L=16, num_warps=1),
    "bwd": dict(BLOCK_D=4, BLOCK_L=16, num_warps=1, TILES=2, OWN=1),
}


def conv_config(key: str, L: int, cuda: bool) -> dict:
    """Blocks and warps of the "fwd" / "bwd" kernel at length L; BLOCK_L shrinks for short sequences."""
    cfg = CUDA_CONFIG[key] if cuda else INTERPRET_CONFIG[key]
    over = CONFIG_OVERRIDE.get(key)
    if over:
        cfg = {**cfg, **over}
        bl = cfg["BLOCK_L"]
        if bl < _V or bl & (bl - 1):
            raise ValueError(f"CONFIG_OVERRIDE[{key!r}]['BLOCK_L'] must be a power of two >= {_V}, got {bl}")
        if cfg.get("TILES", 1) < 1 or (key == "fwd" and "TILES" in cfg):
            raise ValueError(f"CONFIG_OVERRIDE[{key!r}]['TILES'] must be >= 1, and only 'bwd' takes it; got {cfg}")
    if L < cfg["BLOCK_L"]:  # one tile either way; a smaller one wastes less on masked steps
        cfg = {**cfg, "BLOCK_L": max(_V, _next_pow2(L))}
    return cfg


def _acc(*tensors: torch.Tensor | None):
    """Accumulation dtype of the kernels: fp32, or fp64 when an input is fp64."""
    return tl.float64 if any(t is not None and t.dtype is torch.float64 for t in tensors) else tl.float32


# Host path. At short l forward+backward is bound by the host, so what does not change between calls is
# worked out once per signature (the inputs' shapes, strides, dtypes and devices, the activation): the
# validation, and the launches' grids, integer and constexpr arguments (_launch.Site, which also keeps the
# compiled kernel). A call then allocates, launches and returns views. The tuner's entries _conv_forward /
# _conv_backward build their sites per call.


class _ConvPlan:
    __slots__ = ("silu", "acc", "width", "fwd", "bwd")


_PLANS: dict[tuple, _ConvPlan] = {}
_PLANS_MAX = 4096  # distinct signatures kept; cleared when full


def _sig(t: torch.Tensor | None) -> tuple | None:
    return None if t is None else (t.shape, t.stride(), t.dtype, t.device)


def _forward_site(x, weight, bias, init, silu: bool, acc) -> Site:
    b, d, L = x.shape
    cfg = conv_config("fwd", L, x.is_cuda)
    grid = (b, _cdiv(d, cfg["BLOCK_D"]), _cdiv(L, cfg["BLOCK_L"]))
    consts = (weight.shape[1], bias is not None, init is not None, silu, acc, cfg["BLOCK_D"], cfg["BLOCK_L"])
    # pointers x, weight, bias, init are the caller's (checked for alignment); out is a fresh allocation
    return Site(_conv_fwd_kernel, grid, (d, L, *x.stride()), consts, cfg["num_warps"], x.get_device(), checked=4)


def _run_forward(site: Site, x, weight, bias, init) -> torch.Tensor:
    out = torch.empty(x.shape, device=x.device, dtype=x.dtype)
    ptrs = (x, weight, weight if bias is None else bias, x if init is None else init, out)
    LAST_COMPILED["fwd"] = launch_site(site, ptrs, launch)
    return out


def _conv_forward(x, weight, bias, init, silu: bool, acc) -> torch.Tensor:
    """x (b, d, L) any strides; weight (d, W) and init (b, d, W-1) contiguous -> out (b, d, L) contiguous."""
    return _run_forward(_forward_site(x, weight, bias, init, silu, acc), x, weight, bias, init)


class _BwdSite:
    __slots__ = ("site", "n_l", "need_dinit", "cols", "acc_dtype", "own")


def _backward_site(x, weight, bias, init, dout, silu: bool, acc, need_dinit: bool) -> _BwdSite:
    b, d, L = x.shape
    W = weight.shape[1]
    cfg = conv_config("bwd", L, x.is_cuda)
    bs = _BwdSite()
    bs.need_dinit = need_dinit and init is not None
    row_tiles = _cdiv(L + _V if bs.need_dinit else L, cfg["BLOCK_L"])
    # TILES is a cap: the row's tiles shared evenly by the fewest programs it allows (17 tiles under 16: two programs
    # of 9, one masked tile, not 16 and 1 + 15 masked)
    bs.n_l = _cdiv(row_tiles, cfg.get("TILES", 1))
    tiles = _cdiv(row_tiles, bs.n_l)
    bs.own = bool(cfg.get("OWN", 0)) and bs.n_l == 1  # a program can hold its channels' whole rows
    bs.cols = d * (W + 1) if bias is not None else d * W
    bs.acc_dtype = torch.float64 if acc is tl.float64 else torch.float32
    ints = (d, L, b if bs.own else 1, *x.stride(), *dout.stride())
    consts = (W, bias is not None, init is not None, bs.need_dinit, silu, acc, cfg["BLOCK_D"], cfg["BLOCK_L"], tiles,
              bs.own, cfg.get("STAGES", 0), bool(cfg.get("PREFETCH", 0)))  # fmt: skip
    grid = (1 if bs.own else b, _cdiv(d, cfg["BLOCK_D"]), bs.n_l)
    # pointers x, weight, bias, init, dout are the caller's (checked); dx, dinit and the sums are fresh
    bs.site = Site(_conv_bwd_kernel, grid, ints, consts, cfg["num_warps"], x.get_device(), checked=5)
    return bs


def _run_backward(bs: _BwdSite, x, weight, bias, init, dout):
    """-> dx, dweight, dbias (or None), dinit (or None)."""
    d, W = weight.shape
    dev = x.device
    dx = torch.empty(x.shape, device=dev, dtype=x.dtype)
    dinit = torch.empty(init.shape, device=dev, dtype=init.dtype) if bs.need_dinit else None
    head = (x, weight, weight if bias is None else bias, x if init is None else init, dout, dx,
            dx if dinit is None else dinit)  # fmt: skip
    if bs.own:  # each program stores its channels' sums: nothing to zero, nothing to cast
        dw = torch.empty((d, W), device=dev, dtype=weight.dtype)
        db = None if bias is None else torch.empty((d,), device=dev, dtype=bias.dtype)
        LAST_COMPILED["bwd"] = launch_site(bs.site, (*head, dw, dw if db is None else db), launch)
        return dx, dw, db, dinit
    sums = torch.zeros(bs.cols, device=dev, dtype=bs.acc_dtype)  # [dweight (d, W) flattened, dbias (d,)]
    LAST_COMPILED["bwd"] = launch_site(bs.site, (*head, sums, sums), launch)
    dw = sums.as_strided((d, W), (W, 1))
    if dw.dtype != weight.dtype:
        dw = dw.to(weight.dtype)
    db = None
    if bias is not None:
        db = sums.as_strided((d,), (1,), d * W)
        if db.dtype != bias.dtype:
            db = db.to(bias.dtype)
    return dx, dw, db, dinit


def _conv_backward(x, weight, bias, init, dout, silu: bool, acc, need_dinit: bool):
    """-> dx, dweight, dbias (or None), dinit (or None); dout (b, d, L) any strides.

    Host work: the outputs' allocations (the sums zeroed) and one launch."""
    bs = _backward_site(x, weight, bias, init, dout, silu, acc, need_dinit)
    return _run_backward(bs, x, weight, bias, init, dout)


def _plan(key, x, weight, bias, seq_idx, initial_states, final_states_out, activation) -> _ConvPlan:
    check_fn(x, weight, bias, seq_idx, initial_states, final_states_out, activation)
    p = _ConvPlan()
    p.silu = activation is not None
    p.width = weight.shape[1]
    p.acc = _acc(x, weight, bias, initial_states)
    p.fwd, p.bwd = None, {}
    if key is not None:
        if len(_PLANS) >= _PLANS_MAX:
            _PLANS.clear()
        _PLANS[key] = p
    return p


class _CausalConv1dFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, init, plan):
        ctx.save_for_backward(x, weight, bias, init)
        ctx.plan = plan
        if plan.fwd is None:
            plan.fwd = _forward_site(x, weight, bias, init, plan.silu, plan.acc)
        return _run_forward(plan.fwd, x, weight, bias, init)

    @staticmethod
    def backward(ctx, dout):
        x, weight, bias, init = ctx.saved_tensors
        plan = ctx.plan
        need_dinit = ctx.needs_input_grad[3]
        key = (dout.stride(), need_dinit)
        bs = plan.bwd.get(key)
        if bs is None:
            bs = plan.bwd[key] = _backward_site(x, weight, bias, init, dout, plan.silu, plan.acc, need_dinit)
        dx, dw, db, dinit = _run_backward(bs, x, weight, bias, init, dout)
        return dx, dw, db, dinit, None


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
    init = initial_states
    if init is not None and not init.is_contiguous():
        init = init.contiguous()
    if not weight.is_contiguous():
        weight = weight.contiguous()
    if bias is not None and not bias.is_contiguous():
        bias = bias.contiguous()
    # a signature is planned once it passed validation; an activation that is not a string is refused there
    key = None
    if seq_idx is None and (activation is None or isinstance(activation, str)):
        key = (_sig(x), _sig(weight), _sig(bias), _sig(init), _sig(final_states_out), activation)
    plan = _PLANS.get(key) if key is not None else None
    if plan is None:
        plan = _plan(key, x, weight, bias, seq_idx, init, final_states_out, activation)
    b, d, L = x.shape
    if L == 0:
        out = x.new_empty(x.shape)
    elif torch.is_grad_enabled() and (
        x.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad)
        or (init is not None and init.requires_grad)
    ):  # fmt: skip
        out = _CausalConv1dFn.apply(x, weight, bias, init, plan)
    else:  # nothing to differentiate: skip autograd's bookkeeping
        if plan.fwd is None:
            plan.fwd = _forward_site(x, weight, bias, init, plan.silu, plan.acc)
        out = _run_forward(plan.fwd, x, weight, bias, init)
    if not return_final_states:
        return out
    # the last w - 1 inputs, differentiable through plain indexing
    W = plan.width
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

    The host path is the decode step's cost (the kernel itself takes a few microseconds): validation by
    int and dtype compares, one allocation and a cached launch; a 2-D x is passed with its strides (no
    unsqueeze / squeeze views).
    """
    b, d, s, W, S = check_update(x, conv_state, weight, bias, activation)
    f64 = torch.float64
    wide = x.dtype is f64 or conv_state.dtype is f64 or weight.dtype is f64 or (bias is not None and bias.dtype is f64)
    if x.dim() == 2:
        out = torch.empty((b, d), device=x.device, dtype=x.dtype)
        s_x_b, s_x_d = x.stride()
        s_x_l = 1  # what unsqueeze(-1) gives; the kernel reads only step 0
    else:
        out = torch.empty((b, d, s), device=x.device, dtype=x.dtype)
        s_x_b, s_x_d, s_x_l = x.stride()
    s_s_b, s_s_d, s_s_k = conv_state.stride()
    s_w_d, s_w_k = weight.stride()
    cuda = x.is_cuda
    block_d = 64 if cuda else 4
    ptrs = (x, conv_state, weight, weight if bias is None else bias, out)
    ints = (d, S, s, s_x_b, s_x_d, s_x_l, s_s_b, s_s_d, s_s_k, s_w_d, s_w_k, d * s, s, 1)  # out: contiguous (b, d, s)
    pdl = _pdl.UPDATE_KERNELS and pdl_enabled(x.device)  # a decode step's chain (archzoo/kernels/_pdl.py)
    consts = (W, bias is not None, activation is not None, tl.float64 if wide else tl.float32, block_d,
              1 << (S - 1).bit_length(), pdl)  # fmt: skip
    grid = (b, (d + block_d - 1) // block_d, 1)
    LAST_COMPILED["update"] = launch(_conv_update_kernel, grid, ptrs, ints, consts, 2 if cuda else 1, x.get_device(),
                                     pdl)  # fmt: skip
    return out
