"""Helpers for tests that run the Triton kernels on CPU through Triton's interpreter.

Triton fixes compiled vs interpreted mode when ``triton`` is first imported (``TRITON_INTERPRET``).
``import_triton_kernels`` imports Triton and the requested kernel modules in interpreter mode
when there is no GPU, then restores the environment, so other tests keep the naive CPU path.
"""

from __future__ import annotations

import importlib
import os
import sys
from types import ModuleType

import torch


def import_triton_kernels(*names: str) -> tuple[list[ModuleType] | None, str | None]:
    """-> (modules, None), or (None, reason) when the Triton kernels cannot run in this process.

    With CUDA the modules are imported normally (compiled kernels for CUDA tensors); without it,
    Triton is imported in interpreter mode (kernels on CPU tensors) unless it was already imported
    compiled, which Triton cannot undo.
    """
    if importlib.util.find_spec("triton") is None:
        return None, "triton is not installed"
    if torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        return [importlib.import_module(n) for n in names], None
    if "triton" in sys.modules:
        from ._dispatch import triton_interpreting

        if not triton_interpreting():
            return None, (
                "triton was imported in compiled mode before this test module and there is no GPU; "
                "run with TRITON_INTERPRET=1 set before pytest starts"
            )
    os.environ["TRITON_INTERPRET"] = "1"  # triton.jit picks interpreted mode when a kernel is defined
    try:
        importlib.import_module("triton.language")
        try:  # imported lazily by Triton's launcher; it checks the mode at import time
            importlib.import_module("triton.experimental.gluon")
        except ImportError:
            pass
        mods = [importlib.import_module(n) for n in names]
    finally:
        del os.environ["TRITON_INTERPRET"]
    from triton.runtime.jit import JITFunction

    for mod in mods:
        if any(isinstance(v, JITFunction) for v in vars(mod).values()):
            return None, f"{mod.__name__} was imported in compiled mode before this test module and there is no GPU"
    return mods, None


def rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    """RMS(x - ref) / RMS(ref), in float64."""
    x, ref = x.double(), ref.double()
    den = ref.pow(2).mean().sqrt().item()
    num = (x - ref).pow(2).mean().sqrt().item()
    return num / den if den > 0 else num
