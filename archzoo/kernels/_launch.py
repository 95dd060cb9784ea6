"""Launch cache shared by the Triton kernels: a hit calls the compiled kernel directly.

Why: Triton's ``JITFunction.run`` re-derives every argument's specialisation, reads its knobs and
rebuilds its cache key on each call: tens of microseconds of Python per launch, the larger part of
the host time of a short kernel (the conv at short l, the decode-step updates). A compiled kernel is
a function of the kernel and

- its constexprs and num_warps,
- the integer arguments' values (Triton turns an int equal to 1 into a constant, marks ints that are
  multiples of 16, and types an int i32 or i64 by its range; the key holds the exact value, which
  covers all three),
- each pointer's dtype and whether it is 16-byte aligned (Triton marks aligned pointers),
- the device.

Keyed on all of these, a hit launches the compiled kernel directly, with every argument, constexprs
included, in signature order, and a miss goes through Triton, which compiles or finds the kernel and
returns it. Under Triton's interpreter nothing is compiled (Triton returns None) and nothing is cached.
Set ``FAST_LAUNCH = False`` to launch through Triton every time.

A ``Site`` goes one step further for a caller that plans its launches (the selective scan, whose
forward+backward at short l is bound by the host): its grid, integers, constexprs, warps and device are
fixed, so ``launch_site`` keeps the kernel compiled for 16-byte aligned pointers on the site and, while
the pointers stay aligned, calls it with no key at all.

The direct launch does what ``CompiledKernel[grid](*args)`` does in Triton 3.x (call the binary launcher
``CompiledKernel.run`` on the current device's current stream) less the launch metadata and hook calls:
with no launch hook set it passes None for them, which on an H100 host takes the launch from 14 to
7 us of host time; with a hook set (a profiler) it goes through ``CompiledKernel[grid]``. The GPU tests
compare both with Triton's own launcher bit for bit.

Not in the key, so set ``FAST_LAUNCH = False`` (or clear ``_LAUNCH_CACHE``) when they change at run
time: what ``JITFunction.run`` reads at each launch besides the arguments (``TRITON_DEBUG``,
instrumentation knobs, pre-run hooks) and the kernels' global constants. The kernel launches on the
current CUDA device's current stream, as Triton's own launcher does: ``device`` must be the current device.
"""

from __future__ import annotations

import inspect

import torch
from triton import knobs
from triton.runtime.driver import driver

from ._dispatch import once

FAST_LAUNCH = True
_LAUNCH_CACHE: dict[tuple, object] = {}
_LAUNCH_CACHE_MAX = 4096  # distinct keys kept (inference sees many lengths); cleared when full
# The key holds id(kernel): hashing a JITFunction runs Python (about as long as the rest of the key). Every
# kernel with an entry is kept alive here, so its id names no other object.
_KERNELS: dict[int, object] = {}
_LAYOUTS: dict[tuple, tuple] = {}  # (kernel, n_ptrs, n_ints, n_consts) -> (name, parameter names), checked


def launch(kernel, grid: tuple, ptrs: tuple, ints: tuple, consts: tuple, num_warps: int, device: int,
           pdl: bool = False):  # fmt: skip
    """``kernel[grid](*ptrs, *ints, <constexpr params> = consts, num_warps=num_warps)`` -> the compiled kernel
    (None under the interpreter). ``pdl``: launched with programmatic dependent launch (``launch_pdl=True``,
    a compile option that the compiled kernel's launcher applies on every call; ``_pdl.py`` says when).

    The kernel's parameters must be the tensors, then the integers, then the constexprs, in that order.
    ``ptrs`` are tensors only: ``None`` is refused (Triton compiles a None argument as a constant, which
    the key's dtype / alignment cannot describe); pass a dummy tensor (another input) with a ``HAS_X``
    constexpr instead. ``ints`` are Python ints (not bools); ``grid`` a tuple of 1 to 3 ints; ``device``
    the tensors' CUDA device index (-1 on CPU), which must be the current device.
    """
    if len(grid) != 3:
        grid = (*grid, 1, 1)[:3]  # CompiledKernel[grid] reads grid[0], grid[1] and grid[2]
    key = None
    if FAST_LAUNCH:
        try:
            key = (id(kernel), num_warps, pdl, device, consts, ints,
                   *[(t.dtype, t.data_ptr() % 16 == 0) for t in ptrs])  # fmt: skip
        except AttributeError:  # a pointer that is not a tensor: say which
            _check_args(kernel, ptrs, ints, consts)
            raise
        compiled = _LAUNCH_CACHE.get(key)
        if compiled is not None:
            if _no_launch_hooks():  # what CompiledKernel[grid] does, less the metadata that only hooks read
                compiled.run(grid[0], grid[1], grid[2], _stream(), compiled.function, compiled.packed_metadata,
                             None, None, None, *ptrs, *ints, *consts)  # fmt: skip
            else:
                compiled[grid](*ptrs, *ints, *consts)
            return compiled
    _check_args(kernel, ptrs, ints, consts)
    names = kernel.arg_names[len(ptrs) + len(ints) :]
    extra = {"launch_pdl": True} if pdl else {}
    compiled = kernel[grid](*ptrs, *ints, **dict(zip(names, consts, strict=True)), num_warps=num_warps, **extra)
    if key is not None and compiled is not None:
        if len(_LAUNCH_CACHE) >= _LAUNCH_CACHE_MAX:
            _LAUNCH_CACHE.clear()
        _KERNELS[key[0]] = kernel
        _LAUNCH_CACHE[key] = compiled
    return compiled


class Site:
    """One launch whose grid, integers, constexprs, warps and device are fixed: only the tensors change.

    ``checked``: how many leading pointers may arrive unaligned (the caller's inputs); the caller vouches
    that the rest (buffers it allocates, and views of them at offsets it checked) are 16-byte aligned on
    CUDA, where the caching allocator aligns every block to 512 bytes. None checks them all."""

    __slots__ = ("kernel", "grid", "ints", "consts", "num_warps", "device", "checked", "compiled")

    def __init__(self, kernel, grid: tuple, ints: tuple, consts: tuple, num_warps: int, device: int,
                 checked: int | None = None):  # fmt: skip
        self.kernel, self.grid, self.ints, self.consts = kernel, (*grid, 1, 1)[:3], ints, consts
        self.num_warps, self.device, self.checked, self.compiled = num_warps, device, checked, None


def launch_site(site: Site, ptrs: tuple, via=None):
    """Launch ``site`` with the tensors ``ptrs`` -> the compiled kernel (None under the interpreter).

    The first call, and any call with a pointer that is not 16-byte aligned (Triton compiles another
    kernel for it), goes through ``via`` (default ``launch``; callers pass their module's name for it,
    so a test or tool that patches that name sees every launch). The kernel it returns for aligned
    pointers is kept on the site and called directly afterwards, while ``FAST_LAUNCH`` holds.
    """
    aligned = all(t.data_ptr() % 16 == 0 for t in ptrs[: site.checked])
    compiled = site.compiled
    if compiled is not None and aligned and FAST_LAUNCH:
        if _no_launch_hooks():
            compiled.run(site.grid[0], site.grid[1], site.grid[2], _stream(), compiled.function,
                         compiled.packed_metadata, None, None, None, *ptrs, *site.ints, *site.consts)  # fmt: skip
        else:
            compiled[site.grid](*ptrs, *site.ints, *site.consts)
        return compiled
    compiled = (via or launch)(site.kernel, site.grid, ptrs, site.ints, site.consts, site.num_warps, site.device)
    if aligned and FAST_LAUNCH:
        site.compiled = compiled
    elif not aligned and compiled is not None:  # said once: a slower kernel and a slower host path
        bad = [site.kernel.arg_names[i] for i, t in enumerate(ptrs[: site.checked]) if t.data_ptr() % 16]
        once(f"unaligned:{site.kernel.fn.__name__}", f"{site.kernel.fn.__name__}: pointer argument(s) {bad} are "
             "not 16-byte aligned (a view at an odd offset?); Triton compiles a kernel without vector loads for "
             "them and each such call goes through the keyed launch cache")  # fmt: skip
    return compiled


def _no_launch_hooks() -> bool:
    """True when no launch hook is set (None, or Triton's hook chains empty)."""
    rt = knobs.runtime
    for hook in (rt.launch_enter_hook, rt.launch_exit_hook):
        if hook is not None and getattr(hook, "calls", None) != []:
            return False
    return True


def _stream() -> int:
    """The current device's current stream, as Triton's launcher takes it."""
    d = driver.active
    return d.get_current_stream(d.get_current_device())


def _is_constexpr(param: inspect.Parameter) -> bool:
    ann = param.annotation
    return "constexpr" in (ann if isinstance(ann, str) else getattr(ann, "__name__", repr(ann)))


def _layout(kernel, n_ptrs: int, n_ints: int, n_consts: int) -> tuple[str, list[str]]:
    """-> (kernel name, parameter names) once the parameters are known to be n_ptrs pointers, then n_ints
    integers, then n_consts constexprs; ValueError naming the parameter otherwise."""
    layout = (kernel, n_ptrs, n_ints, n_consts)
    found = _LAYOUTS.get(layout)
    if found is not None:
        return found
    name = kernel.fn.__name__
    params = list(inspect.signature(kernel.fn).parameters.values())
    if len(params) != n_ptrs + n_ints + n_consts:
        raise ValueError(
            f"{name} takes {len(params)} arguments, got {n_ptrs} pointers + {n_ints} ints + {n_consts} constexprs"
        )
    for i, p in enumerate(params):
        if _is_constexpr(p) != (i >= n_ptrs + n_ints):
            raise ValueError(
                f"{name}: parameter {p.name!r} is out of place for launch, which takes the tensors, then the "
                "integers, then the constexprs"
            )
    _LAYOUTS[layout] = found = (name, [p.name for p in params])
    return found


def _check_args(kernel, ptrs: tuple, ints: tuple, consts: tuple) -> None:
    """ValueError naming the parameter when the arguments do not fit launch's layout (on the slow path only)."""
    name, names = _layout(kernel, len(ptrs), len(ints), len(consts))
    for p, t in zip(names, ptrs, strict=False):
        if not isinstance(t, torch.Tensor):
            raise ValueError(
                f"{name}: pointer argument {p!r} must be a tensor, got {type(t).__name__} (for an unused "
                "pointer pass a dummy tensor, not None)"
            )
    for p, v in zip(names[len(ptrs) :], ints, strict=False):
        if type(v) is not int:
            raise ValueError(f"{name}: integer argument {p!r} must be a Python int, got {type(v).__name__}")
