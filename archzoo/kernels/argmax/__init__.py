"""``argmax_rows``: the index of each row's maximum, the greedy decode step's last kernel (issue 18).

``argmax_rows(x)`` (B, V) -> (B,) int64, exactly ``torch.argmax(x, dim=-1)``: the first maximum, NaN counting as the
maximum (the first NaN wins). Two launches of one tile each (``triton.py`` says why: PyTorch's single-block
reduction took 14.7 us of a 0.49 ms batch-1 step on an H100). Dispatch: the Triton kernels for CUDA tensors, and for
CPU tensors under ``TRITON_INTERPRET=1``; ``torch.argmax`` (``naive.py``) otherwise, and for float64 (the kernels
compare in fp32) or an empty row. ``archzoo.kernels.last_backend("argmax_rows")`` says which ran. Inside
``torch.compile`` the call is a custom op (``archzoo::argmax_rows``); no host synchronisation, so a CUDA graph
captures it.
"""

from __future__ import annotations

import torch

from .._dispatch import record, use_triton
from .naive import naive_argmax_rows

OP = "argmax_rows"
MAX_LEN = 2**24  # values a row: vocabularies are far shorter; it keeps the chunks a row within a launch grid's y and
# one tile of the second kernel (4,096 chunks of 4,096 on a GPU), and the indices within int32


def _check(x: torch.Tensor) -> None:
    if x.dim() != 2:
        raise ValueError(f"x must be (rows, values), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"x must be floating point, got {x.dtype}")
    if x.shape[1] > MAX_LEN:
        raise ValueError(f"rows longer than {MAX_LEN} values are not supported, got {x.shape[1]}")


def _run(x: torch.Tensor) -> torch.Tensor:
    _check(x)
    if not use_triton(x):
        record(OP, "naive")
        return naive_argmax_rows(x)
    why = ("float64 inputs: the kernels compare in fp32" if x.dtype == torch.float64
           else "empty rows: no maximum" if x.shape[1] == 0 or x.shape[0] == 0 else None)  # fmt: skip
    record(OP, "naive" if why else "triton", why)
    if why:
        return naive_argmax_rows(x)
    from .triton import argmax_rows as fn

    return fn(x)


@torch.library.custom_op("archzoo::argmax_rows", mutates_args=())
def _op(x: torch.Tensor) -> torch.Tensor:
    return _run(x)


@_op.register_fake
def _(x):
    _check(x)
    return torch.empty(x.shape[0], device=x.device, dtype=torch.int64)


def argmax_rows(x: torch.Tensor) -> torch.Tensor:
    """x (B, V) floating point, any strides -> (B,) int64: ``torch.argmax(x, dim=-1)`` (module docstring).
    ValueError on a shape or dtype that does not fit, naming it."""
    if torch.compiler.is_compiling():
        return _op(x)
    return _run(x)


__all__ = ["OP", "argmax_rows", "naive_argmax_rows"]
