"""Distillation losses computed in chunks, so full student and teacher logits never sit in memory.

Divergences between the teacher's and the student's next-token distributions at temperature T
(Hinton et al. 2015, scaled by T^2 so gradients keep their size as T changes), summed over the
vocabulary and averaged per token (not per sequence or per batch):

- ``forward``: KL(p_t || p_s), mean-seeking, the classic KD loss;
- ``reverse``: KL(p_s || p_t), mode-seeking (MiniLLM, Gu et al. 2024);
- ``jsd``: generalised JSD(beta) = beta KL(p_t || m) + (1 - beta) KL(p_s || m) with
  m = beta p_t + (1 - beta) p_s (GKD, Agarwal et al. 2024).

Memory. The losses take the final hidden states and the LM-head weights, never logits. The
tokens are cut into chunks of ``token_chunk`` rows; each chunk's logits are built, reduced to
per-token sums and dropped, under ``torch.utils.checkpoint`` so the backward pass rebuilds them
one chunk at a time. Live logit memory is O(token_chunk x V) whatever the batch length.

Why token chunks with the whole vocabulary by default: a KL needs each row's log-normaliser over
the whole vocabulary for both models. Chunking the vocabulary as well (``vocab_chunk``) takes two
passes (log-sum-exp first, then the divergence terms) and, under checkpointing, about three more
student LM-head matmuls per step than token chunks alone, which need one. Vocabulary chunks are
there for vocabularies so large that even ``token_chunk`` full rows do not fit; both give the
same values and gradients (tests/test_train_losses.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from archzoo.kernels import kd_loss_rows

Divergence = Literal["forward", "reverse", "jsd"]
IGNORE_INDEX = -100


@dataclass
class KDLoss:
    """Per-token means: ``kl`` over every token (None without a teacher), ``ce`` over targets != -100
    (None without targets). ``n_tokens`` / ``n_targets`` count what each mean is over."""

    kl: torch.Tensor | None
    ce: torch.Tensor | None
    n_tokens: int
    n_targets: int


def _upcast(z: torch.Tensor) -> torch.Tensor:
    return z.float() if z.dtype in (torch.float16, torch.bfloat16) else z


def _logits(h: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return _upcast(F.linear(h, w))  # (n, V) in fp32 (or fp64)


def divergence_terms(ls: torch.Tensor, lt: torch.Tensor, kind: Divergence, beta: float = 0.5) -> torch.Tensor:
    """Per-row sum over the last dim of the divergence's terms, from student / teacher log-probs.

    ``ls``, ``lt`` (n, v) are log-probabilities (or a vocabulary slice of them); returns (n,).
    """
    if kind == "forward":
        return (lt.exp() * (lt - ls)).sum(-1)
    if kind == "reverse":
        return (ls.exp() * (ls - lt)).sum(-1)
    if kind == "jsd":
        lm = torch.logaddexp(lt + math.log(beta), ls + math.log(1 - beta))  # log of the mixture
        return beta * (lt.exp() * (lt - lm)).sum(-1) + (1 - beta) * (ls.exp() * (ls - lm)).sum(-1)
    raise ValueError(f"unknown divergence kind {kind!r}; expected one of forward, reverse, jsd")


def token_divergence(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    kind: Divergence = "forward",
    temperature: float = 1.0,
    beta: float = 0.5,
) -> torch.Tensor:
    """Unchunked reference: logits (..., V) -> divergence per token (...), times T^2."""
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student_logits {tuple(student_logits.shape)} and teacher_logits {tuple(teacher_logits.shape)} differ"
        )
    T = temperature
    ls = F.log_softmax(_upcast(student_logits) / T, dim=-1)
    lt = F.log_softmax(_upcast(teacher_logits) / T, dim=-1)
    return divergence_terms(ls, lt, kind, beta) * T * T


# ------------------------------------------------------------------------ chunk kernels


def _rows_full(h_s, w_s, h_t, w_t, tgt, T: float, kind: Divergence, beta: float):
    """One token chunk with the whole vocabulary -> (sum of divergences, sum of CE)."""
    zs = _logits(h_s, w_s)  # (n, V)
    zero = zs.new_zeros(())
    kl = zero
    if h_t is not None:
        zt = _logits(h_t, w_t)
        kl = divergence_terms(F.log_softmax(zs / T, -1), F.log_softmax(zt / T, -1), kind, beta).sum() * T * T
    ce = zero if tgt is None else F.cross_entropy(zs, tgt, ignore_index=IGNORE_INDEX, reduction="sum")
    return kl, ce


def _lse_chunk(h, w, T: float):
    z = _logits(h, w)
    return torch.logsumexp(z / T, -1), torch.logsumexp(z, -1)  # (n,), (n,)


def _terms_chunk(h_s, w_s, h_t, w_t, lse_s, lse_t, T: float, kind: Divergence, beta: float):
    ls = _logits(h_s, w_s) / T - lse_s[:, None]
    lt = _logits(h_t, w_t) / T - lse_t[:, None]
    return divergence_terms(ls, lt, kind, beta)  # (n,)


def _maybe_checkpoint(fn, *args):
    if torch.is_grad_enabled() and any(isinstance(a, torch.Tensor) and a.requires_grad for a in args):
        return checkpoint(fn, *args, use_reentrant=False)
    return fn(*args)


def _rows_vocab_chunked(h_s, w_s, h_t, w_t, tgt, T: float, kind: Divergence, beta: float, vocab_chunk: int):
    """One token chunk, vocabulary in slices: pass 1 the log-normalisers, pass 2 the divergence terms."""
    V = w_s.shape[0]
    slices = [slice(a, min(a + vocab_chunk, V)) for a in range(0, V, vocab_chunk)]
    parts = [_maybe_checkpoint(_lse_chunk, h_s, w_s[sl], T) for sl in slices]
    lse_s = torch.logsumexp(torch.stack([p[0] for p in parts]), 0)  # (n,) at temperature T
    lse_s1 = torch.logsumexp(torch.stack([p[1] for p in parts]), 0)  # (n,) at temperature 1 (for CE)
    zero = lse_s.new_zeros(())
    kl = zero
    if h_t is not None:
        with torch.no_grad():
            lse_t = torch.logsumexp(torch.stack([_lse_chunk(h_t, w_t[sl], T)[0] for sl in slices]), 0)
        kl = sum(
            _maybe_checkpoint(_terms_chunk, h_s, w_s[sl], h_t, w_t[sl], lse_s, lse_t, T, kind, beta).sum()
            for sl in slices
        )
        kl = kl * T * T
    ce = zero
    if tgt is not None:
        valid = tgt != IGNORE_INDEX
        z_tgt = _upcast((h_s[valid] * w_s[tgt[valid]]).sum(-1))  # (n_valid,) the targets' logits
        ce = (lse_s1[valid] - z_tgt).sum()
    return kl, ce


def _check_common(h_s, w_s, h_t, w_t, targets, temperature, beta, token_chunk, vocab_chunk) -> None:
    """ValueError naming the argument, for ``distill_loss`` and ``fused_distill_loss``."""
    if h_s.dim() != 2 or w_s.dim() != 2 or h_s.shape[1] != w_s.shape[1]:
        raise ValueError(f"h_s (N, d) and w_s (V, d) must agree on d, got {tuple(h_s.shape)} and {tuple(w_s.shape)}")
    if (h_t is None) != (w_t is None):
        raise ValueError("h_t and w_t come together: pass both or neither")
    N, V = h_s.shape[0], w_s.shape[0]
    if h_t is not None and (h_t.shape[0] != N or w_t.shape[0] != V or h_t.shape[1] != w_t.shape[1]):
        raise ValueError(f"teacher h_t {tuple(h_t.shape)} / w_t {tuple(w_t.shape)} do not match student N={N}, V={V}")
    if targets is not None and targets.shape != (N,):
        raise ValueError(f"targets must be (N,) = ({N},), got {tuple(targets.shape)}")
    if h_t is None and targets is None:
        raise ValueError("nothing to compute: pass a teacher (h_t, w_t), targets, or both")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if not 0 < beta < 1:
        raise ValueError(f"beta must lie in (0, 1), got {beta}")
    if token_chunk < 1 or (vocab_chunk is not None and vocab_chunk < 1):
        raise ValueError(f"token_chunk and vocab_chunk must be positive, got {token_chunk} and {vocab_chunk}")


# ------------------------------------------------------------------------------ public


def distill_loss(
    h_s: torch.Tensor,
    w_s: torch.Tensor,
    h_t: torch.Tensor | None = None,
    w_t: torch.Tensor | None = None,
    targets: torch.Tensor | None = None,
    *,
    kind: Divergence = "forward",
    temperature: float = 1.0,
    beta: float = 0.5,
    token_chunk: int = 1024,
    vocab_chunk: int | None = None,
) -> KDLoss:
    """Chunked KD divergence and cross-entropy from hidden states and LM-head weights.

    h_s (N, d_s) student final hidden states (after the final norm), w_s (V, d_s) its LM head;
    h_t (N, d_t), w_t (V, d_t) the teacher's (no gradient flows to them); targets (N,) next-token
    ids with -100 to ignore. The divergence is computed at ``temperature`` and times T^2; the
    cross-entropy at temperature 1. Both are means per token.
    """
    _check_common(h_s, w_s, h_t, w_t, targets, temperature, beta, token_chunk, vocab_chunk)
    N, V = h_s.shape[0], w_s.shape[0]
    if h_t is not None:
        h_t, w_t = h_t.detach(), w_t.detach()
    kl_sum = ce_sum = 0
    for a in range(0, N, token_chunk):
        rows = slice(a, a + token_chunk)
        ht = h_t[rows] if h_t is not None else None
        tgt = targets[rows] if targets is not None else None
        if vocab_chunk is None or vocab_chunk >= V:
            kl, ce = _maybe_checkpoint(_rows_full, h_s[rows], w_s, ht, w_t, tgt, temperature, kind, beta)
        else:
            kl, ce = _rows_vocab_chunked(h_s[rows], w_s, ht, w_t, tgt, temperature, kind, beta, vocab_chunk)
        kl_sum, ce_sum = kl_sum + kl, ce_sum + ce
    n_targets = int((targets != IGNORE_INDEX).sum()) if targets is not None else 0
    return KDLoss(
        kl=kl_sum / N if h_t is not None else None,
        ce=ce_sum / max(n_targets, 1) if targets is not None else None,
        n_tokens=N,
        n_targets=n_targets,
    )


# ------------------------------------------------------------------ fused (speed.fused_loss)


@dataclass
class FusedKDLoss:
    """``loss`` = kl_weight * kl + ce_weight * ce (the only output with a gradient); ``kl`` (None without a
    teacher) and ``ce`` detached per-token means, for logging. No host synchronisation."""

    loss: torch.Tensor
    kl: torch.Tensor | None
    ce: torch.Tensor


class _FusedLinearKD(torch.autograd.Function):
    """Forward: per token chunk, both LM heads' logits, then ``archzoo.kernels.kd_loss_rows`` gives the rows'
    KL and CE and the gradient of the weighted loss with respect to the student's logits, which is turned at
    once into the chunk's hidden-state gradient and added into the LM-head gradient. Backward: those two,
    times the incoming scalar gradient. No logits are kept, and none are rebuilt."""

    @staticmethod
    def forward(ctx, h_s, w_s, h_t, w_t, targets, temperature, kl_weight, ce_weight, token_chunk):
        N = h_s.shape[0]
        need = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        has_t = h_t is not None
        dev = h_s.device
        acc = torch.promote_types(h_s.dtype, torch.float32)  # fp32, or fp64 for fp64 inputs
        if targets is not None:
            n_targets = (targets != IGNORE_INDEX).sum().clamp_min(1).to(acc)  # stays on the device: no sync
            ce_scale = ce_weight / n_targets
        else:
            n_targets, ce_scale = None, torch.zeros((), device=dev, dtype=acc)
        scales = torch.stack([torch.tensor(kl_weight / N if has_t else 0.0, device=dev, dtype=acc), ce_scale])
        kl_sum = torch.zeros((), device=dev, dtype=acc)
        ce_sum = torch.zeros_like(kl_sum)
        dh = dw = w_c = None
        for a in range(0, N, token_chunk):
            rows = slice(a, a + token_chunk)
            zs = F.linear(h_s[rows], w_s)  # autocast picks the dtype, as the unfused path's matmul
            zt = F.linear(h_t[rows], w_t) if has_t else None
            tgt = targets[rows] if targets is not None else None
            kl, ce, dz = kd_loss_rows(zs, zt, tgt, temperature, scales if need else None)
            kl_sum, ce_sum = kl_sum + kl.sum(), ce_sum + ce.sum()
            if need:
                if w_c is None:  # the grads' matmuls in the logits' dtype, accumulated over chunks in fp32 (or fp64)
                    w_c, h_c = w_s.to(dz.dtype), h_s.to(dz.dtype)
                    dh = torch.empty_like(h_s)
                    dw = torch.zeros(w_s.shape, device=dev, dtype=torch.promote_types(w_s.dtype, torch.float32))
                dh[rows] = (dz @ w_c).to(dh.dtype)
                dw += (dz.T @ h_c[rows]).to(dw.dtype)
        if need and dh is None:  # no tokens
            dh = torch.zeros_like(h_s)
            dw = torch.zeros(w_s.shape, device=dev, dtype=torch.promote_types(w_s.dtype, torch.float32))
        ctx.save_for_backward(dh, dw)
        ctx.w_dtype = w_s.dtype
        kl_mean = kl_sum / N if has_t else None
        ce_mean = ce_sum / n_targets if targets is not None else ce_sum
        loss = ce_weight * ce_mean if targets is not None else torch.zeros_like(kl_sum)
        if has_t:
            loss = loss + kl_weight * kl_mean
        outs = (loss, kl_mean if has_t else torch.zeros_like(loss), ce_mean)
        ctx.mark_non_differentiable(outs[1], outs[2])
        return outs

    @staticmethod
    def backward(ctx, g_loss, _g_kl, _g_ce):
        dh, dw = ctx.saved_tensors
        gh = gw = None
        if ctx.needs_input_grad[0]:
            gh = dh * g_loss.to(dh.dtype)
        if ctx.needs_input_grad[1]:
            gw = (dw * g_loss.to(dw.dtype)).to(ctx.w_dtype)
        return gh, gw, None, None, None, None, None, None, None


def fused_distill_loss(
    h_s: torch.Tensor,
    w_s: torch.Tensor,
    h_t: torch.Tensor | None = None,
    w_t: torch.Tensor | None = None,
    targets: torch.Tensor | None = None,
    *,
    temperature: float = 1.0,
    kl_weight: float = 1.0,
    ce_weight: float = 0.0,
    token_chunk: int = 1024,
) -> FusedKDLoss:
    """``distill_loss``'s forward KL and CE with the logit work fused (``speed.fused_loss``), as one weighted loss.

    Same arguments and means as ``distill_loss(kind="forward")``; returns ``kl_weight * kl + ce_weight * ce``
    with its gradient, and the two means detached. Why: the unfused path runs PyTorch's log_softmax, exp and
    sums on fp32 (token_chunk, V) tensors, and under checkpointing rebuilds each chunk's logits in the backward
    pass; here ``archzoo.kernels.kd_loss_rows`` (a Triton kernel on CUDA) reads each chunk's logits in their
    dtype and writes only their gradient, which the same forward call turns into the hidden-state and LM-head
    gradients (the gradient is computed before it is asked for, as Liger-Kernel's fused linear losses do).
    The price: a (N, d_s) and a (V, d_s) fp32 gradient held from forward to backward, and every backward
    call must be the loss's own (no second-order gradients). Only the forward KL (``kl: forward``).
    """
    _check_common(h_s, w_s, h_t, w_t, targets, temperature, 0.5, token_chunk, None)
    if kl_weight < 0 or ce_weight < 0:
        raise ValueError(f"kl_weight and ce_weight must be >= 0, got {kl_weight} and {ce_weight}")
    if h_t is not None:
        h_t, w_t = h_t.detach(), w_t.detach()
    loss, kl, ce = _FusedLinearKD.apply(
        h_s, w_s, h_t, w_t, targets, float(temperature), float(kl_weight), float(ce_weight), int(token_chunk)
    )
    return FusedKDLoss(loss=loss, kl=kl if h_t is not None else None, ce=ce)


def align_loss(
    student_out: torch.Tensor, teacher_out: torch.Tensor, norm: torch.Tensor | None = None, eps: float = 1e-12
) -> torch.Tensor:
    """Normalised MSE  mean((s - t)^2) / mean(t^2)  of one layer's mixer outputs (B, T, d).

    The normalisation puts layers whose outputs differ in scale on the same footing before they
    are summed (LoLCATs attention transfer, Zhang et al. 2024; MOHAWK, Bick et al. 2024).
    ``norm`` replaces mean(t^2) (e.g. by its mean over all data-parallel ranks).
    """
    if student_out.shape != teacher_out.shape:
        raise ValueError(f"student_out {tuple(student_out.shape)} and teacher_out {tuple(teacher_out.shape)} differ")
    s, t = _upcast(student_out), _upcast(teacher_out.detach())
    if norm is None:
        norm = t.pow(2).mean()
    return (s - t).pow(2).mean() / norm.detach().clamp_min(eps)
