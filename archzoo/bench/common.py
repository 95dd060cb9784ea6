"""What the benchmarks share: dtype names, device checks, weight bytes, the measured copy bandwidth,
synchronised timing, seeded random prompts and windows of real text, library versions and atomic writes
(``bench decode`` and the Pareto suite both use them)."""

from __future__ import annotations

import collections
import math
import platform
import time
from collections.abc import Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from ..errors import UserError
from ..saving import atomic_write  # noqa: F401  (re-exported: the bench modules import it from here)

DTYPES = {
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
    "fp32": torch.float32,
    "float32": torch.float32,
}


class OpCounter(TorchDispatchMode):
    """Counts the ATen ops dispatched inside it, by op (``ops``) and in all (``n``): on the CPU, the ops a GPU
    would launch eagerly, each with its host cost (``archzoo bench kernels --ops moe``, tools/count_step_ops.py,
    the MoE layer's op-count test)."""

    def __init__(self):
        super().__init__()
        self.ops: collections.Counter = collections.Counter()

    @property
    def n(self) -> int:
        return sum(self.ops.values())

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))


def parse_dtype(name: str | torch.dtype) -> torch.dtype:
    if isinstance(name, torch.dtype):
        return name
    if name not in DTYPES:
        raise UserError(f"--dtype: unknown dtype {name!r}; expected one of {', '.join(DTYPES)}")
    return DTYPES[name]


def dtype_name(dtype: torch.dtype) -> str:
    return {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}.get(dtype, str(dtype))


def check_device(device: str) -> torch.device:
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise UserError(f"--device: {device!r} is not a device; expected cpu or cuda[:N]") from None
    if dev.type not in ("cpu", "cuda"):
        raise UserError(f"--device: {device!r}: expected cpu or cuda[:N]")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
            raise UserError(
                f"--device {device}: CUDA is not available (torch {torch.__version__}, {build}); use --device cpu"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UserError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) visible")
    return dev


def weight_bytes(module: torch.nn.Module) -> int:
    """Bytes of every parameter, each storage once (a tied embedding and head count once)."""
    seen, total = set(), 0
    for p in module.parameters():
        key = (p.device, p.data_ptr(), p.nbytes) if p.device.type != "meta" else id(p)
        if key in seen:
            continue
        seen.add(key)
        total += p.numel() * p.element_size()
    return total


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_bandwidth(device: str | torch.device, nbytes: int | None = None, rounds: int = 5) -> dict:
    """Memory bandwidth of a large copy on ``device``: (bytes read + written) / time, best of ``rounds``.

    ``nbytes`` defaults to 1 GiB on a GPU (halved until it fits) and 128 MiB on the CPU.
    """
    device = torch.device(device)
    cuda = device.type == "cuda"
    nbytes = nbytes or (2**30 if cuda else 2**27)
    while True:
        try:
            src = torch.empty(nbytes, dtype=torch.uint8, device=device).fill_(1)
            dst = torch.empty_like(src)
            break
        except torch.OutOfMemoryError:
            if nbytes <= 2**24:
                raise
            nbytes //= 2
    copies = 10 if cuda else 2
    for _ in range(2):
        dst.copy_(src)
    best = math.inf
    for _ in range(rounds):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(copies):
                dst.copy_(src)
            end.record()
            end.synchronize()
            seconds = start.elapsed_time(end) / 1e3
        else:
            t0 = time.perf_counter()
            for _ in range(copies):
                dst.copy_(src)
            seconds = time.perf_counter() - t0
        best = min(best, seconds)
    del src, dst
    if cuda:
        torch.cuda.empty_cache()
    return {
        "bytes_per_s": 2 * nbytes * copies / best,
        "copy_bytes": nbytes,
        "method": f"dst.copy_(src) of {nbytes / 2**20:.0f} MiB, {copies} copies, best of {rounds} rounds, "
        + ("CUDA events" if cuda else "perf_counter"),
    }


def timed(fn: Callable[[], object], device: torch.device) -> tuple[object, float]:
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - t0


def random_prompts(vocab_size: int, batch_size: int, prompt_len: int, seed: int, device: torch.device) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed * 1_000_003 + batch_size * 10_007 + prompt_len)
    return torch.randint(0, vocab_size, (batch_size, prompt_len), generator=g).to(device)


def text_prompts(stream: torch.Tensor, batch_size: int, prompt_len: int, device: torch.device) -> torch.Tensor:
    """``batch_size`` windows of ``prompt_len`` tokens of a token stream (N,), spread evenly over it, one per row.

    Windows overlap where the stream holds fewer than ``batch_size * prompt_len`` tokens, so any batch fits a
    stream of at least ``prompt_len`` tokens; they are distinct wherever the stream is longer than that. The same
    arguments give the same prompts, so every implementation of a shape decodes the same text.
    """
    n = int(stream.numel())
    if n < prompt_len:
        raise UserError(f"--prompts: the text holds {n} tokens, fewer than a {prompt_len}-token prompt")
    starts = torch.linspace(0, n - prompt_len, batch_size).round().long()  # one start (0) for a batch of 1
    return torch.stack([stream[s : s + prompt_len] for s in starts.tolist()]).to(device)


def library_versions() -> dict:
    out = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda}
    for name in ("triton", "transformers"):
        try:
            out[name] = __import__(name).__version__
        except ImportError:
            out[name] = None
    return out
