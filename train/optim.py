"""Optimizer parameter groups: which parameters take weight decay.

Layers say which of their parameters must not decay (DESIGN.md, Layering): a parameter carries
``_no_weight_decay = True`` (mamba_ssm's marker) and its module lists it in ``no_weight_decay_names``
(the class attribute survives what a per-tensor attribute may not: loading weights by assignment,
FSDP's re-wrapping). Every 1-D parameter (norm weights, biases) is excluded as well, and a run may
add globs of its own (``optimizer.no_decay``). The trainer holds no list of family parameters.
"""

from __future__ import annotations

from collections.abc import Sequence
from fnmatch import fnmatchcase

from torch import nn


def no_decay_names(model: nn.Module, no_decay: Sequence[str] = ()) -> set[str]:
    """Qualified names of the parameters of ``model`` that take no weight decay."""
    out: set[str] = set()
    for mod_name, module in model.named_modules():
        prefix = f"{mod_name}." if mod_name else ""
        marked = set(getattr(module, "no_weight_decay_names", ()))
        for name, p in module.named_parameters(recurse=False):
            if getattr(p, "_no_weight_decay", False) or name in marked:
                out.add(prefix + name)
        for dotted in marked:  # names of a child's parameters, e.g. Mamba's "dt_proj.bias"
            if "." in dotted:
                out.add(prefix + dotted)
    for name, p in model.named_parameters(remove_duplicate=False):
        if p.dim() < 2 or any(fnmatchcase(name, g) for g in no_decay):
            out.add(name)
    return out


def param_groups(model: nn.Module, weight_decay: float, no_decay: Sequence[str] = ()) -> list[dict]:
    """Two AdamW groups: ``[{params: decayed, weight_decay}, {params: the rest, weight_decay: 0}]``.

    A parameter shared under several names (tied embeddings) appears once, and is excluded from
    decay when any of its names is.
    """
    skip = no_decay_names(model, no_decay)
    names: dict[int, list[str]] = {}
    params: dict[int, nn.Parameter] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), []).append(name)
        params[id(p)] = p
    decay = [params[i] for i, ns in names.items() if not any(n in skip for n in ns)]
    keep = [params[i] for i, ns in names.items() if any(n in skip for n in ns)]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": keep, "weight_decay": 0.0}]
