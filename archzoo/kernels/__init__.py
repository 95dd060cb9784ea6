"""archzoo kernels: one function per op, each with a naive fp32 reference and a Triton kernel.

Dispatch (DESIGN.md): Triton for CUDA tensors, and for CPU tensors when ``TRITON_INTERPRET=1``
(set it before ``triton`` is first imported); the naive reference otherwise.
``last_backend(op)`` names the backend that ran ``op`` last.
"""

# traceable in a compiled decode step (custom ops)
from ._capture import (
    causal_conv1d_update,
    decode_attention,
    decode_attention_mla,
    decode_attention_ring,
    decode_linear,
    decode_linear_conv,
    decode_qkv_rope,
    decode_rope_write,
    linear_attention_update,
    selective_state_update,
)
from ._dispatch import last_backend
from .argmax import argmax_rows
from .based_attention import based_attention
from .causal_conv1d import causal_conv1d_fn
from .kd_loss import kd_loss_rows
from .linear_attention import linear_attention
from .mamba_step import mamba_decode_step
from .moe_grouped import moe_grouped_experts, naive_moe_grouped_experts
from .moe_grouped.routing import moe_route
from .moe_step import moe_decode_experts, moe_decode_step
from .s4_step import s4d_decode_step
from .selective_scan import selective_scan_fn

__all__ = [
    "argmax_rows",
    "based_attention",
    "causal_conv1d_fn",
    "causal_conv1d_update",
    "decode_attention",
    "decode_attention_mla",
    "decode_attention_ring",
    "decode_linear",
    "decode_linear_conv",
    "decode_qkv_rope",
    "decode_rope_write",
    "kd_loss_rows",
    "last_backend",
    "linear_attention",
    "linear_attention_update",
    "mamba_decode_step",
    "moe_decode_experts",
    "moe_decode_step",
    "moe_grouped_experts",
    "moe_route",
    "naive_moe_grouped_experts",
    "s4d_decode_step",
    "selective_scan_fn",
    "selective_state_update",
]
