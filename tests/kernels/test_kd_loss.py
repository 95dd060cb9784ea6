"""KD loss rows: the reference against autograd of the unchunked losses, the Triton kernel against the reference.

Without a GPU the kernel runs on CPU tensors in Triton's interpreter with 16-wide vocabulary blocks
(``INTERPRET_CONFIG``), so a row spans several blocks and ends in a partial one at V = 37 or 100.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import archzoo.kernels as K
from archzoo.kernels._testing import import_triton_kernels
from archzoo.kernels.kd_loss import naive_kd_loss_rows
from archzoo.train.losses import token_divergence

from conftest import assert_close, interpreter_only, requires_cuda

_mods, _skip = import_triton_kernels("archzoo.kernels.kd_loss.triton")
KT = _mods[0] if _mods else None
needs_triton = pytest.mark.skipif(_skip is not None, reason=_skip or "")
DEV = "cuda" if torch.cuda.is_available() else "cpu"


def _inputs(n, V, dtype, teacher=True, targets=True, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    zs = (torch.randn(n, V, generator=g) * 3).to(device, dtype)
    zt = (torch.randn(n, V, generator=g) * 3).to(device, dtype) if teacher else None
    t = None
    if targets:
        t = torch.randint(0, V, (n,), generator=g)
        t[::3] = -100  # some ignored rows
        t = t.to(device)
    return zs, zt, t


@pytest.mark.parametrize("T", [1.0, 1.7])
@pytest.mark.parametrize("teacher,targets", [(True, True), (True, False), (False, True)])
def test_reference_is_autograd_of_the_unchunked_losses(T, teacher, targets):
    """kl = T^2 KL(p_t || p_s) and ce per row as train.losses computes them; grad = autograd of the weighted sum."""
    zs, zt, t = _inputs(7, 23, torch.float64, teacher, targets)
    scales = torch.tensor([0.3, 0.7], dtype=torch.float64)
    kl, ce, grad = naive_kd_loss_rows(zs, zt, t, T, scales)
    z = zs.clone().requires_grad_(True)
    ref_kl = token_divergence(z, zt, "forward", T) if teacher else torch.zeros(7, dtype=torch.float64)
    ref_ce = (
        F.cross_entropy(z, t, ignore_index=-100, reduction="none") if targets else torch.zeros(7, dtype=torch.float64)
    )
    (ref_grad,) = torch.autograd.grad(0.3 * ref_kl.sum() + 0.7 * ref_ce.sum(), z)
    torch.testing.assert_close(kl, ref_kl.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ce, ref_ce.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-12, atol=1e-12)
    assert naive_kd_loss_rows(zs, zt, t, T)[2] is None, "no grad_scales: no gradient"


def test_a_target_outside_the_vocabulary_gives_nan_not_a_wrong_number():
    zs, zt, t = _inputs(4, 9, torch.float32)
    t[1] = 9
    t[2] = -5
    kl, ce, _ = K.kd_loss_rows(zs, zt, t)
    assert torch.isnan(ce[1]) and torch.isnan(ce[2]) and torch.isfinite(ce[[0, 3]]).all()


def test_bad_arguments_name_the_argument():
    zs, zt, t = _inputs(4, 9, torch.float32)
    with pytest.raises(ValueError, match="teacher_logits must have"):
        K.kd_loss_rows(zs, zt[:, :5], t)
    with pytest.raises(ValueError, match="nothing to compute"):
        K.kd_loss_rows(zs)
    with pytest.raises(ValueError, match="targets must be int32 or int64"):
        K.kd_loss_rows(zs, zt, t.float())
    with pytest.raises(ValueError, match="temperature must be"):
        K.kd_loss_rows(zs, zt, t, temperature=0.0)
    with pytest.raises(ValueError, match=r"grad_scales must be a \(2,\)"):
        K.kd_loss_rows(zs, zt, t, grad_scales=torch.ones(3))


TOL = {torch.float32: 1e-6, torch.bfloat16: 1e-2, torch.float16: 2e-3}


@needs_triton
@interpreter_only
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("n,V", [(1, 1), (3, 16), (5, 37), (2, 100)])
@pytest.mark.parametrize("T", [1.0, 2.5])
@pytest.mark.parametrize("teacher,targets", [(True, True), (True, False), (False, True)])
def test_kernel_matches_reference(dtype, n, V, T, teacher, targets):
    """Values and gradient, with one block, several, a partial last block and V = 1; ignored targets."""
    zs, zt, t = _inputs(n, V, dtype, teacher, targets, seed=n + V)
    scales = torch.tensor([0.25, 0.5])
    kl, ce, grad = KT.kd_loss_rows(zs, zt, t, T, scales)
    rkl, rce, rgrad = naive_kd_loss_rows(zs, zt, t, T, scales)
    assert kl.dtype == ce.dtype == torch.float32 and grad.dtype == dtype
    torch.testing.assert_close(kl, rkl, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ce, rce, rtol=1e-5, atol=1e-5)
    if rgrad.abs().max() > 0:
        assert_close("grad", grad.float(), rgrad.float(), TOL[dtype])
    else:  # V = 1: both softmaxes are 1 and the one-hot is the only column, so the gradient is exactly 0
        assert grad.abs().max() == 0, f"V = {V}: the gradient must be 0, got {grad}"
    nkl, nce, none = KT.kd_loss_rows(zs, zt, t, T)
    assert none is None and torch.equal(nkl, kl) and torch.equal(nce, ce)


@needs_triton
@interpreter_only
def test_kernel_reads_strided_rows_and_marks_bad_targets():
    big = torch.randn(4, 50) * 2
    zs, zt = big[:, :37], torch.randn(4, 37)  # a row stride of 50
    t = torch.tensor([3, 37, -100, -2])
    scales = torch.tensor([1.0, 1.0])
    kl, ce, grad = KT.kd_loss_rows(zs, zt, t, 1.0, scales)
    rkl, rce, rgrad = naive_kd_loss_rows(zs, zt, t, 1.0, scales)
    torch.testing.assert_close(kl, rkl)
    torch.testing.assert_close(ce, rce, equal_nan=True)
    assert torch.isnan(ce[1]) and torch.isnan(ce[3]) and ce[2] == 0
    torch.testing.assert_close(grad, rgrad)


@needs_triton
@interpreter_only
def test_a_planted_bug_fails(monkeypatch):
    """The comparison can fail: a kernel that forgets the temperature in the gradient does."""
    zs, zt, t = _inputs(3, 37, torch.float32)
    scales = torch.tensor([1.0, 0.0])
    good = naive_kd_loss_rows(zs, zt, t, 2.0, scales)[2]
    bad = naive_kd_loss_rows(zs, zt, t, 2.0, scales * torch.tensor([0.5, 1.0]))[2]  # T * (p_s - p_t) without T
    got = KT.kd_loss_rows(zs, zt, t, 2.0, scales)[2]
    torch.testing.assert_close(got, good)
    with pytest.raises(AssertionError):
        torch.testing.assert_close(got, bad)


def test_dispatch_records_the_backend():
    zs, zt, t = _inputs(2, 9, torch.float64)
    K.kd_loss_rows(zs, zt, t)
    assert K.last_backend("kd_loss_rows") == "naive"


@requires_cuda
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_kernel_on_gpu_at_the_teachers_vocabulary(dtype):
    zs, zt, t = _inputs(64, 49152, dtype, device=DEV)
    scales = torch.tensor([1 / 64, 1 / 40], device=DEV)
    kl, ce, grad = K.kd_loss_rows(zs, zt, t, 1.0, scales)
    assert K.last_backend("kd_loss_rows") == "triton"
    rkl, rce, rgrad = naive_kd_loss_rows(zs, zt, t, 1.0, scales)
    torch.testing.assert_close(kl, rkl, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ce, rce, rtol=1e-4, atol=1e-4)
    assert_close("grad", grad.float(), rgrad.float(), TOL[dtype])
