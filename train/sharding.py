"""Sharded data parallelism for the distillation trainer (``trainer.strategy: fsdp``).

The student is sharded with PyTorch's FSDP2 (``torch.distributed.fsdp.fully_shard``; Zhao et al.
2023, "PyTorch FSDP", ZeRO-3 in Rajbhandari et al. 2020) under Lightning's
``ModelParallelStrategy``, restricted here to one data-parallel mesh dimension over every process.

Why FSDP2 and not Lightning's ``FSDPStrategy`` (FSDP1), read from lightning 2.6.6 and torch 2.13:

- Lightning refuses FSDP1 without a GPU (``accelerator_connector._check_strategy_and_fallback``:
  "The strategy `fsdp` requires a GPU accelerator"); ``ModelParallelStrategy`` runs on CPU with
  gloo, so the sharded path is tested on CPU with two processes (tests/test_train_fsdp.py).
- Lightning's FSDP1 precision plugin refuses ``gradient_clip_algorithm: norm`` (our default);
  ``torch.nn.utils.clip_grad_norm_`` computes the global norm of FSDP2's DTensor gradients.
- FSDP1 flattens each unit's parameters into one ``FlatParameter``: with ``use_orig_params=True``
  it tolerates frozen and trainable parameters in one unit but computes and reduce-scatters the
  gradient of the whole flat tensor (torch's docs advise against mixing). Stages freeze by name
  from step to step. FSDP2 keeps every parameter a DTensor under its own name with its own
  ``requires_grad``, copied onto the gathered parameter at each all-gather, and reduce-scatters
  only the gradients that exist.
- Checkpoints: with ``save_distributed_checkpoint=False`` the strategy gathers the full model and
  optimizer state and rank 0 writes one ``last.ckpt`` through the run's checkpoint IO (atomic);
  the model state has the ``student.*`` keys of a one-device run, and ``--resume`` loads the file
  into the shards.

FSDP units (``shard_student``): every block's mixer, every block (its norms and FFN), and the
student itself (embedding, final norm, LM head: a tied embedding and head must share a unit).
An align stage calls mixers directly, so each mixer gathers its own weights. The root unit keeps
its weights gathered after forward (``reshard_after_forward=False``): the KD and validation steps
read ``lm_head.weight`` after ``hidden_states``, which is registered as an FSDP forward method.
The teacher is not a registered child of the LightningModule and is never sharded: every rank
holds a full frozen copy.
"""

from __future__ import annotations

from pathlib import Path

import torch
from lightning.pytorch.strategies import ModelParallelStrategy
from torch import nn
from torch.distributed.fsdp import FSDPModule, fully_shard, register_fsdp_forward_method


class FSDP2Strategy(ModelParallelStrategy):
    """``ModelParallelStrategy`` as plain FSDP2: data-parallel size = every process, tensor-parallel
    size 1, full (not distributed) checkpoints. ``DistillModule.configure_model`` does the sharding."""

    def __init__(self) -> None:
        super().__init__(save_distributed_checkpoint=False)

    def setup_environment(self) -> None:
        self._data_parallel_size = self.num_nodes * self.num_processes
        self._tensor_parallel_size = 1
        super().setup_environment()


def shard_student(student: nn.Module, mesh) -> None:
    """Apply FSDP2 to ``student`` in place: one unit per mixer, per block, and the rest at the root.

    ``mesh``: a 1-D data-parallel DeviceMesh. Parameter names and ``requires_grad`` stay as they were.
    """
    if isinstance(student, FSDPModule):
        raise ValueError("the student is already sharded")
    for block in student.blocks:
        fully_shard(block.mixer, mesh=mesh, reshard_after_forward=True)
        fully_shard(block, mesh=mesh, reshard_after_forward=True)
    fully_shard(student, mesh=mesh, reshard_after_forward=False)
    register_fsdp_forward_method(student, "hidden_states")


def is_sharded(model: nn.Module) -> bool:
    return isinstance(model, FSDPModule)


def fsdp_units(model: nn.Module) -> list[str]:
    """Names of the modules that are FSDP units ('' for the root), in module order."""
    return [name for name, m in model.named_modules() if isinstance(m, FSDPModule)]


@torch.no_grad()
def init_root(student: nn.Module) -> None:
    """Make ``student`` FSDP2's root by running it once on one token (every rank must call this).

    FSDP2 takes as root the first unit whose forward runs; an align stage calls mixers directly,
    which would make a mixer the root and break the student's next forward."""
    ids = torch.zeros((1, 1), dtype=torch.long, device=student.embed.weight.device)
    student.hidden_states(ids)


def reshard(model: nn.Module) -> None:
    """Free every unit's gathered weights, so the next all-gather copies ``requires_grad`` afresh
    from the sharded parameters (a unit that is still gathered would keep the old flags)."""
    for m in model.modules():
        if isinstance(m, FSDPModule):
            m.reshard()


def gathered(param: torch.Tensor, name: str) -> torch.Tensor:
    """``param`` read outside its unit's forward; fails loudly if FSDP left it sharded."""
    from torch.distributed.tensor import DTensor

    if isinstance(param, DTensor):
        raise RuntimeError(f"{name} is still sharded where the trainer needs the gathered weight")
    return param


class _FullStudent:
    """The three things ``archzoo.checkpoint.save_pretrained`` reads from a model, with a gathered state dict."""

    def __init__(self, student: nn.Module, state: dict[str, torch.Tensor]):
        self.cfg, self.tokenizer, self._state = student.cfg, getattr(student, "tokenizer", None), state

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self._state


def full_state_dict(student: nn.Module) -> dict[str, torch.Tensor]:
    """The student's unsharded weights on the CPU: on rank 0 for a sharded student (collective: every
    rank must call it; the other ranks get an empty dict), else ``state_dict()``."""
    if not is_sharded(student):
        return {k: v.detach().cpu() for k, v in student.state_dict().items()}
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(student, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def save_student(student: nn.Module, path: Path, is_global_zero: bool) -> None:
    """``save_pretrained`` of the full student, written once by rank 0 (atomically, safetensors).

    Collective for a sharded student (every rank must call it); otherwise only rank 0 does anything."""
    from archzoo.checkpoint import save_pretrained

    if is_sharded(student):
        state = full_state_dict(student)
        if is_global_zero:
            save_pretrained(_FullStudent(student, state), path)
    elif is_global_zero:
        student.save_pretrained(path)
