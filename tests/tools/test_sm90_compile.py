"""tools/sm90_compile.py: the scan's CUDA kernels compile for sm_90 without a GPU (ptxas ships with Triton)."""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
import triton

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
BIN = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")

# The tool's runs by key: each is a CPU-bound process of its own (Triton's compiler, ptxas), 4-20 s on CI.
SCAN_ARGS = ["--b", "1", "--d", "64", "--l", "256", "--n", "4"]
OPS = {
    "gemv": 38,
    "gemv --pdl": 38,
    "attn": 7,
    'attn --config {"SINGLE_MAX_T":256}': 6,  # batch 16's 256-position buffer in one tile: no merge kernel
    "kd_loss": 8,
    "la": 7,
    "moe_grouped": 13,
    "argmax": 4,
    "conv": 2,
    "gemv_conv": 2,
    "s4_step --pdl": 2,
    "rope_write --pdl": 2,
}
RUNS = {"scan": SCAN_ARGS, **{f"--op {op}": ["--op", *op.split()] for op in OPS}, "--op based": ["--op", "based"],
        "--op persistent": ["--op", "persistent"]}  # fmt: skip
UNPARAMETRISED = {
    "test_scan_kernels_compile_for_sm90_as_the_gpu_would_specialise_them": "scan",
    "test_based_attention_kernels_compile_for_sm90": "--op based",
    "test_persistent_decode_kernels_compile_for_sm90": "--op persistent",
}


def _run(args: list[str]) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # the real JIT, not the interpreter
    return subprocess.run([sys.executable, "tools/sm90_compile.py", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=240)  # fmt: skip


@pytest.fixture(scope="module")
def sm90(request):
    """key -> the tool's finished run. The runs of the tests selected in this module start together, as many at a
    time as there are CPUs, longest first (the two GEMV runs): on CI's two cores the module takes about half the
    sum of its runs. Each test still reads only its own run's output. Under pytest-xdist (the README's ``-n auto``)
    each worker runs only its own tests' runs, when they come: every worker sees the whole module's items, so
    starting them all would compile each run once per worker."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        yield lambda key: _run(RUNS[key])
        return
    keys = []
    for item in request.session.items:
        if item.module is not request.module:
            continue
        params = item.callspec.params if hasattr(item, "callspec") else {}
        key = f"--op {params['op']}" if "op" in params else UNPARAMETRISED.get(item.originalname)
        if key is not None and key not in keys:
            keys.append(key)
    keys.sort(key=lambda k: "gemv" not in k)  # stable: the two long runs first
    with ThreadPoolExecutor(max_workers=max(1, min(len(keys), os.cpu_count() or 1))) as pool:
        runs = {k: pool.submit(_run, RUNS[k]) for k in keys}
        yield lambda key: (runs[key] if key in runs else pool.submit(_run, RUNS[key])).result()


@pytest.mark.skipif(not os.path.exists(os.path.join(BIN, "ptxas")), reason="this Triton wheel carries no ptxas")
def test_scan_kernels_compile_for_sm90_as_the_gpu_would_specialise_them(sm90):
    out = sm90("scan")
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    bwd = lines.index(next(x for x in lines if x.startswith("bwd:")))
    assert "'MIRROR': True" in lines[bwd] and "'STATES': 2" in lines[bwd], lines[bwd]  # the CUDA defaults
    regs = int(lines[bwd + 1].split("regs=")[1].split()[0])
    assert 0 < regs <= 255, lines[bwd + 1]
    assert "'SHFL'" in lines[bwd + 1], lines[bwd + 1]


@pytest.mark.skipif(not os.path.exists(os.path.join(BIN, "ptxas")), reason="this Triton wheel carries no ptxas")
@pytest.mark.parametrize("op,kernels", list(OPS.items()))
def test_gemv_and_kd_loss_kernels_compile_for_sm90_without_spills(op, kernels, sm90):
    """The decode GEMV (every teacher projection at M = 1, 16 and 64, the residual and SwiGLU epilogues, its split-K
    merged by the last program, Q|K|V with RoPE and the cache write), decode attention (its splits merged by the
    last program, or by the combine kernel), kd_loss_rows (each constexpr combination the trainer uses), linear
    attention's three kernels (its backward uses 248-250 of 255 registers) and the fused MoE experts' thirteen (the
    forward's plan, gate|up and down GEMMs and sum over the choices, gate|up saving for the backward, the backward's
    six: dhw with the SwiGLU backward, the routing weights' sum, dx and its sum, the down and gate|up weight
    gradients, and ``moe_route``'s routing with the plan's counts, at 4,096 tokens), the causal conv's forward and
    backward (the backward walking its row's tiles, ``TILES``), Mamba's decode in_proj with the conv step in its
    epilogue (M = 1 and 16), decode attention's one-tile plan for short buffers (``SINGLE_MAX_T``) and the S4D
    decode step (batch 1 and 64): kernels tested only in the interpreter on CI compile for the GPU. The RoPE
    epilogue's 32-byte stack is libdevice's cos / sin slow-path argument reduction (a local table for angles past
    ~1e5 radians; compiled with the two calls replaced by arithmetic the kernel has no stack), not a spill: allowed
    there, nowhere else. With ``--pdl`` (programmatic dependent launch, archzoo/kernels/_pdl.py) every kernel holds
    the launch of its dependents and the wait (SASS PREEXIT and ACQBULK) and still does not spill."""
    out = sm90(f"--op {op}")
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    stats = [(lines[i - 1], line) for i, line in enumerate(lines) if line.strip().startswith("regs=")]
    assert len(stats) == kernels, out.stdout
    for head, line in stats:
        if head.startswith(("qkv rope", "rope_write")):  # the RoPE epilogue (the GEMV's, or on its own)
            assert "stack=32B" in line, f"{op}: {head}: more than libdevice's trig table: {line}"
        else:
            assert "stack=0B" in line and "'STL'" not in line, f"{op}: a kernel spills: {head}: {line}"
        fixup = "'FIXUP': True" in head
        assert fixup == ("'ATOM': 1" in line), f"{op}: {head}: one atomic ticket exactly where the fixup is: {line}"
        pdl = "'PREEXIT': 1" in line and "'ACQBULK': 1" in line
        assert pdl == op.endswith("--pdl"), f"{op}: {head}: griddepcontrol in the SASS: {pdl}: {line}"


@pytest.mark.skipif(not os.path.exists(os.path.join(BIN, "ptxas")), reason="this Triton wheel carries no ptxas")
def test_based_attention_kernels_compile_for_sm90(sm90):
    """BASED attention's forward, dq and dk/dv kernels compile for the GPU in bf16 and fp32 (the interpreter, CI's
    only other test of them, accepts code the compiler refuses), the bf16 ones (the GPU recipe's) without spills."""
    out = sm90("--op based")
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    names = [line.split(":")[0] for line in lines if line.startswith(("fwd", "bwd"))]
    assert names == [f"{k} {d}" for d in ("bfloat16", "float32") for k in ("fwd", "bwd_dq", "bwd_dkdv")], names
    for i, line in enumerate(lines):
        if line.startswith(("fwd bfloat16", "bwd_dq bfloat16", "bwd_dkdv bfloat16")):
            assert "stack=0B" in lines[i + 1] and "'STL'" not in lines[i + 1], f"{line}: spills: {lines[i + 1]}"


@pytest.mark.skipif(not os.path.exists(os.path.join(BIN, "ptxas")), reason="this Triton wheel carries no ptxas")
def test_persistent_decode_kernels_compile_for_sm90(sm90):
    """The persistent decode kernels of issue 18's item 4 (tools/grid_sync_bench.py, persistent_mlp_bench.py,
    persistent_step_bench.py, persistent_prefetch.py), tested on CI only under the interpreter with one program,
    compile for the GPU at the teacher's shape: each with its barrier's release (a GPU-scope reduction) and acquire
    (an L1 invalidate). The prefetch form holds its next stage's weight tiles in registers, so it must not spill
    (186 registers with the GPU machine's Triton 3.6, 254 with 3.9); the others may keep a few words on the stack,
    which varies with Triton's version (3.6: the step stack 8 bytes, the MLP stack none; 3.9: 32 and 8)."""
    out = sm90("--op persistent")
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    stats = {lines[i - 1].split(":")[0]: line for i, line in enumerate(lines) if line.strip().startswith("regs=")}
    names = ("barrier", "mlp_stack", "step_stack", "prefetch_stack", "prefetch_stack arrive_first", "batch_stack")
    assert list(stats) == [f"persistent {k}" for k in names], stats
    for head, line in stats.items():
        assert "'RED'" in line and "'CCTL'" in line, f"{head}: no barrier in the SASS: {line}"
        stack = int(line.split("stack=")[1].split("B")[0])
        # the batch form's (B, K) operands and whole-K weight tiles exceed the registers: it spills about 1.2 KB a
        # thread (3.6 and 3.9), timed as it is (docs/decode.md, "Twenty-third session")
        limit = 0 if head.startswith("persistent prefetch_stack") else 2048 if "batch" in head else 64
        assert stack <= limit, f"{head}: spills: {line}"
