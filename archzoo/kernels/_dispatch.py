"""Backend choice shared by the kernel packages.

Rule (DESIGN.md, Kernels): Triton for CUDA tensors, and for CPU tensors when the environment
variable ``TRITON_INTERPRET=1`` is set (Triton's interpreter); the naive fp32 reference
otherwise. The backend that ran last for each op is recorded so callers and benchmarks can
report it (``last_backend("selective_scan_fn")``); a backend other than the rule's first choice
is logged once, never taken silently.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os

import torch

log = logging.getLogger("archzoo.kernels")

_LAST_BACKEND: dict[str, str] = {}
_LOGGED: set[tuple[str, str]] = set()
# (op, device type) -> why its Triton kernel does not run there: it failed to compile (try_kernel).
_FAILED: dict[tuple[str, str], str] = {}
_NO_RESULT = object()


def kernel_failed(op: str, device_type: str) -> str | None:
    """Why ``op``'s Triton kernel is off on this device type (it failed to compile before), or None."""
    return _FAILED.get((op, device_type))


def try_kernel(op: str, device_type: str, run):
    """``run()`` -> its result; or, when the Triton kernel fails to compile there (registers, shared memory:
    before any launch, so nothing was written), ``None``, and the op's kernel stays off on that device type for
    the rest of the process (``kernel_failed``), the reason logged once by the caller's ``record``. For kernels
    tested in the interpreter but not on every GPU: the caller then runs a form that is."""
    import triton

    try:
        return run()
    except (triton.CompilationError, triton.OutOfResources) as e:
        _FAILED[(op, device_type)] = f"its Triton kernel did not compile here ({type(e).__name__}: {e})"
        return None


# Looked up once at import, not per call: a compiled region that reaches ``use_triton`` (the verify forward of a
# speculative round, compiled per block) cannot trace ``importlib.util.find_spec`` (dynamo skips it), but it
# reads a module constant.
_TRITON_INSTALLED = importlib.util.find_spec("triton") is not None


def triton_available() -> bool:
    return _TRITON_INSTALLED


@functools.cache
def outside_graphs(fn):
    """``fn`` run eagerly where a compiled region calls it: a graph break around the call, not a trace into it.

    For the sequence kernels (training, prefill): autograd Functions whose Triton kernels are launched from the host
    through ``_launch``, which dynamo cannot trace (and under the interpreter fails on with a hard error, not a
    graph break). A block compiled by ``speed.compile`` then runs in graphs before and after the kernel. Decode steps
    compiled whole (``fullgraph``) never reach these: their layers take the update kernels, custom ops."""
    return torch.compiler.disable(fn, recursive=True)


def interpret_mode() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def use_triton(*tensors: torch.Tensor | None) -> bool:
    """True when the Triton path applies to these tensors (all on CUDA, or CPU in interpret mode)."""
    ts = [t for t in tensors if t is not None]
    # Inside a compiled region the mode check (it imports triton.language) is skipped: the eager calls before
    # compiling made it, and Triton's mode cannot change after its import.
    check = not torch.compiler.is_compiling()
    if all(t.is_cuda for t in ts):
        if not triton_available():
            raise RuntimeError("archzoo kernels: CUDA tensors need the `triton` package, which is not installed")
        if check:
            check_triton_mode(cpu=False)
        return True
    if all(t.device.type == "cpu" for t in ts) and interpret_mode() and triton_available():
        if check:
            check_triton_mode(cpu=True)
        return True
    return False


def triton_interpreting() -> bool:
    """True when Triton was imported in interpreter mode (its kernels then run on CPU tensors)."""
    import triton.language as tl

    return type(tl.standard.sigmoid).__name__ == "InterpretedFunction"


def check_triton_mode(cpu: bool) -> None:
    """Fail loudly when Triton's import-time mode does not fit the tensors' device."""
    if cpu and not triton_interpreting():
        raise RuntimeError(
            "TRITON_INTERPRET=1 is set but Triton was imported before it was; set the variable before the "
            "first `import triton` (Triton fixes compiled vs interpreted mode when its kernels are defined)"
        )
    if not cpu and triton_interpreting():
        once("triton_interpreted", "Triton is in interpreter mode (TRITON_INTERPRET=1): CUDA tensors run slowly")


def once(key: str, msg: str) -> None:
    if (key, msg) not in _LOGGED:
        _LOGGED.add((key, msg))
        log.warning("archzoo.kernels: %s", msg)


def record(op: str, backend: str, reason: str | None = None) -> None:
    """Remember which backend ran ``op``; log once per (op, backend) when a reason is given."""
    _LAST_BACKEND[op] = backend
    if reason is not None and (op, backend) not in _LOGGED:
        _LOGGED.add((op, backend))
        log.warning("archzoo.kernels.%s: using backend '%s' (%s)", op, backend, reason)


def forget(*ops: str) -> None:
    """Clear what ``last_backend`` says of ``ops`` (a benchmark row then reads only what its own calls ran)."""
    for op in ops:
        _LAST_BACKEND.pop(op, None)


def last_backend(op: str) -> str | None:
    """Backend that ran ``op`` most recently in this process: 'triton', 'naive', 'causal_conv1d', or None."""
    return _LAST_BACKEND.get(op)


def check_same_device(**tensors: torch.Tensor | None) -> None:
    devs = {name: t.device for name, t in tensors.items() if t is not None}
    if len(devs) > 1 and len(set(devs.values())) > 1:
        raise ValueError(f"all tensors must be on one device, got {', '.join(f'{k}: {v}' for k, v in devs.items())}")
