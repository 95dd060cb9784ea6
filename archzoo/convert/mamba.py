"""Attention -> Mamba, after "The Mamba in the Llama: Distilling and Accelerating Hybrid Models"
(Wang et al. 2024): V -> x, K -> B, Q -> C, O -> out, aware of GQA.

The paper reads linear attention ``o_t = sum_s (q_t . k_s) v_s`` as an SSM with ``x = V u``,
``B = K u``, ``C = Q u`` (u: the layer input) in its own Mamba variant, where B and C are
projected per head from the input. archzoo's block is Mamba-1 (``archzoo/layers/mamba.py``):
``x, z = in_proj(u)``; ``x = SiLU(conv(x))``; ``B, C, dt = x_proj(x)``, with B and C (d_state
each) shared by all d_inner channels and read from the convolved x, not from u. What that
block allows, and what this converter does:

- x (values). ``d_inner`` must be a multiple ``k`` of the teacher's ``n_kv_heads * head_dim``
  (else an error names an ``expand`` that fits); channel block ``m`` (``head_dim`` wide) holds
  V head ``m // k``, the x half of ``in_proj`` being the teacher's ``v_proj`` rows repeated.
  The convolution starts as the identity (last tap 1, others 0, bias 0), so the SSM's input is
  ``SiLU(V u_t)``. The SiLU is not undone: it passes large positive value components and
  squashes negative ones into [-0.28, 0]; pre-scaling V into SiLU's linear range (and O back)
  made the layer's output error larger on SmolLM2, as the D skip below then passes the whole
  current value.
- out. With ``r = n_heads / n_kv_heads`` query heads per K/V head, the ``k`` channel blocks of a
  K/V head split the output-projection columns of its ``r`` query heads by overlap (query head
  ``h`` covers ``[h/r, (h+1)/r)``, block ``j`` covers ``[j/k, (j+1)/k)``). ``k == r`` (e.g.
  expand 1 on a teacher with ``n_heads * head_dim == d_model``) gives one block per query head
  and copies ``o_proj``; otherwise the sum over blocks still equals the group's summed columns.
- B, C. One d_state-dim key/query pair for all channels cannot hold every head's score, so the
  converter targets the head-averaged score ``u_t^T M u_s`` with ``M = mean_h W_q,h^T W_k,h /
  sqrt(D)``. B and C can only see u through x, i.e. through V's row space (``n_kv * D`` dims of
  ``d_model`` for a GQA teacher), so M is restricted to that space and cut to rank d_state by
  SVD (the best such approximation, Eckart-Young): ``M ~ C_t^T B_t``. x_proj then reads
  ``C_t u`` and ``B_t u`` from the channels through the pseudo-inverse of the repeated V,
  doubled because the best linear fit of SiLU(v) on v has slope 1/2 for any v symmetric about 0
  (Stein: E[SiLU'(v)] = 1/2). On SmolLM2-135M (GQA 9/3, d_state 16) C.B correlates with the
  mean score at -0.03 to 0.65 across layers; restricted to V's row space even exact B/C reach
  only 0.13-0.82, against 0.68-0.95 for rank 16 on the full input: the row space is the loss.
- gate. ``z`` should leave ``y`` unchanged. With ``bias: true`` it is exactly neutral:
  z weights 0 and bias ``SiLU^-1(1)``. Without an ``in_proj`` bias no linear ``z`` is constant,
  so the z weights are zeroed: the layer outputs 0 (the student equals the teacher without this
  attention layer) while every other weight is in place, and training opens the gate (its
  gradient is nonzero from the first step). A note says so; ``bias: true`` is recommended.
- dt, A, D: Mamba's standard initialisation (dt rows of x_proj, dt_proj, A_log, D = 1), as
  built. D = 1 passes ``SiLU(V u_t)``, about half the current token's value, straight to out.

Measured (SmolLM2-135M, configs/students/mamba.yaml, English text; teacher perplexity 28):
perplexity right after conversion 5587 without in_proj bias (the Mamba layers silent), 1507
with ``bias: true``, so most of what the layer gives at start is the V -> O path; the scan's
score-driven part is small at Mamba's dt (0.001-0.1).

Dropped, with notes: RoPE (no rotation in the SSM: the score is the teacher's at distance 0),
the Q/K biases, and the V bias unless ``in_proj`` has a bias to hold it.
"""

from __future__ import annotations

import math

import torch

from . import ConvertContext, copy_linear


def silu_inverse(y: float) -> float:
    """The z >= 0 with SiLU(z) = y > 0 (Newton's method; SiLU is increasing there)."""
    z = max(y, 1.0)
    for _ in range(60):
        s = 1.0 / (1.0 + math.exp(-z))
        z -= (z * s - y) / (s + z * s * (1.0 - s))
    return z


def output_split(r: int, k: int) -> torch.Tensor:
    """(r, k): the share of each of a K/V group's ``r`` query heads in each of its ``k`` channel blocks.

    Rows sum to 1; ``r == k`` gives the identity.
    """
    P = torch.zeros(r, k, dtype=torch.float64)
    for h in range(r):
        for j in range(k):
            P[h, j] = max(0, min((h + 1) * k, (j + 1) * r) - max(h * k, j * r)) / k  # overlap / |I_h|
    return P


def score_factors(src, rank: int, rtol: float = 1e-3) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rank-``rank`` (C_t, B_t), each (rank, d), of the mean score form restricted to V's row space.

    Returns them with the orthonormal basis (r, d) of V's row space they lie in.
    """
    H, n_kv, D = src.n_heads, src.n_kv_heads, src.head_dim
    f64 = torch.float64
    d = src.q_proj.in_features
    wq = src.q_proj.weight.to(f64).view(H, D, d)
    wk = src.k_proj.weight.to(f64).view(n_kv, D, d).repeat_interleave(H // n_kv, dim=0)  # (H, D, d)
    M = torch.einsum("hcd,hce->de", wq, wk) / (H * math.sqrt(D))  # (d, d): u_t^T M u_s = mean score
    _, sv, Vh = torch.linalg.svd(src.v_proj.weight.to(f64), full_matrices=False)
    basis = Vh[sv > rtol * sv[0]]  # (r, d)
    U, S, Wh = torch.linalg.svd(basis @ M @ basis.t())  # (r, r)
    n = min(rank, S.numel())
    root = S[:n].sqrt()[:, None]
    return root * (U[:, :n].t() @ basis), root * (Wh[:n] @ basis), basis


def convert_mamba(src, dst, i: int, ctx: ConvertContext) -> None:
    from ..layers.attention import Attention

    if not isinstance(src, Attention) or not src.owns_kv:
        raise ValueError(f"student layer {i}: Mamba converts from a teacher attention layer with its own K/V")
    H, n_kv, D = src.n_heads, src.n_kv_heads, src.head_dim
    Di, N, R, d = dst.d_inner, dst.d_state, dst.dt_rank, dst.d_model
    if Di % (n_kv * D):
        raise ValueError(
            f"student layer {i}: Mamba d_inner = expand * d_model = {Di} must be a multiple of the teacher's "
            f"n_kv_heads * head_dim = {n_kv * D} (V is repeated across the channels), e.g. expand = {H * D / d:g}"
        )
    k = Di // (n_kv * D)
    f64 = torch.float64
    # x: V heads repeated, block m <- K/V head m // k.
    wv = src.v_proj.weight.to(f64)  # (n_kv*D, d)
    wx = wv.view(n_kv, D, d).repeat_interleave(k, dim=0).reshape(Di, d)
    # out: the query heads' o_proj columns shared among their group's k blocks.
    wo = src.o_proj.weight.to(f64).view(d, n_kv, H // n_kv, D)
    wout = torch.einsum("dgrc,rj->dgjc", wo, output_split(H // n_kv, k).to(wo.device)).reshape(d, Di)
    # B, C from x ~ SiLU(V u) ~ V u / 2: x_proj rows = 2 * target @ pinv(repeated V).
    Ct, Bt, _ = score_factors(src, N)
    n = Ct.shape[0]
    pinv = torch.linalg.pinv(wx, rtol=1e-3)  # (d, Di)
    wB = torch.zeros(N, Di, dtype=f64, device=wx.device)
    wC = torch.zeros_like(wB)
    wB[:n], wC[:n] = 2 * Bt @ pinv, 2 * Ct @ pinv

    dt = dst.o_proj.weight.dtype
    dst.in_proj.weight[:Di].copy_(wx.to(dt))
    dst.in_proj.weight[Di:].zero_()
    if dst.in_proj.bias is not None:
        dst.in_proj.bias.zero_()
        dst.in_proj.bias[Di:].fill_(silu_inverse(1.0))  # SiLU(z) = 1: a neutral gate
        if src.v_proj.bias is not None:
            vb = src.v_proj.bias.to(f64).view(n_kv, D).repeat_interleave(k, dim=0).reshape(Di)
            dst.in_proj.bias[:Di].copy_(vb.to(dt))
    else:
        ctx.notes.append(
            f"layer {i}: Mamba without in_proj bias cannot hold a neutral gate; z starts at 0, so the layer "
            "starts silent (set bias: true for a neutral gate)"
        )
    dst.conv1d.weight.zero_()
    dst.conv1d.weight[:, 0, -1] = 1.0  # identity: the SSM sees SiLU(V u_t)
    if dst.conv1d.bias is not None:
        dst.conv1d.bias.zero_()
    dst.x_proj.weight[R : R + N].copy_(wB.to(dt))
    dst.x_proj.weight[R + N :].copy_(wC.to(dt))
    copy_linear(dst.o_proj, wout.to(dt))
    ctx.notes.append(f"layer {i}: Mamba from attention approximates the head-averaged score at rank {n}; RoPE dropped")
    if src.q_proj.bias is not None or (src.v_proj.bias is not None and dst.in_proj.bias is None):
        ctx.notes.append(f"layer {i}: the teacher's Q/K (and V, without in_proj bias) biases were dropped")
