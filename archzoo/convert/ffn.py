"""FFN initialisers for the dense families: a SwiGLU student copies the teacher's; ``none`` has nothing.

Every FFN converter takes the teacher's and the student's blocks, since it also fills the FFN's
pre-norm. ``teacher_dense_ffn`` checks what all of them need: a dense SwiGLU to start from.
"""

from __future__ import annotations

from ..layers.mlp import SwiGLU
from . import ConvertContext


def teacher_dense_ffn(tblock, i: int, ctx: ConvertContext) -> SwiGLU:
    src = tblock.ffn
    if src is None:
        raise ValueError(f"student layer {i} has an FFN but teacher layer {ctx.layer_map[i]} has none")
    if not isinstance(src, SwiGLU):
        raise ValueError(f"teacher layer {ctx.layer_map[i]}: only a dense SwiGLU FFN can be converted from")
    return src


def copy_swiglu(tblock, block, i: int, ctx: ConvertContext) -> None:
    src, dst = teacher_dense_ffn(tblock, i, ctx), block.ffn
    if dst.gate_proj.weight.shape != src.gate_proj.weight.shape:
        raise ValueError(
            f"layer {i}: student d_ff {dst.gate_proj.out_features} != teacher d_ff {src.gate_proj.out_features}"
        )
    block.ffn_norm.weight.copy_(tblock.ffn_norm.weight)
    dst.load_state_dict(src.state_dict())


def no_ffn(tblock, block, i: int, ctx: ConvertContext) -> None:
    """``ffn: {type: none}``: the student block has no FFN, so nothing is copied."""
