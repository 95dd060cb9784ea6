"""Dense SwiGLU -> MoE by sparse upcycling (Komatsuzaki et al. 2023, "Sparse Upcycling: Training
Mixture-of-Experts from Dense Checkpoints").

Every routed expert starts as a copy of the dense MLP plus small Gaussian noise (relative std
``moe_noise``, default 0.01) so experts can specialise; shared experts are copies. With shared
experts, every expert's output projection is scaled by 1 / (1 + n_shared) so that routed and
shared outputs add up to the dense MLP's. The router is new: N(0, 0.02 / sqrt(d_model))-small,
so routing starts near uniform. With the router's top-k probabilities renormalised
(``norm_topk_prob``), the upcycled layer's output at start equals the dense MLP's up to the
noise, whatever the routing.
"""

from __future__ import annotations

import torch

from . import ConvertContext
from .ffn import teacher_dense_ffn


def convert_moe(tblock, block, i: int, ctx: ConvertContext) -> None:
    """The FFN converter of the ``moe`` family: the teacher's dense SwiGLU upcycled into the experts."""
    src = teacher_dense_ffn(tblock, i, ctx)
    block.ffn_norm.weight.copy_(tblock.ffn_norm.weight)
    upcycle(src, block.ffn, ctx)


def upcycle(src, dst, ctx: ConvertContext) -> None:
    if dst.gate_proj.weight.shape[1:] != src.gate_proj.weight.shape:
        raise ValueError(
            f"MoE expert d_ff {dst.gate_proj.weight.shape[1]} must equal the teacher's d_ff "
            f"{src.gate_proj.weight.shape[0]} to upcycle"
        )
    noise = float(ctx.options["moe_noise"])
    # Routed experts (top-k weights sum to 1) and shared experts add up to the dense MLP.
    share = 1.0 / (1 + len(dst.shared_experts))
    for name in ("gate_proj", "up_proj", "down_proj"):
        w = getattr(src, name).weight
        if name == "down_proj":
            w = w * share
        stacked = getattr(dst, name).weight  # (E, out, in)
        eps = torch.randn(stacked.shape, generator=ctx.generator, dtype=torch.float32).to(w.device)
        stacked.copy_(w[None] + noise * w.float().std() * eps)
    for shared in dst.shared_experts:
        shared.load_state_dict(src.state_dict())
        shared.down_proj.weight.mul_(share)
    d = dst.router.in_features
    dst.router.weight.copy_(torch.randn(dst.router.weight.shape, generator=ctx.generator) * 0.02 / d**0.5)
    if not dst.norm_topk_prob:
        ctx.notes.append("MoE without norm_topk_prob: upcycled outputs are scaled by the top-k probability mass")
