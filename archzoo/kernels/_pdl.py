"""Programmatic dependent launch (PDL) for the decode step's kernels: what it is for, and the switch.

At batch 1 a decode step is a chain of small kernels, each of which reads a few megabytes of weights at most:
on an H100 the teacher's GEMVs took about 4.5 us each for 0.7-3.5 MB, a launch, one round trip to HBM and a
drain, not bandwidth (docs/decode.md, "The decode GEMV"). With PDL (compute capability 9.0 and later, a
launch attribute that CUDA graphs keep) a kernel may start while the one before it is still running: each of
our decode kernels first lets the next one launch (``gdc_launch_dependents``), and a GEMV loads its first
weight tile, which no kernel of the step writes, before it waits for the kernel before to finish and its
writes to be visible (``gdc_wait``); everything else it reads (x, the residual, the caches) comes after the
wait. The weight loads of one kernel then overlap the tail of the one before.

The rule that keeps it correct: a kernel launched with PDL must call ``gdc_wait`` before it touches anything
an earlier kernel writes or reads-then-overwrites; kernels launched without it (cuBLAS, Inductor's) are
ordered by the stream as always. Both calls are no-ops in a kernel launched without the attribute.

``ENABLED``: None (the default since 2026-12-05) launches with PDL wherever it can run; True asks for it; False
never. On a CUDA device where it cannot run, either of the first two says why once (a warning), as every fast path
not taken does (``_dispatch``). Kernels plan with
``pdl_enabled(device)``, which needs a Triton that has the intrinsics (3.4 and later), CUDA, and compute capability
9.0 or later. Measured on an H100 (``archzoo bench decode --decode-linear kernel,kernel-pdl``, one process;
docs/decode.md): the teacher's step with the decode GEMV at batch 1 ran 1,261 tokens/s without PDL and 1,614
with it (1.28x), at batch 16 13,926 and 14,818; PDL never lost.
"""

from __future__ import annotations

import torch
import triton

from ._dispatch import once

try:  # Triton >= 3.4; the kernels' PDL constexpr keeps the calls out of the kernel where they are absent
    from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

    HAS_PDL = True
except ImportError:  # pragma: no cover - an older Triton
    HAS_PDL = False

    @triton.jit
    def gdc_launch_dependents():
        pass

    @triton.jit
    def gdc_wait():
        pass


ENABLED: bool | None = None
# The SSM decode steps' update kernels (causal_conv1d_update, selective_state_update) join the PDL chain where
# ``pdl_enabled`` holds and this is True. Between a Mamba layer's PDL-launched GEMVs they are the two kernels
# launched without it, so the GEMV after each cannot load its weights early. Built in the seventeenth session on
# the CPU; in the eighteenth the GPU tests passed (captured greedy tokens with and without, mamba and jamba, bf16)
# and the A/B (H100, tools/decode_profile.py --update-pdl on,off, docs/results/decode/profile_h100_inprojconv.log)
# took Jamba's batch-1 step 0.605 -> 0.548 ms with the in_proj + conv GEMV, 0.679 -> 0.571 without. On.
UPDATE_KERNELS = True
_MAJOR: dict[int, int] = {}


def pdl_enabled(device: torch.device) -> bool:
    """Whether kernels on ``device`` launch with PDL: ``ENABLED``, a Triton with the intrinsics, CUDA (not the
    interpreter, not ROCm) and compute capability 9.0 or later."""
    if ENABLED is False or device.type != "cuda":  # the interpreter (CPU tensors) never launches with PDL
        return False
    if not HAS_PDL or torch.version.hip is not None:
        _without(f"{'ROCm' if HAS_PDL else 'this Triton has no gdc_wait (3.4 or later has)'}")
        return False
    index = device.index if device.index is not None else torch.cuda.current_device()
    major = _MAJOR.get(index)
    if major is None:
        major = _MAJOR[index] = torch.cuda.get_device_capability(index)[0]
    if major < 9:
        _without(f"compute capability {major}.x (PDL needs 9.0 or later)")
    return major >= 9


def _without(why: str) -> None:
    """Say once why the decode kernels launch without PDL on CUDA: asked for (``ENABLED`` True) or by default."""
    asked = "archzoo.kernels._pdl.ENABLED, but " if ENABLED else ""
    once("pdl", f"{asked}the decode kernels launch without programmatic dependent launch: {why}")


__all__ = ["ENABLED", "HAS_PDL", "gdc_launch_dependents", "gdc_wait", "pdl_enabled"]
