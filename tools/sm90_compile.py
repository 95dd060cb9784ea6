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
_OPS = ("SHFL", "MUFU", "BAR", "LDG", "STG", "LDS", "STS", "RED", "ATOM", "FFMA", "FMUL", "FADD", "LDL", "STL", "BRA")


@contextmanager
def record_launches(module):
    """Replace ``module.launch`` (archzoo.kernels._launch.launch) by a recorder for the duration; yields the
    list of recorded calls (kernel, grid, positional args, keyword args) in ``kernel[grid](...)`` form."""
    calls: list = []

    def recorder(kernel, grid, ptrs, ints, consts, num_warps, device):
        names = kernel.arg_names[len(ptrs) + len(ints) :]
        calls.append((kernel, grid, (*ptrs, *ints), {**dict(zip(names, consts, strict=True)), "num_warps": num_warps}))

    with mock.patch.object(module, "launch", recorder):
        yield calls


def compile_call(fn, args: tuple, kwargs: dict, arch: int = 90):
    """Compile one recorded call as Triton's JIT would specialise it on a GPU."""
    kwargs = dict(kwargs)
    num_warps = kwargs.pop("num_warps", 4)
    num_stages = kwargs.pop("num_stages", 3)
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
    options = dict(num_warps=num_warps, num_stages=num_stages)
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--op", choices=["scan"], default="scan")
    ap.add_argument("--b", type=int, default=4)
    ap.add_argument("--d", type=int, default=2048)
    ap.add_argument("--l", type=int, default=4096)
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--config", default="{}", help="JSON for the op's CONFIG_OVERRIDE")
    ap.add_argument("--sass", help="write each kernel's SASS to this folder")
    args = ap.parse_args()
    calls = _scan_calls(args.b, args.d, args.l, args.n, json.loads(args.config))
    print(f"triton {triton.__version__}, sm_90, b={args.b} d={args.d} l={args.l} n={args.n}")
    for name, fn, grid, a, kw in calls:
        rep = report(compile_call(fn, a, kw))
        meta = {k: v for k, v in kw.items() if k.isupper() or k == "num_warps"}
        print(f"{name}: grid={grid} {meta}")
        print(f"  regs={rep['regs']} stack={rep['stack']}B shared={rep['shared']}B  {rep['sass']}")
        if args.sass:
            os.makedirs(args.sass, exist_ok=True)
            stem = name.split()[0] + ("_inf" if "inference" in name else "")
            with open(os.path.join(args.sass, stem + ".sass"), "w") as f:
                f.write(rep["sass_text"])


if __name__ == "__main__":
    main()
