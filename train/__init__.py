"""Lightning distillation trainer, installed as ``archzoo.train``.

``run_distill(config, output_dir, resume=False)`` runs a run YAML (configs/distill/); ``evaluate``
gives held-out perplexities and the KL to the teacher; ``load_run_config`` validates a run YAML.
Names are imported on first use, so ``import archzoo.train`` does not import Lightning.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "run_distill": "run",
    "load_run_config": "config",
    "RunConfig": "config",
    "DistillModule": "module",
    "NonFiniteLossError": "module",
    "DistillDataModule": "data",
    "distill_loss": "losses",
    "evaluate": "evaluation",
    "param_groups": "optim",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'archzoo.train' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value
