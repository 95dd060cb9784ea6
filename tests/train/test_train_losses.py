"""KD losses: hand-computed values on tiny distributions, and chunked == unchunked (values and gradients)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from archzoo.train.losses import align_loss, distill_loss, fused_distill_loss, token_divergence

from conftest import assert_close

# Two tokens, vocabulary of 2. Token 0: student (1/2, 1/2), teacher (3/4, 1/4).
# Token 1: student (1/4, 3/4), teacher (1/2, 1/2).
P_S = [[0.5, 0.5], [0.25, 0.75]]
P_T = [[0.75, 0.25], [0.5, 0.5]]


def _kl(p, q):
    return sum(a * math.log(a / b) for a, b in zip(p, q, strict=True))


def _hand(kind: str, beta: float = 0.5) -> list[float]:
    out = []
    for ps, pt in zip(P_S, P_T, strict=True):
        if kind == "forward":
            out.append(_kl(pt, ps))
        elif kind == "reverse":
            out.append(_kl(ps, pt))
        else:
            m = [beta * a + (1 - beta) * b for a, b in zip(pt, ps, strict=True)]
            out.append(beta * _kl(pt, m) + (1 - beta) * _kl(ps, m))
    return out


def _logits(p, temperature: float = 1.0) -> torch.Tensor:
    return torch.tensor(p, dtype=torch.float64).log() * temperature  # softmax(z / T) == p


@pytest.mark.parametrize("kind,beta", [("forward", 0.5), ("reverse", 0.5), ("jsd", 0.5), ("jsd", 0.2)])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_divergence_matches_hand_computed(kind, beta, temperature):
    zs, zt = _logits(P_S, temperature), _logits(P_T, temperature)
    want = torch.tensor(_hand(kind, beta), dtype=torch.float64) * temperature**2  # scaled by T^2
    got = token_divergence(zs, zt, kind, temperature, beta)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12, msg=f"per-token {kind} divergence")
    # Through hidden states with an identity head, averaged per token (not summed, not per sequence).
    eye = torch.eye(2, dtype=torch.float64)
    out = distill_loss(zs, eye, zt, eye, kind=kind, temperature=temperature, beta=beta)
    assert out.kl.item() == pytest.approx(want.mean().item(), rel=1e-12), f"mean {kind} divergence"
    assert out.ce is None and out.n_tokens == 2


def test_forward_kl_mean_is_per_token_not_per_batch():
    # One sequence of 3 tokens and one of 1 token flattened: the mean is over 4 tokens.
    zs = torch.randn(4, 5, dtype=torch.float64)
    zt = torch.randn(4, 5, dtype=torch.float64)
    eye = torch.eye(5, dtype=torch.float64)
    per_token = token_divergence(zs, zt)
    assert distill_loss(zs, eye, zt, eye).kl.item() == pytest.approx(per_token.sum().item() / 4, rel=1e-12)


def test_cross_entropy_matches_hand_computed():
    zs = _logits(P_S)
    eye = torch.eye(2, dtype=torch.float64)
    targets = torch.tensor([0, -100])  # second token ignored
    out = distill_loss(zs, eye, targets=targets)
    assert out.ce.item() == pytest.approx(-math.log(0.5), rel=1e-12)
    assert out.n_targets == 1 and out.kl is None
    out = distill_loss(zs, eye, targets=torch.tensor([0, 1]), temperature=3.0)  # CE ignores temperature
    assert out.ce.item() == pytest.approx((-math.log(0.5) - math.log(0.75)) / 2, rel=1e-12)


def test_align_loss_is_normalised_mse():
    t = torch.tensor([[[1.0, -1.0], [2.0, 0.0]]], dtype=torch.float64)  # mean(t^2) = 6/4
    s = t + torch.tensor([[[0.5, 0.0], [0.0, -0.5]]], dtype=torch.float64)  # mean((s-t)^2) = 0.5/4
    assert align_loss(s, t).item() == pytest.approx((0.5 / 4) / (6 / 4), rel=1e-12)


@pytest.mark.parametrize("kind", ["forward", "reverse", "jsd"])
@pytest.mark.parametrize("token_chunk,vocab_chunk", [(5, None), (1, None), (7, 10), (64, 9), (3, 1)])
def test_chunked_equals_unchunked_with_gradients(kind, token_chunk, vocab_chunk):
    torch.manual_seed(0)
    N, V, ds, dt = 13, 37, 6, 8
    h_s = torch.randn(N, ds, dtype=torch.float64, requires_grad=True)
    w_s = torch.randn(V, ds, dtype=torch.float64, requires_grad=True)
    h_t, w_t = torch.randn(N, dt, dtype=torch.float64), torch.randn(V, dt, dtype=torch.float64)
    targets = torch.randint(V, (N,))
    targets[[2, 9]] = -100
    T, beta, ce_w = 1.7, 0.3, 0.6

    # Reference: full logits in memory.
    zs, zt = h_s @ w_s.T, h_t @ w_t.T
    ref_kl = token_divergence(zs, zt, kind, T, beta).mean()
    ref_ce = F.cross_entropy(zs, targets, ignore_index=-100)
    ref_gs, ref_gw = torch.autograd.grad(ref_kl + ce_w * ref_ce, (h_s, w_s))

    out = distill_loss(
        h_s,
        w_s,
        h_t,
        w_t,
        targets,
        kind=kind,
        temperature=T,
        beta=beta,
        token_chunk=token_chunk,
        vocab_chunk=vocab_chunk,
    )
    gs, gw = torch.autograd.grad(out.kl + ce_w * out.ce, (h_s, w_s))
    assert_close("kl", out.kl, ref_kl, 1e-6)
    assert_close("ce", out.ce, ref_ce, 1e-6)
    assert_close("grad h_s", gs, ref_gs, 1e-6)
    assert_close("grad w_s", gw, ref_gw, 1e-6)


def test_bad_arguments_name_the_argument():
    h, w = torch.randn(3, 4), torch.randn(5, 4)
    with pytest.raises(ValueError, match="temperature"):
        distill_loss(h, w, h, w, temperature=0)
    with pytest.raises(ValueError, match="h_t and w_t"):
        distill_loss(h, w, h_t=h)
    with pytest.raises(ValueError, match="targets"):
        distill_loss(h, w, targets=torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="h_s"):
        distill_loss(h, torch.randn(5, 3), targets=torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="kind"):
        token_divergence(h, h, kind="fwd")


@pytest.mark.parametrize("token_chunk", [1, 5, 100])
@pytest.mark.parametrize("teacher,ce_w", [(True, 0.6), (True, 0.0), (False, 1.0)])
def test_fused_loss_equals_the_unchunked_losses_with_gradients(token_chunk, teacher, ce_w):
    """speed.fused_loss: the weighted loss, its parts and the gradients of h_s and w_s, in float64 to round-off."""
    torch.manual_seed(1)
    N, V, ds, dt = 13, 37, 6, 8
    h_s = torch.randn(N, ds, dtype=torch.float64, requires_grad=True)
    w_s = torch.randn(V, ds, dtype=torch.float64, requires_grad=True)
    h_t, w_t = torch.randn(N, dt, dtype=torch.float64), torch.randn(V, dt, dtype=torch.float64)
    targets = torch.randint(V, (N,))
    targets[[2, 9]] = -100
    T, kl_w = 1.7, 0.8
    zs = h_s @ w_s.T
    ref_ce = F.cross_entropy(zs, targets, ignore_index=-100)
    ref_kl = token_divergence(zs, h_t @ w_t.T, "forward", T).mean() if teacher else None
    ref = ce_w * ref_ce + (kl_w * ref_kl if teacher else 0)
    ref_gs, ref_gw = torch.autograd.grad(ref, (h_s, w_s))

    out = fused_distill_loss(h_s, w_s, *((h_t, w_t) if teacher else (None, None)), targets, temperature=T,
                             kl_weight=kl_w, ce_weight=ce_w, token_chunk=token_chunk)  # fmt: skip
    assert not out.ce.requires_grad and (out.kl is None) == (not teacher)
    gs, gw = torch.autograd.grad(3.0 * out.loss, (h_s, w_s))  # the incoming gradient scales the stored ones
    torch.testing.assert_close(out.loss, ref.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out.ce, ref_ce.detach(), rtol=1e-12, atol=1e-12)
    if teacher:
        torch.testing.assert_close(out.kl, ref_kl.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gs, 3.0 * ref_gs, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(gw, 3.0 * ref_gw, rtol=1e-10, atol=1e-12)


def test_fused_loss_through_the_triton_kernel(monkeypatch):
    """The same in fp32 with the Triton kernel (the interpreter on CPU), gradients within fp32 round-off."""
    from archzoo.kernels._testing import import_triton_kernels

    mods, skip = import_triton_kernels("archzoo.kernels.kd_loss.triton")
    if skip or torch.cuda.is_available():
        pytest.skip(skip or "the GPU test covers the kernel on CUDA")
    import archzoo.kernels as K

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    torch.manual_seed(2)
    N, V, d = 11, 37, 5
    h_s = torch.randn(N, d, requires_grad=True)
    w_s = torch.randn(V, d, requires_grad=True)
    h_t, w_t, targets = torch.randn(N, d), torch.randn(V, d), torch.randint(V, (N,))
    ref = distill_loss(h_s, w_s, h_t, w_t, targets, temperature=2.0, token_chunk=4)
    ref_g = torch.autograd.grad(ref.kl + 0.5 * ref.ce, (h_s, w_s))
    out = fused_distill_loss(h_s, w_s, h_t, w_t, targets, temperature=2.0, ce_weight=0.5, token_chunk=4)
    assert K.last_backend("kd_loss_rows") == "triton"
    g = torch.autograd.grad(out.loss, (h_s, w_s))
    assert_close("kl", out.kl, ref.kl, 1e-6)
    assert_close("ce", out.ce, ref.ce, 1e-6)
    assert_close("grad h_s", g[0], ref_g[0], 1e-5)
    assert_close("grad w_s", g[1], ref_g[1], 1e-5)


def test_fused_loss_without_gradients_and_with_bad_arguments():
    h, w = torch.randn(4, 3), torch.randn(9, 3)
    out = fused_distill_loss(h, w, h, w, torch.tensor([1, 2, 3, -100]))
    assert float(out.kl) == pytest.approx(0.0, abs=1e-6) and not out.loss.requires_grad
    with pytest.raises(ValueError, match="nothing to compute"):
        fused_distill_loss(h, w)
    with pytest.raises(ValueError, match="kl_weight and ce_weight must be >= 0"):
        fused_distill_loss(h, w, targets=torch.zeros(4, dtype=torch.long), ce_weight=-1.0)
