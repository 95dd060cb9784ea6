"""Compile archzoo's Triton kernels for sm_90 on a machine without a GPU and report what ptxas made of them.

Triton's wheel carries ptxas, cuobjdump and nvdisasm, so register counts, spills, shared memory and
the SASS instruction mix (shuffles, MUFU, barriers, loads, stores, atomics) can be read before any
device time is spent. Timings still need the GPU: this says whether a variant spills, how many
cross-lane shuffles it issues, and whether a reshape went through shared memory.

The launches are captured from archzoo's own host code (run on CPU tensors of the benchmark's shapes
with the CUDA configuration), and each argument is specialised the way Triton's JIT does on a GPU
(ints equal to 1 become constants, 16-divisible ints and pointers get the divisibility hint), so the
compiled kernel is the one the GPU would run. Use the Triton version of the GPU machine (3.6 there):

    python tools/sm90_compile.py --op scan --l 4096
    python tools/sm90_compile.py --op scan --config '{"fwd": {"BLOCK_L": 256}}'
    python tools/sm90_compile.py --op gemv       # the decode GEMV at the teacher's projections, M = 1, 16 and 64
    python tools/sm90_compile.py --op gemv --pdl # the same launched with PDL (griddepcontrol in the SASS)
    python tools/sm90_compile.py --op gemv --pdl --config '{"L2_PREFETCH": true}'  # ... and the L2 prefetch
    python tools/sm90_compile.py --op attn       # decode_attention at the teacher's shape, B = 1 and 64
    python tools/sm90_compile.py --op la         # linear attention's forward, segment sums and backward
    python tools/sm90_compile.py --op la_cp      # linear attention's chunk-parallel backward (normalize=False)
    python tools/sm90_compile.py --op kd_loss    # kd_loss_rows at a 1,024-token chunk of a 49k vocabulary
    python tools/sm90_compile.py --op based      # BASED attention's three kernels, d 16, Dv 64, bf16 and fp32
    python tools/sm90_compile.py --op based --all-configs   # ... at every config their autotuners may pick
    python tools/sm90_compile.py --op mamba_step # the fused Mamba decode step at the students' shape, B = 1 and 16
    python tools/sm90_compile.py --op moe_step   # the MoE decode experts' two kernels at the students' shapes
    python tools/sm90_compile.py --op moe_grouped  # the fused MoE experts' forward and backward, 4,096 tokens
    python tools/sm90_compile.py --op gemv_conv  # Mamba's in_proj with its conv step in the epilogue, M = 1 and 16
    python tools/sm90_compile.py --op conv --l 16384 --config '{"bwd": {"TILES": 4}}'  # the causal conv's kernels
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import tempfile
from collections import Counter
from contextlib import contextmanager
from unittest import mock

import torch
import triton
from triton._C.libtriton import native_specialize_impl
from triton.backends.compiler import BaseBackend, GPUTarget
from triton.compiler import ASTSource

_BIN = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
# SASS opcodes worth counting (prefix match); STL / LDL are spills
_OPS = ("SHFL", "MUFU", "BAR", "LDG", "STG", "LDS", "STS", "RED", "ATOM", "FFMA", "FMUL", "FADD", "LDL", "STL", "BRA",
        "HGMMA", "HMMA", "F2FP", "FSEL", "ISETP", "LDGSTS", "ACQBULK", "PREEXIT", "CCTL")  # fmt: skip


@contextmanager
def record_launches(module):
    """Replace ``module.launch`` (archzoo.kernels._launch.launch) by a recorder for the duration; yields the
    list of recorded calls (kernel, grid, positional args, keyword args) in ``kernel[grid](...)`` form."""
    calls: list = []

    def recorder(kernel, grid, ptrs, ints, consts, num_warps, device, pdl=False):
        names = kernel.arg_names[len(ptrs) + len(ints) :]
        kw = {**dict(zip(names, consts, strict=True)), "num_warps": num_warps, **({"launch_pdl": True} if pdl else {})}
        calls.append((kernel, grid, (*ptrs, *ints), kw))

    with mock.patch.object(module, "launch", recorder):
        yield calls


def compile_call(fn, args: tuple, kwargs: dict, arch: int = 90):
    """Compile one recorded call as Triton's JIT would specialise it on a GPU."""
    kwargs = dict(kwargs)
    num_warps = kwargs.pop("num_warps", 4)
    num_stages = kwargs.pop("num_stages", 3)
    launch_pdl = kwargs.pop("launch_pdl", False)
    names = fn.arg_names
    values = dict(zip(names, args, strict=False))  # kwargs hold the rest
    values.update(kwargs)
    signature, constexprs, attrs = {}, {}, {}
    for i, name in enumerate(names):
        v = values[name]
        if fn.params[i].is_constexpr:
            signature[name] = "constexpr"
            constexprs[name] = v
            continue
        kind, attr = native_specialize_impl(BaseBackend, v, False, True, True)
        signature[name] = kind
        if kind == "constexpr":
            constexprs[name] = v
        elif attr:
            attrs[(i,)] = BaseBackend.parse_attr(attr)
    src = ASTSource(fn, signature, constexprs, attrs)
    options = dict(num_warps=num_warps, num_stages=num_stages, **({"launch_pdl": True} if launch_pdl else {}))
    return triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options)


def report(kernel) -> dict:
    """-> {"regs", "stack" (bytes of local memory per thread), "shared", "sass": opcode counts}."""
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(kernel.asm["cubin"])
        path = f.name
    try:
        run = lambda *cmd: subprocess.run(cmd, capture_output=True, text=True, check=True).stdout  # noqa: E731
        res = run(os.path.join(_BIN, "cuobjdump"), "-res-usage", path)
        sass = run(os.path.join(_BIN, "nvdisasm"), path)
    finally:
        os.unlink(path)
    counts = Counter()
    for line in sass.splitlines():
        m = re.search(r"/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)", line)
        if m:
            for op in _OPS:
                if m.group(1).startswith(op):
                    counts[op] += 1
    return dict(
        regs=int(re.search(r"REG:(\d+)", res).group(1)),
        stack=int(re.search(r"STACK:(\d+)", res).group(1)),
        shared=kernel.metadata.shared,
        sass=dict(sorted(counts.items())),
        sass_text=sass,
    )


def _scan_calls(b: int, d: int, L: int, n: int, config: dict) -> list:
    from archzoo.kernels.selective_scan import triton as st

    bf = dict(dtype=torch.bfloat16)
    u, delta, z = (torch.randn(b, d, L, **bf) for _ in range(3))
    A = -torch.rand(d, n)
    B, C = torch.randn(b, n, L, **bf), torch.randn(b, n, L, **bf)
    D, bias = torch.randn(d), torch.randn(d)
    real = st.scan_config
    cuda = torch.device("cuda")
    with (
        mock.patch.object(st, "scan_config", lambda *a: real(*a[:-1], cuda)),
        mock.patch.dict(st.CONFIG_OVERRIDE, config, clear=True),
        record_launches(st) as calls,
    ):
        _, _, ckpt, y = st._scan_forward(u, delta, A, B, C, D, z, bias, None, True, store_ckpt=True, store_last=False)
        st._scan_forward(u, delta, A, B, C, D, z, bias, None, True, store_ckpt=False, store_last=False)
        st._scan_backward(u, delta, A, B, C, D, z, bias, ckpt, y, torch.randn_like(u), None, True, False)
    names = ["fwd (with checkpoints)", "fwd (inference)", "bwd"]
    return [(nm, *c) for nm, c in zip(names, calls, strict=True)]


# The teacher's (SmolLM2-135M) decode projections: name -> (N, K, RMSNorm fused)
GEMV_SHAPES = {
    "qkv": (960, 576, True),
    "o": (576, 576, False),
    "gate_up": (3072, 576, True),
    "down": (576, 1536, False),
}


# The epilogues the decode step asks for (issue 18): the residual add after O and down, SwiGLU after gate|up.
GEMV_EPILOGUES = {"o": "residual", "gate_up": "swiglu", "down": "residual"}


def _gemv_calls(ms: tuple[int, ...] = (1, 16, 64), sms: int = 132) -> list:
    """The decode GEMV's launches at the teacher's projections, planned as on a GPU of ``sms`` SMs (bf16): each
    plain, and with its decode-step epilogue (``GEMV_EPILOGUES``)."""
    from archzoo.kernels.decode_linear import triton as gt

    out = []
    bf = dict(dtype=torch.bfloat16)
    for M in ms:
        for name, (N, K, norm) in GEMV_SHAPES.items():
            x, w = torch.randn(M, K, **bf), torch.randn(N, K, **bf)
            nw = torch.randn(K, **bf) if norm else None
            for epi in ("", GEMV_EPILOGUES.get(name, "")) if name in GEMV_EPILOGUES else ("",):
                res = torch.randn(M, N, **bf) if epi == "residual" else None
                with (
                    mock.patch.object(
                        gt, "_config", lambda dev: {**gt.CUDA_CONFIG, **gt.CONFIG_OVERRIDE, "SM_COUNT": sms}
                    ),
                    record_launches(gt) as calls,
                ):
                    gt._PLANS.clear()
                    gt._run(x, w, nw, 1e-5, res, epi == "swiglu")
                gt._PLANS.clear()
                for i, (fn, grid, a, kw) in enumerate(calls):
                    if "DOT_F32" in kw and kw["H_DTYPE"] == gt._TL_DTYPE[torch.bfloat16]:
                        kw = {**kw, "DOT_F32": False, "DOT_PRECISION": None}  # the CUDA rule (_plan widens on CPU)
                    tag = f" {epi}" if epi else ""
                    out.append((f"{name}{tag} M={M}" + (" reduce" if i else ""), fn, grid, a, kw))
        if M == 16:  # split-K merged by the last split program (FIXUP, off by default): down with its residual
            x, w, res = torch.randn(M, 1536, **bf), torch.randn(576, 1536, **bf), torch.randn(M, 576, **bf)
            cfg = {**gt.CUDA_CONFIG, **gt.CONFIG_OVERRIDE, "SM_COUNT": sms, "FIXUP": True}
            with mock.patch.object(gt, "_config", lambda dev, cfg=cfg: cfg), record_launches(gt) as calls:
                gt._PLANS.clear()
                gt._run(x, w, None, 1e-5, res)
            gt._PLANS.clear()
            for fn, grid, a, kw in calls:
                out.append((f"down residual M={M} fixup", fn, grid, a, {**kw, "DOT_F32": False, "DOT_PRECISION": None}))
        # Q|K|V with RoPE and the K/V cache write in the epilogue (decode_qkv_rope): the teacher's 9 / 3 heads of 64
        H, Hkv, D, K, slots = 9, 3, 64, 576, 4096
        x, w, nw = torch.randn(M, K, **bf), torch.randn((H + 2 * Hkv) * D, K, **bf), torch.randn(K, **bf)
        kc, vc = torch.empty(M, Hkv, slots, D, **bf), torch.empty(M, Hkv, slots, D, **bf)
        rope = gt.Rope(torch.zeros(M, dtype=torch.long), torch.ones(D // 2), kc, vc, H * D, Hkv * D, D)
        with (
            mock.patch.object(gt, "_config", lambda dev: {**gt.CUDA_CONFIG, **gt.CONFIG_OVERRIDE, "SM_COUNT": sms}),
            record_launches(gt) as calls,
        ):
            gt._PLANS.clear()
            gt._run(x, w, nw, 1e-5, rope=rope)
        gt._PLANS.clear()
        for fn, grid, a, kw in calls:
            if "DOT_F32" in kw:
                kw = {**kw, "DOT_F32": False, "DOT_PRECISION": None}
            out.append((f"qkv rope+cache M={M}", fn, grid, a, kw))
    return out


def _moe_step_calls(sms: int = 132) -> list:
    """moe_decode_experts' two launches and moe_decode_step's two (the routing in the first; PDL) at the Jamba / MoE
    students' shapes (d_model 576, d_ff 1,536, top-2, bf16): 4 and 8 experts, 1 and 3 tokens."""
    from archzoo.kernels.moe_step import triton as mt

    out = []
    bf = dict(dtype=torch.bfloat16)
    for E, N in ((4, 1), (8, 1), (8, 3)):
        x, g, u = torch.randn(N, 576, **bf), torch.randn(E, 1536, 576, **bf), torch.randn(E, 1536, 576, **bf)
        d, e, w = torch.randn(E, 576, 1536, **bf), torch.zeros(N, 2, dtype=torch.long), torch.rand(N, 2, **bf)
        with (
            mock.patch.object(mt, "_config", lambda dev: {**mt.CUDA_CONFIG, **mt.CONFIG_OVERRIDE, "SM_COUNT": sms}),
            record_launches(mt) as calls,
        ):
            mt.moe_decode_experts(x, g, u, d, e, w)
        for name, (fn, grid, a, kw) in zip(("gate_up", "down"), calls, strict=True):
            out.append((f"moe {name} E={E} N={N}", fn, grid, a, kw))
        # moe_decode_step (DECODE_EXPERTS "fused"): the routing in the first kernel, both launched with PDL
        r = torch.randn(E, 576, **bf)
        with (
            mock.patch.object(mt, "_config", lambda dev: {**mt.CUDA_CONFIG, **mt.CONFIG_OVERRIDE, "SM_COUNT": sms}),
            mock.patch.object(mt, "pdl_enabled", lambda dev: True),
            record_launches(mt) as calls,
        ):
            mt.moe_decode_step_routing(x, r, None, g, u, d, 2, False)
            mt.moe_decode_step_routing(x, r, None, g, u, d, 2, False, torch.ones(576, **bf), 1e-5, x)  # the block's
        names = ("route+gate_up pdl", "down pdl", "norm+route+gate_up pdl", "down+residual pdl")  # norm and add
        for name, (fn, grid, a, kw) in zip(names, calls, strict=True):
            out.append((f"moe {name} E={E} N={N}", fn, grid, a, kw))
    return out


def _moe_grouped_calls(config: dict | None = None) -> list:
    """moe_grouped_experts' five forward launches (the plan's count and place, the gate|up and down GEMMs, the sum over
    the choices), the training forward's gate|up (saving gate and up), and the backward's six (dhw with the SwiGLU
    backward in its epilogue, the routing weights' gradient summed over d_ff tiles, dx over the assignments and its
    sum over the choices, the down and the gate|up weight gradients), and ``moe_route``'s routing with the plan's
    counts, at the issue's shape (4,096 tokens, d_model 576, d_ff 1,536, 8 experts, top-2, bf16). ``config``
    overrides the forward's and the backward's CUDA_CONFIG."""
    from archzoo.kernels.moe_grouped import backward as mb
    from archzoo.kernels.moe_grouped import triton as mg

    N, D, F, E, K = 4096, 576, 1536, 8, 2
    bf = dict(dtype=torch.bfloat16)
    x, d = torch.randn(N, D, **bf), torch.randn(E, D, F, **bf)
    g, u = torch.randn(E, F, D, **bf), torch.randn(E, F, D, **bf)
    e, w = torch.randint(0, E, (N, K)), torch.rand(N, K, **bf)
    cfg = {**mg.CUDA_CONFIG, **(config or {})}
    bcfg = {**mb.CUDA_CONFIG, **(config or {})}
    with mock.patch.object(mg, "_config", lambda dev: cfg), record_launches(mg) as calls:
        mg.moe_grouped_experts(x, g, u, d, e, w)
    with mock.patch.object(mg, "_config", lambda dev: cfg), record_launches(mg) as train:
        out, *saved = mg.moe_grouped_experts(x, g, u, d, e, w, save=True)
    with mock.patch.object(mb, "_config", lambda dev: bcfg), record_launches(mb) as bwd:
        mb.moe_grouped_experts_backward(torch.randn(N, D, **bf), x, g, u, d, w, *saved)
    from archzoo.kernels.moe_grouped import route as mr

    with mock.patch.object(mg, "_config", lambda dev: cfg), mock.patch.object(mr, "INTERPRET_ROUTE", mr.CUDA_ROUTE), \
            record_launches(mr) as routing:  # fmt: skip
        mr.route_and_count(x, torch.randn(E, D, **bf), None, K, True)
    names = ("plan count", "plan place", "gate_up", "down", "sum")
    # the backward's launch order: the down weight gradient first (it needs only dout and hw), unless SORTED_DW puts
    # it after the copy of x's and dout's rows in sorted order
    bwd_names = ("bwd ddown_w", "bwd dh", "bwd dtop_w sum", "bwd dx", "bwd dx sum", "bwd dgate_up_w")
    if bcfg.get("SORTED_DW"):
        bwd_names = (*bwd_names[1:5], "bwd gather rows", "bwd ddown_w", "bwd dgate_up_w")
    named = [*zip(names, calls, strict=True), ("gate_up save", train[2]), *zip(bwd_names, bwd, strict=True),
             ("route and count", routing[0])]  # fmt: skip
    out = []
    for name, (fn, grid, a, kw) in named:
        if "DOT_F32" in kw:
            kw = {**kw, "DOT_F32": False, "DOT_PRECISION": None}  # the CUDA rule (the wrapper widens on CPU)
        out.append((f"moe_grouped {name}", fn, grid, a, kw))
    return out


def _attn_calls(sms: int = 132, config: dict | None = None) -> list:
    """decode_attention's launches at the teacher's shape (9 query / 3 KV heads of 64, bf16): batch 1 and 64 at a
    4,096-position cache, the splits' merge by the last program (FIXUP) and by the combine kernel; the ring; batch 16
    at the bench's 256-position buffer. ``config``: keys over CUDA_CONFIG (e.g. SINGLE_MAX_T)."""
    from archzoo.kernels.decode_attention import triton as at

    out = []
    bf = dict(dtype=torch.bfloat16)
    for B, Tm, fixup, ring in [(1, 4096, True, False), (1, 4096, False, False), (64, 4096, True, False),
                               (1, 512, True, True), (16, 256, False, False)]:  # fmt: skip
        q, k, v = torch.randn(B, 9, 64, **bf), torch.randn(B, 3, Tm, 64, **bf), torch.randn(B, 3, Tm, 64, **bf)
        L = torch.full((B,), Tm)
        cfg = {**at.CUDA_CONFIG, "FIXUP": fixup, "SM_COUNT": sms, **(config or {})}
        with (
            mock.patch.object(at, "_config", lambda dev, cfg=cfg: cfg),
            mock.patch.object(at, "_counters", lambda dev, n: torch.zeros(n, dtype=torch.int32)),
            record_launches(at) as calls,
        ):
            at._PLANS.clear()
            at._run(q, k, v, L, None, 512 if ring else 0, ring)
        at._PLANS.clear()
        for i, (fn, grid, a, kw) in enumerate(calls):
            kw = {**kw, "DOT_F32": False, "DOT_PRECISION": None} if "DOT_F32" in kw else kw  # the CUDA rule
            tag = f"B={B} T={Tm}{' ring' if ring else ''} {'fixup' if fixup else 'two launches'}"
            out.append((f"{'combine' if i else 'split'} {tag}", fn, grid, a, kw))
    return out


def _kd_loss_calls(n: int = 1024, V: int = 49152) -> list:
    """kd_loss_rows' kernel at a 1,024-token chunk of the teacher's vocabulary: bf16 and fp32 logits, with a
    teacher and targets at T = 1 and 2, forward only (no gradient), and CE only."""
    from archzoo.kernels.kd_loss import triton as kt

    out = []
    cfg = kt.CUDA_CONFIG
    for dt in (torch.bfloat16, torch.float32):
        zs, zt, g = torch.empty(n, V, dtype=dt), torch.empty(n, V, dtype=dt), torch.empty(n, V, dtype=dt)
        t, sc, kl, ce = torch.zeros(n, dtype=torch.long), torch.zeros(2), torch.zeros(n), torch.zeros(n)
        for teacher, targets, need, T in ((1, 1, 1, 1.0), (1, 1, 1, 2.0), (1, 0, 0, 1.0), (0, 1, 1, 1.0)):
            args = (zs, zt, t, sc, kl, ce, g, V, V, V, V, T, -100)
            kw = dict(HAS_TEACHER=bool(teacher), HAS_TARGETS=bool(targets), NEED_GRAD=bool(need), SAME_T=T == 1.0,
                      BLOCK_V=cfg["BLOCK_V"], num_warps=cfg["num_warps"])  # fmt: skip
            name = f"{str(dt).split('.')[-1]} teacher={teacher} targets={targets} grad={need} T={T}"
            out.append((name, kt._kd_rows_kernel, (n,), args, kw))
    return out


def _based_calls(T: int = 4096, B: int = 4, H: int = 8, d: int = 16, Dv: int = 64, all_configs: bool = False) -> list:
    """BASED attention's forward, dq and dk/dv kernels at the benchmark's shape, in bf16 and fp32: each kernel at
    its default config (CUDA_DEFAULT, FP32_DEFAULT), or (``all_configs``) at every config its autotuner may pick
    (CUDA_CONFIGS, FP32_CONFIGS)."""
    from archzoo.kernels.based_attention import triton as kb

    out = []
    BD, BV = kb._tiles(d, Dv)
    tb = triton.next_power_of_2(T)
    for dt in (torch.bfloat16, torch.float32):
        q, v = torch.empty(B, T, H, d, dtype=dt), torch.empty(B, T, H, Dv, dtype=dt)
        den = torch.empty(B, H, T)
        consts = dict(D=d, DV=Dv, BD=BD, BV=BV, LOWP=dt != torch.float32)
        args = {
            "fwd": (q, q, v, v, den, T, tb, H, 0.25, 1e-6),
            "bwd_dq": (q, q, v, v, v, den, v, den, q, T, tb, H, 0.25, 1e-6),
            "bwd_dkdv": (q, q, v, v, den, q, v, T, tb, H, 0.25),
        }
        name = str(dt).split(".")[-1]
        lowp = dt != torch.float32
        for kname in kb.KERNELS:
            if all_configs:
                configs = (kb.CUDA_CONFIGS if lowp else kb.FP32_CONFIGS)[kname]
            else:
                configs = [(kb.CUDA_DEFAULT if lowp else kb.FP32_DEFAULT)[kname]]
            for cfg in configs:
                rows = cfg["BLOCK_N"] if kname == "bwd_dkdv" else cfg["BLOCK_M"]
                grid = (triton.cdiv(T, rows), B * H)
                tag = f" M{cfg['BLOCK_M']} N{cfg['BLOCK_N']} w{cfg['num_warps']} s{cfg['num_stages']}"
                label = f"{kname} {name}" + (tag if all_configs else "")
                out.append((label, kb._RAW[kname], grid, args[kname], {**consts, **cfg}))
    return out


def _la_calls(T: int = 1024, B: int = 4, H: int = 8, F: int = 64, Dv: int = 64) -> list:
    """Linear attention's forward, segment-sum (the backward's, and the forward's) and backward kernels at the
    benchmark's shape (bf16, F = Dv = 64, the default tiles), normalised and not, with a start state per segment;
    the backward with an end gradient too (the case with the most live registers: 248-250 of 255 on sm_90, so a
    change that spills shows here)."""
    from archzoo.kernels.linear_attention import triton as kl

    bf = dict(dtype=torch.bfloat16)
    BT, BF, BV = kl._blocks(F, Dv, 64)
    NV, NS = triton.cdiv(Dv, BV), 4
    q, v, den = torch.empty(B, T, H, F, **bf), torch.empty(B, T, H, Dv, **bf), torch.empty(B, H, T)
    f32 = lambda *shape: torch.empty(*shape)  # noqa: E731
    st, z = f32(NS, B, H, F, Dv), f32(NS, B, H, F)
    tiles = dict(BT=BT, BF=BF, BV=BV, LOWP=True, num_warps=kl.NUM_WARPS)
    out = []
    for norm in (True, False):
        tag = "norm" if norm else "plain"
        out.append((f"la fwd {tag}", kl._fwd_kernel, (NV, B * H, NS),
                    (q, q, v, v, st, z, st, z, den, T, H, F, Dv, 1e-6, T // NS),
                    dict(HAS_S0=True, STORE_FINAL=False, NORMALIZE=norm, STORE_DEN=norm, **tiles)))  # fmt: skip
        sums_args = (q, q, v, v, den, den, st, z, st, z, T, H, F, Dv, T // NS)
        sums_consts = dict(NORMALIZE=norm, GRAD=True, **tiles)
        out.append((f"la seg_sums {tag}", kl._seg_sums_kernel, (NV, B * H, NS), sums_args, sums_consts))
        if norm:  # the forward's (no gradient terms; normalisation does not enter it)
            fwd_consts = dict(NORMALIZE=False, GRAD=False, **tiles)
            out.append(("la seg_sums fwd", kl._seg_sums_kernel, (NV, B * H, NS), sums_args, fwd_consts))
        dqk = f32(NV, B, T, H, F)
        out.append((f"la bwd {tag}", kl._bwd_kernel, (NV, B * H, NS),
                    (q, q, v, v, den, den, st, z, st, z, dqk, dqk, f32(B, T, H, Dv), st, z, T, H, F, Dv,
                     B * T * H * F, T // NS),
                    dict(HAS_S0=True, HAS_DFINAL=True, NORMALIZE=norm, **tiles)))  # fmt: skip
    return out


def _la_cp_calls(T: int = 1024, B: int = 4, H: int = 8, F: int = 64, Dv: int = 64) -> list:
    """Linear attention's chunk-parallel backward (normalize=False, ``chunk_parallel.py``) at the benchmark's shape:
    the state chains (h, dh) and the per-chunk gradients, default tiles, with S_0, dS_T and dz_T (the most live
    values), in bf16 (states stored in bf16) and fp32 (tf32x3, fp32 states)."""
    from archzoo.kernels.linear_attention import chunk_parallel as cp

    BT, NC = 64, triton.cdiv(T, 64)
    BK, BVs = min(cp.STATE_BLOCK_F, F), min(cp.STATE_BLOCK_V, Dv)
    BF = triton.next_power_of_2(F)
    f32 = lambda *shape: torch.empty(*shape)  # noqa: E731
    out = []
    for dt in (torch.bfloat16, torch.float32):
        q, v = torch.empty(B, T, H, F, dtype=dt), torch.empty(B, T, H, Dv, dtype=dt)
        h = torch.empty(B, H, NC, F, Dv, dtype=dt)
        st, z = f32(B, H, F, Dv), f32(B, H, F)
        lowp = dt != torch.float32
        name = str(dt).split(".")[-1]
        tiles = triton.cdiv(F, BK) * triton.cdiv(Dv, BVs)
        out.append((f"la_cp states {name}", cp._states_kernel, (tiles, B * H, 2),
                    (q, q, v, v, st, st, h, h, st, T, H, F, Dv, NC),
                    dict(BT=BT, BK=BK, BV=BVs, HAS_S0=True, HAS_DST=True, STORE_DS0=True, LOWP=lowp,
                         num_warps=cp.STATE_WARPS)))  # fmt: skip
        block_v, warps, stages = cp.GRAD_TILES[lowp]
        out.append((f"la_cp grads {name}", cp._grads_kernel, (NC, B * H),
                    (q, q, v, v, h, h, z, q, q, v, T, H, F, Dv, NC),
                    dict(BT=BT, BF=BF, BV=min(block_v, triton.next_power_of_2(Dv)), HAS_DZT=True, LOWP=lowp,
                         num_warps=warps, num_stages=stages)))  # fmt: skip
    return out


def _mamba_step_calls(ms: tuple[int, ...] = (1, 16), sms: int = 132, config: dict | None = None) -> list:
    """The fused Mamba decode step (``archzoo.kernels.mamba_step``) at the SmolLM2-sized students' Mamba layers
    (d_inner 576, d_state 16, dt_rank 36, d_conv 4; bf16 activations, fp32 SSM state), planned as on a GPU of
    ``sms`` SMs at batch 1 and 16 (several splits: the arrival ticket in the SASS), and with one split."""
    from archzoo.kernels.mamba_step import triton as mt

    d, n, r, w = 576, 16, 36, 4
    bf = dict(dtype=torch.bfloat16)
    out = []
    for M, splits in [*((m, None) for m in ms), (1, 1)]:
        xz = torch.randn(M, 2 * d, **bf)
        args = (xz[:, :d], torch.randn(M, d, w - 1, **bf), torch.randn(M, d, n), torch.randn(d, w, **bf),
                torch.randn(d, **bf), torch.randn(r + 2 * n, d, **bf), torch.randn(d, r, **bf), -torch.rand(d, n),
                torch.randn(d, **bf), xz[:, d:], torch.randn(d, **bf))  # fmt: skip
        cfg = {**mt.CUDA_CONFIG, **(config or {}), "SM_COUNT": sms}
        with mock.patch.object(mt, "_config", lambda dev, cfg=cfg: cfg), record_launches(mt) as calls:
            mt._PLANS.clear()
            mt.mamba_decode_step(*args, splits=splits)
        mt._PLANS.clear()
        for fn, grid, a, kw in calls:
            out.append((f"mamba_step B={M}" + (" one split" if splits == 1 else ""), fn, grid, a, kw))
    return out


def _gemv_conv_calls(ms: tuple[int, ...] = (1, 16), sms: int = 132) -> list:
    """``decode_linear_conv`` at the students' Mamba in_proj (576 -> 2 x 576, the block's norm, bias, width-4 conv
    with bias), bf16, planned as on a GPU of ``sms`` SMs."""
    from archzoo.kernels.decode_linear import triton as gt

    out = []
    bf = dict(dtype=torch.bfloat16)
    cfg = {**gt.CUDA_CONFIG, **gt.CONFIG_OVERRIDE, "SM_COUNT": sms}
    for M in ms:
        x, w, nw = torch.randn(M, 576, **bf), torch.randn(1152, 576, **bf), torch.rand(576, **bf)
        b, state = torch.randn(1152, **bf), torch.randn(M, 576, 3, **bf)
        cw, cb = torch.randn(576, 4, **bf), torch.randn(576, **bf)
        with mock.patch.object(gt, "_config", lambda dev: cfg), record_launches(gt) as calls:
            gt._PLANS.clear()
            gt.decode_linear_conv(x, w, nw, 1e-5, b, state, cw, cb)
        gt._PLANS.clear()
        for fn, grid, a, kw in calls:
            if "DOT_F32" in kw:
                kw = {**kw, "DOT_F32": False, "DOT_PRECISION": None}  # the CUDA rule (_plan widens bf16 on CPU)
            out.append((f"in_proj+conv M={M}", fn, grid, a, kw))
    return out


def _conv_calls(b: int, d: int, L: int, config: dict) -> list:
    """The causal conv's forward and backward at Mamba's shape (width 4, bias, SiLU, bf16), planned with the CUDA
    configuration and ``config`` (its CONFIG_OVERRIDE)."""
    from archzoo.kernels.causal_conv1d import triton as ct

    x, dout = torch.randn(b, d, L, dtype=torch.bfloat16), torch.randn(b, d, L, dtype=torch.bfloat16)
    w, bias = torch.randn(d, 4), torch.randn(d)
    real = ct.conv_config
    with (
        mock.patch.object(ct, "conv_config", lambda key, L, cuda: real(key, L, True)),
        mock.patch.dict(ct.CONFIG_OVERRIDE, config, clear=True),
        record_launches(ct) as calls,
    ):
        ct._conv_forward(x, w, bias, None, True, ct.tl.float32)
        ct._conv_backward(x, w, bias, None, dout, True, ct.tl.float32, False)
    return [(nm, *c) for nm, c in zip(("conv fwd", "conv bwd"), calls, strict=True)]


def _argmax_calls() -> list:
    """argmax_rows' two launches (the chunks' maxima, then each row's) over the students' vocabulary, bf16."""
    from archzoo.kernels.argmax import triton as at

    out = []
    for B in (1, 64):
        x = torch.randn(B, 49152, dtype=torch.bfloat16)
        with mock.patch.object(at, "_config", lambda dev: at.CUDA_CONFIG), record_launches(at) as calls:
            at.argmax_rows(x)
        for name, (fn, grid, a, kw) in zip(("chunks", "rows"), calls, strict=True):
            out.append((f"argmax {name} B={B}", fn, grid, a, kw))
    return out


def _rope_write_calls(pdl: bool = False) -> list:
    """decode_rope_write at the teacher's shape (9 / 3 heads of 64, bf16, a 256-slot cache) at 17 and 64 rows; with
    ``pdl`` launched with PDL (--pdl)."""
    from archzoo.kernels.decode_linear import triton as gt

    out = []
    for M in (17, 64):
        y, pos, inv = torch.randn(M, 960, dtype=torch.bfloat16), torch.arange(M), torch.rand(32)
        kc, vc = (torch.randn(M, 3, 256, 64, dtype=torch.bfloat16) for _ in range(2))
        with mock.patch.object(gt, "pdl_enabled", lambda dev: pdl), record_launches(gt) as calls:
            gt.rope_write(y, gt.Rope(pos, inv, kc, vc, 576, 192, 64))
        out += [(f"rope_write M={M}", *c) for c in calls]
    return out


def _s4_step_calls(pdl: bool = False) -> list:
    """s4d_decode_step at the S4D student's shape (576 channels, 32 complex modes, bf16 x and norm weight, fp32 state
    and spectrum), batch 1 and 64; with ``pdl`` launched with PDL, as on an sm_90 GPU (--pdl)."""
    from archzoo.kernels.s4_step import triton as st

    out = []
    for B in (1, 64):
        x, nw = torch.randn(B, 576, dtype=torch.bfloat16), torch.ones(576, dtype=torch.bfloat16)
        state, spec = torch.randn(B, 576, 64), [torch.randn(576, 32, 2) for _ in range(3)]
        with (
            mock.patch.object(st, "_config", lambda dev: st.CUDA_CONFIG),
            mock.patch.object(st, "pdl_enabled", lambda dev: pdl),
            record_launches(st) as calls,
        ):
            st.s4d_decode_step(x, nw, 1e-5, state, *spec, torch.randn(576))
        out += [(f"s4_step B={B}", *c) for c in calls]
    return out


def _persistent_calls() -> list:
    """The persistent decode kernels of issue 18's item 4 (tools/grid_sync_bench.py, persistent_mlp_bench.py,
    persistent_step_bench.py, persistent_prefetch.py) at the teacher's shape (30 layers, d_model 576, 9 / 3 heads of
    64, d_ff 1,536, bf16, the new token at position 255) on 132 programs, with their benchmarks' default tiles."""
    import sys

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the tools import each other
    import grid_sync_bench as gs
    import persistent_batch as pb
    import persistent_mlp_bench as pm
    import persistent_prefetch as pp
    import persistent_step_bench as ps

    bf = dict(dtype=torch.bfloat16)
    z = lambda *shape: torch.zeros(*shape, **bf)  # noqa: E731
    i32 = lambda n: torch.zeros(n, dtype=torch.int32)  # noqa: E731
    from _persistent_stages import teacher_shape

    t = teacher_shape()
    L, D, H, HKV, HD, F, P, T = t["L"], t["D"], t["H"], t["HKV"], t["HD"], t["F"], 132, 256
    shape = dict(D=D, H=H, HKV=HKV, HD=HD, F=F)
    stack = (z(D), z(L, D), z(L, (H + 2 * HKV) * HD, D), z(L, HKV, T, HD), z(L, HKV, T, HD), z(L, D, H * HD), z(L, D),
             z(L, 2 * F, D), z(L, D, F), z(H * HD), torch.zeros(H * 4 * (HD + 2)), z(F), torch.zeros(HD // 2),
             torch.zeros(HD // 2), i32(1), i32(1), L, T - 1, T, 1e-5, HD**-0.5)  # fmt: skip
    rq, rd, rg = min(pp.rows_for((H + 2 * HKV) * HD, P), HD), pp.rows_for(D, P), pp.rows_for(2 * F, P)
    B = 16  # persistent_batch.py: the stack for 16 rows of x (caches (L, B, HKV, T, HD))
    batch_stack = (z(B, D), *stack[1:3], z(L, B, HKV, T, HD), z(L, B, HKV, T, HD), *stack[5:9], z(B * H * HD),
                   torch.zeros(B * H * HD), z(B * F), *stack[12:])  # fmt: skip
    return [
        ("persistent barrier", gs._barrier_kernel, (P,), (i32(2 * P), i32(1), i32(1), 600),
         dict(POLL_LOAD=True, MAX_SPIN=gs.MAX_SPIN, num_warps=4)),
        ("persistent mlp_stack", pm._mlp_stack_kernel, (P,), (z(D), z(L, D), z(L, 2 * F, D), z(L, D, F), z(F), i32(1),
         i32(1), L, 1e-5), dict(D=D, F=F, ROWS_GU=32, ROWS_D=4, BLOCK_K=128, BLOCK_F=512, POLL_LOAD=True,
                                MAX_SPIN=pm.MAX_SPIN, num_warps=8)),
        ("persistent step_stack", ps._step_stack_kernel, (P,), stack,
         dict(**shape, ROWS_QKV=16, ROWS_D=4, ROWS_GU=32, BLOCK_K=128, BLOCK_F=512, BLOCK_T=64, POLL_LOAD=True,
              MAX_SPIN=ps.MAX_SPIN, num_warps=8)),
        *[(f"persistent prefetch_stack{' arrive_first' if split else ''}", pp._prefetch_stack_kernel, (P,), stack,
           dict(**shape, ROWS_QKV=rq, ROWS_D=rd, ROWS_GU=rg, DP=1024, AP=1024, FP=2048, BLOCK_T=64, SPLITS=4,
                MAX_SPIN=pp.MAX_SPIN, SPLIT_SYNC=split, POLL_LOAD=not split, num_warps=8)) for split in (False, True)],
        ("persistent batch_stack", pb._batch_stack_kernel, (P,), batch_stack,
         dict(**shape, B=16, ROWS_QKV=16, ROWS_D=16, ROWS_GU=32, BP=16, DP=1024, AP=1024, FP=2048, BLOCK_T=64,
              SPLITS=1, MAX_SPIN=pb.MAX_SPIN, DOT_FP32=False, num_warps=8)),
    ]  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--op",
        choices=[
            "scan",
            "gemv",
            "attn",
            "kd_loss",
            "based",
            "la",
            "la_cp",
            "mamba_step",
            "moe_step",
            "moe_grouped",
            "argmax",
            "conv",
            "gemv_conv",
            "s4_step",
            "rope_write",
            "persistent",
        ],  # fmt: skip
        default="scan",
    )
    ap.add_argument("--b", type=int, default=4)
    ap.add_argument("--d", type=int, default=2048)
    ap.add_argument("--l", type=int, default=4096)
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--config", default="{}", help="JSON for the op's CONFIG_OVERRIDE")
    ap.add_argument("--sass", help="write each kernel's SASS to this folder")
    ap.add_argument("--all-configs", action="store_true", help="based: every autotune config, not the defaults")
    ap.add_argument("--pdl", action="store_true", help="gemv, s4_step, rope_write: launched with PDL")
    args = ap.parse_args()
    if args.pdl:
        from archzoo.kernels.decode_linear import triton as gt

        gt.pdl_enabled = lambda device: True  # as on an sm_90 GPU with archzoo.kernels._pdl.ENABLED
    if args.op == "gemv":  # e.g. --config '{"L2_PREFETCH": true}' (with --pdl)
        from archzoo.kernels.decode_linear import triton as gt

        gt.CONFIG_OVERRIDE.update(json.loads(args.config))
    if args.op == "scan":
        calls = _scan_calls(args.b, args.d, args.l, args.n, json.loads(args.config))
        print(f"triton {triton.__version__}, sm_90, b={args.b} d={args.d} l={args.l} n={args.n}")
    else:
        based = lambda: _based_calls(T=args.l, all_configs=args.all_configs)  # noqa: E731
        calls = {
            "gemv": _gemv_calls,
            "attn": lambda: _attn_calls(config=json.loads(args.config)),
            "kd_loss": _kd_loss_calls,
            "based": based,
            "la": _la_calls,
            "la_cp": _la_cp_calls,
            "mamba_step": lambda: _mamba_step_calls(config=json.loads(args.config)),
            "moe_step": _moe_step_calls,
            "moe_grouped": lambda: _moe_grouped_calls(config=json.loads(args.config)),
            "argmax": _argmax_calls,
            "conv": lambda: _conv_calls(args.b, args.d, args.l, json.loads(args.config)),
            "gemv_conv": _gemv_conv_calls,
            "s4_step": lambda: _s4_step_calls(args.pdl),
            "rope_write": lambda: _rope_write_calls(args.pdl),
            "persistent": _persistent_calls,
        }[args.op]()
        print(f"triton {triton.__version__}, sm_90, {args.op}")
    for name, fn, grid, a, kw in calls:
        rep = report(compile_call(fn, a, kw))
        meta = {k: v for k, v in kw.items() if k.isupper() or k in ("num_warps", "num_stages", "launch_pdl")}
        print(f"{name}: grid={grid} {meta}")
        print(f"  regs={rep['regs']} stack={rep['stack']}B shared={rep['shared']}B  {rep['sass']}")
        if args.sass:
            os.makedirs(args.sass, exist_ok=True)
            stem = name.split()[0] + ("_inf" if "inference" in name else "")
            if args.op in ("based", "moe_grouped", "persistent"):
                stem = name.replace(" ", "_")
            with open(os.path.join(args.sass, stem + ".sass"), "w") as f:
                f.write(rep["sass_text"])


if __name__ == "__main__":
    main()
