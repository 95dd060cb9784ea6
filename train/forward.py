"""Forward passes the trainer needs beyond ``model(ids)``: final hidden states and mixer taps."""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn


def final_hidden(model: nn.Module, input_ids: torch.Tensor, n_blocks: int | None = None) -> torch.Tensor:
    """(B, T) ids -> (B, T, d_model) hidden states after the final norm, without the LM head
    (``ArchZooLM.hidden_states``); with ``n_blocks``, the residual stream after the first blocks."""
    return model.hidden_states(input_ids, n_blocks=n_blocks)


@contextmanager
def tap_mixers(model: nn.Module, layers: list[int]):
    """Record each listed block's mixer input (the mixer_norm output) and output during a forward.

    Yields a dict filled by forward hooks: ``{layer: (input (B, T, d), output (B, T, d))}``.
    """
    taps: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def hook(i: int):
        def fn(_module, args, output):
            taps[i] = (args[0], output)

        return fn

    handles = [model.blocks[i].mixer.register_forward_hook(hook(i)) for i in layers]
    try:
        yield taps
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def teacher_mixer_io(teacher: nn.Module, input_ids: torch.Tensor, layers: list[int]):
    """The teacher's mixer inputs and outputs at ``layers`` (teacher indices), running only the
    blocks up to the deepest one. Returns ``{layer: (input, output)}``."""
    with tap_mixers(teacher, layers) as taps:
        final_hidden(teacher, input_ids, n_blocks=max(layers) + 1)
    return dict(taps)
