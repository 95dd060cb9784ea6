"""The SwiGLU feed-forward block (Llama's MLP)."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from .base import LayerConfig
from .fused import FusedLinears, decode_project


class SwiGLUConfig(LayerConfig):
    type: Literal["swiglu"] = "swiglu"
    d_ff: int = Field(gt=0)


class NoFFNConfig(LayerConfig):
    type: Literal["none"] = "none"


class SwiGLU(nn.Module):
    def __init__(self, d_model: int, d_ff: int):
        super().__init__()
        self.gate_proj = nn.Linear(d_model, d_ff, bias=False)
        self.up_proj = nn.Linear(d_model, d_ff, bias=False)
        self.down_proj = nn.Linear(d_ff, d_model, bias=False)
        self.fused = FusedLinears(self.gate_proj, self.up_proj)  # gate|up in one GEMM for decode steps

    @classmethod
    def from_config(cls, cfg, d_model: int) -> SwiGLU:
        return cls(d_model, cfg.d_ff)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))

    def forward_fused(self, x: torch.Tensor, norm: nn.Module | None = None) -> torch.Tensor:
        """The same through the fused gate|up copy (a decode step; see ``layers/fused.py``), on ``norm(x)`` when a
        norm is given (the block's, fused into the GEMV where it runs)."""
        gate, up = self.fused(x, norm)
        return decode_project(F.silu(gate) * up, self.down_proj.weight)
