"""The decode step's Q|K|V projection with RoPE and the cache write in its epilogue (``decode_qkv_rope``): the
reference against the model's unfused step (RMSNorm, F.linear, ``apply_rope``, the cache write by index), the
Triton kernel (Triton's interpreter on CPU tensors, tiny tiles) against the reference. Awkward shapes: GQA groups
of 1, 3 and 9 heads, head dims 6 and 8, 1 to 16 rows, positions past the slots (a sliding window's ring)."""

from __future__ import annotations

import pytest
import torch

import archzoo.kernels as K
from archzoo.kernels._testing import import_triton_kernels, rel_err
from archzoo.kernels.decode_linear import (
    decode_qkv_rope,
    naive_decode_linear,
    naive_decode_qkv_rope,
    naive_decode_rope_write,
    rope_pair_order,
)
from archzoo.layers.rope import RotaryEmbedding, apply_rope

from conftest import interpreter_only, requires_cuda

_mods, _skip = import_triton_kernels("archzoo.kernels.decode_linear.triton")
needs_triton = pytest.mark.skipif(_skip is not None, reason=_skip or "")


def _case(M, H, Hkv, D, Kd=20, slots=12, dtype=torch.float32, seed=0, theta=10000.0):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(M, Kd, generator=g) * 2).to(dtype)
    w = (torch.randn((H + 2 * Hkv) * D, Kd, generator=g) / Kd**0.5).to(dtype)
    nw = (0.5 + torch.rand(Kd, generator=g)).to(dtype)
    pos = torch.randint(0, 3 * slots, (M,), generator=g)
    pos[0] = 0
    rope = RotaryEmbedding(D, theta)
    kc = torch.randn(M, Hkv, slots, D, generator=g).to(dtype)
    vc = torch.randn(M, Hkv, slots, D, generator=g).to(dtype)
    return x, w, nw, pos, rope, kc, vc


def _unfused(x, w, nw, pos, rope, kc, vc, H, Hkv, D):
    """The model's step: RMSNorm + F.linear (naive_decode_linear rounds as it), apply_rope in x's dtype with the
    layer's cos / sin, K and V written at slot pos % slots."""
    M = x.shape[0]
    y = naive_decode_linear(x, w, nw, 1e-5)
    q, k, v = y.split([H * D, Hkv * D, Hkv * D], dim=-1)
    cos, sin = rope(pos[:, None], x.dtype)  # (M, 1, D)
    q = apply_rope(q.view(M, 1, H, D).transpose(1, 2), cos, sin)  # (M, H, 1, D)
    k = apply_rope(k.view(M, 1, Hkv, D).transpose(1, 2), cos, sin)
    kc, vc = kc.clone(), vc.clone()
    rows = torch.arange(M)
    kc[rows, :, pos % kc.shape[2]] = k[:, :, 0]
    vc[rows, :, pos % kc.shape[2]] = v.view(M, Hkv, D)
    return q[:, :, 0].reshape(M, H * D), kc, vc


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("H,Hkv,D", [(3, 3, 8), (3, 1, 6), (9, 1, 8)], ids=["g1", "g3-d6", "g9"])
def test_reference_is_the_unfused_step(H, Hkv, D, dtype):
    """The reference, given the weight in ``rope_pair_order``, computes the unfused step to the bit: same q, same
    cache rows written, nothing else in the caches touched."""
    M = 4
    x, w, nw, pos, rope, kc, vc = _case(M, H, Hkv, D, dtype=dtype)
    q_ref, kc_ref, vc_ref = _unfused(x, w, nw, pos, rope, kc, vc, H, Hkv, D)
    w_il = w[rope_pair_order(H, Hkv, D)]
    kc2, vc2 = kc.clone(), vc.clone()
    q = naive_decode_qkv_rope(x, w_il, nw, 1e-5, pos, rope.inv_freq, H, Hkv, D, kc2, vc2)
    assert torch.equal(q, q_ref) and torch.equal(kc2, kc_ref) and torch.equal(vc2, vc_ref)


def test_pair_order_is_a_permutation_pairing_rope_halves():
    order = rope_pair_order(2, 1, 4)  # rows: q0 [0..4), q1 [4..8), k [8..12), v [12..16)
    assert order.tolist() == [0, 2, 1, 3, 4, 6, 5, 7, 8, 10, 9, 11, 12, 13, 14, 15]
    assert sorted(order.tolist()) == list(range(16))


def _kernel_and_reference(M, H, Hkv, D, dtype):
    """decode_qkv_rope's kernel and the reference on one case (``_case``, seed M), each on its own caches: q,
    q_ref, the K caches, the V caches, and the positions written."""
    x, w, nw, pos, rope, kc, vc = _case(M, H, Hkv, D, dtype=dtype, seed=M)
    w_il = w[rope_pair_order(H, Hkv, D)]
    kc_ref, vc_ref = kc.clone(), vc.clone()
    q_ref = naive_decode_qkv_rope(x, w_il, nw, 1e-5, pos, rope.inv_freq, H, Hkv, D, kc_ref, vc_ref)
    q = decode_qkv_rope(x, w_il, nw, 1e-5, pos, rope.inv_freq, H, Hkv, D, kc, vc)
    assert K.last_backend("decode_qkv_rope") == "triton"
    return q, q_ref, kc, kc_ref, vc, vc_ref, pos


@interpreter_only
@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("M", [1, 3, 16, 37])
@pytest.mark.parametrize("H,Hkv,D", [(3, 3, 8), (3, 1, 6), (9, 1, 8), (9, 3, 8)], ids=["g1", "g3-d6", "g9", "g3"])
def test_triton_matches_reference(H, Hkv, D, M, dtype, monkeypatch):
    """The kernel (element-wise products at M = 1, 3; tl.dot at 16) against the reference: q, and the caches
    (written rows and untouched ones), with positions past the slots (ring slots) and at 0."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    q, q_ref, kc, kc_ref, vc, vc_ref, pos = _kernel_and_reference(M, H, Hkv, D, dtype)
    if dtype == torch.bfloat16:  # every rounding repeated: to the bit (a GPU's cos / sin may differ by an ulp)
        assert torch.equal(q, q_ref) and torch.equal(kc, kc_ref) and torch.equal(vc, vc_ref)
    tol = 1e-6  # fp32: the products summed in another order
    assert rel_err(q.float(), q_ref.float()) <= tol
    assert rel_err(kc.float(), kc_ref.float()) <= tol and rel_err(vc.float(), vc_ref.float()) <= tol
    written = torch.zeros_like(kc, dtype=torch.bool)
    written[torch.arange(M), :, pos % kc.shape[2]] = True
    assert torch.equal(kc[~written], kc_ref[~written]) and torch.equal(vc[~written], vc_ref[~written])


@interpreter_only
@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("M", [37, 64])
def test_triton_in_row_tiles_matches_reference(M, dtype, monkeypatch):
    """x's rows in tiles of 16 a program (``M_TILE``; 3 and 4 row blocks, the last ragged at 37): q and the caches
    as the reference writes them, every row's positions and cache rows its own."""
    from archzoo.kernels.decode_linear import triton as gt

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setitem(gt.CONFIG_OVERRIDE, "M_TILE", 16)
    H, Hkv, D = 9, 3, 8
    assert gt.launch_plan(M, (H + 2 * Hkv) * D, 64, torch.device("cpu"), rope=True)["m_blocks"] == -(-M // 16)
    q, q_ref, kc, kc_ref, vc, vc_ref, _ = _kernel_and_reference(M, H, Hkv, D, dtype)
    tol = 1e-6 if dtype == torch.float32 else 8e-3  # bf16: a sum next to a rounding boundary may flip one ulp
    assert rel_err(q.float(), q_ref.float()) <= tol
    assert rel_err(kc.float(), kc_ref.float()) <= tol and rel_err(vc.float(), vc_ref.float()) <= tol


def _several(B, T, H, Hkv, D, dtype, seed):
    """B cache rows of T consecutive tokens each (a speculative verify's (B, T) forward): x (B*T, K) row-major by
    cache row, each row's positions consecutive from its own start, caches (B, Hkv, slots, D)."""
    x, w, nw, _, rope, kc, vc = _case(B * T, H, Hkv, D, dtype=dtype, seed=seed, slots=16)
    start = torch.tensor([0, 5, 9][:B])
    pos = (start[:, None] + torch.arange(T)[None, :]).reshape(-1)
    return x, w, nw, pos, rope, kc[:B].clone(), vc[:B].clone()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("B,T", [(1, 3), (2, 3), (3, 5)])
def test_reference_with_several_tokens_a_row(B, T, dtype):
    """tokens_per_row = T: the reference equals T one-token calls, token t of every row at its own position,
    each writing its own slot of its row's cache."""
    H, Hkv, D = 3, 1, 8
    x, w, nw, pos, rope, kc, vc = _several(B, T, H, Hkv, D, dtype, seed=B * 10 + T)
    w_il = w[rope_pair_order(H, Hkv, D)]
    kc_ref, vc_ref, qs = kc.clone(), vc.clone(), []
    for t in range(T):
        rows = torch.arange(B) * T + t
        qs.append(naive_decode_qkv_rope(x[rows], w_il, nw, 1e-5, pos[rows], rope.inv_freq, H, Hkv, D, kc_ref, vc_ref))
    q_ref = torch.stack(qs, dim=1).reshape(B * T, -1)  # back to row-major by cache row
    q = naive_decode_qkv_rope(x, w_il, nw, 1e-5, pos, rope.inv_freq, H, Hkv, D, kc, vc, tokens_per_row=T)
    tol = 0 if dtype == torch.bfloat16 else 1e-6  # fp32: a matmul of B*T rows rounds unlike one of B
    for name, got, want in (("q", q, q_ref), ("k_cache", kc, kc_ref), ("v_cache", vc, vc_ref)):
        assert rel_err(got.float(), want.float()) <= tol, name


@interpreter_only
@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("B,T", [(1, 3), (2, 3), (3, 5)])
def test_triton_with_several_tokens_a_row(B, T, dtype, monkeypatch):
    """The kernel with tokens_per_row = T against the reference: q and both caches, written slots and the rest."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    H, Hkv, D = 9, 3, 8
    x, w, nw, pos, rope, kc, vc = _several(B, T, H, Hkv, D, dtype, seed=B + T)
    w_il = w[rope_pair_order(H, Hkv, D)]
    kc_ref, vc_ref = kc.clone(), vc.clone()
    q_ref = naive_decode_qkv_rope(x, w_il, nw, 1e-5, pos, rope.inv_freq, H, Hkv, D, kc_ref, vc_ref, tokens_per_row=T)
    q = decode_qkv_rope(x, w_il, nw, 1e-5, pos, rope.inv_freq, H, Hkv, D, kc, vc, tokens_per_row=T)
    assert K.last_backend("decode_qkv_rope") == "triton"
    tol = 0 if dtype == torch.bfloat16 else 1e-6
    assert rel_err(q.float(), q_ref.float()) <= tol
    assert rel_err(kc.float(), kc_ref.float()) <= tol and rel_err(vc.float(), vc_ref.float()) <= tol


def test_several_tokens_a_row_bad_input():
    x, w, nw, pos, rope, kc, vc = _several(2, 3, 3, 1, 8, torch.float32, seed=0)
    w_il = w[rope_pair_order(3, 1, 8)]
    with pytest.raises(ValueError, match="tokens_per_row must be a positive int dividing M=6, got 4"):
        decode_qkv_rope(x, w_il, nw, 1e-5, pos, rope.inv_freq, 3, 1, 8, kc, vc, tokens_per_row=4)
    with pytest.raises(ValueError, match="k_cache must be \\(M // tokens_per_row"):
        decode_qkv_rope(x, w_il, nw, 1e-5, pos, rope.inv_freq, 3, 1, 8, kc, vc, tokens_per_row=2)


def test_bad_input_names_the_argument():
    x, w, nw, pos, rope, kc, vc = _case(2, 3, 1, 8)
    with pytest.raises(ValueError, match="weight has 40 rows; Q\\|K\\|V of 3 \\+ 2 x 2 heads"):
        decode_qkv_rope(x, w, nw, 1e-5, pos, rope.inv_freq, 3, 2, 8, kc, vc)
    with pytest.raises(ValueError, match="k_cache must be"):
        decode_qkv_rope(x, w, nw, 1e-5, pos, rope.inv_freq, 3, 1, 8, kc[:1], vc)
    with pytest.raises(ValueError, match="positions must be an \\(M,\\)"):
        decode_qkv_rope(x, w, nw, 1e-5, pos.float(), rope.inv_freq, 3, 1, 8, kc, vc)
    with pytest.raises(ValueError, match="inv_freq must be a \\(4,\\) float32"):
        decode_qkv_rope(x, w, nw, 1e-5, pos, rope.inv_freq.double(), 3, 1, 8, kc, vc)


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("rope_split", [False, True], ids=["whole_k", "rope_split"])
@pytest.mark.parametrize("M", [1, 16, 64])
def test_cuda_teacher_shape_bf16(M, rope_split, monkeypatch):
    """bf16 at the teacher's attention (9 / 3 heads of 64, d_model 576), a 4,096-slot cache, positions up to 4,000:
    against the reference (a GPU's cos / sin and summation order may move a rounding: a tolerance, not the bit),
    repeating to the bit, and the same in a CUDA graph replay; with ``ROPE_SPLIT`` too (K split, the last split
    program's epilogue; its counters reset within the graph)."""
    from archzoo.kernels.decode_linear import triton as gt

    monkeypatch.setitem(gt.CONFIG_OVERRIDE, "ROPE_SPLIT", rope_split)
    H, Hkv, D = 9, 3, 64
    x, w, nw, pos, rope, kc, vc = _case(M, H, Hkv, D, Kd=576, slots=4096, dtype=torch.bfloat16, theta=100000.0)
    pos = torch.randint(0, 4000, (M,), generator=torch.Generator().manual_seed(1))
    x, w, nw, pos, kc, vc = (t.cuda() for t in (x, w, nw, pos, kc, vc))
    inv = rope.inv_freq.cuda()
    w_il = w[rope_pair_order(H, Hkv, D).cuda()]
    kr, vr = kc.clone(), vc.clone()
    qr = naive_decode_qkv_rope(x, w_il, nw, 1e-5, pos, inv, H, Hkv, D, kr, vr)
    q = decode_qkv_rope(x, w_il, nw, 1e-5, pos, inv, H, Hkv, D, kc, vc)
    assert K.last_backend("decode_qkv_rope") == "triton"
    assert rel_err(q.float(), qr.float()) <= 5e-3
    assert rel_err(kc.float(), kr.float()) <= 5e-3 and rel_err(vc.float(), vr.float()) <= 5e-3
    kc2, vc2 = kc.clone(), vc.clone()
    assert torch.equal(q, decode_qkv_rope(x, w_il, nw, 1e-5, pos, inv, H, Hkv, D, kc2, vc2))
    assert torch.equal(kc2, kc) and torch.equal(vc2, vc)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out = decode_qkv_rope(x, w_il, nw, 1e-5, pos, inv, H, Hkv, D, kc2, vc2)
    g.replay()
    torch.cuda.synchronize()
    assert torch.equal(out, q), "a CUDA-graph replay must give the eager result"


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("B,T", [(1, 3), (1, 5), (16, 3)])
def test_cuda_several_tokens_a_row_bf16(B, T):
    """A speculative verify's Q|K|V at the teacher's attention shape in bf16: B cache rows of T consecutive tokens,
    against the reference (a tolerance: a GPU's cos / sin), the rows' other slots untouched."""
    H, Hkv, D = 9, 3, 64
    g = torch.Generator().manual_seed(B * T)
    x = torch.randn(B * T, 576, generator=g).to(torch.bfloat16).cuda()
    w = (torch.randn((H + 2 * Hkv) * D, 576, generator=g) / 24).to(torch.bfloat16).cuda()
    nw = (0.5 + torch.rand(576, generator=g)).to(torch.bfloat16).cuda()
    start = torch.randint(0, 4000, (B,), generator=g)
    pos = (start[:, None] + torch.arange(T)[None, :]).reshape(-1).cuda()
    kc = torch.randn(B, Hkv, 4096, D, generator=g).to(torch.bfloat16).cuda()
    vc = torch.randn(B, Hkv, 4096, D, generator=g).to(torch.bfloat16).cuda()
    inv = RotaryEmbedding(D, 100000.0).inv_freq.cuda()
    w_il = w[rope_pair_order(H, Hkv, D).cuda()]
    kr, vr = kc.clone(), vc.clone()
    qr = naive_decode_qkv_rope(x, w_il, nw, 1e-5, pos, inv, H, Hkv, D, kr, vr, tokens_per_row=T)
    q = decode_qkv_rope(x, w_il, nw, 1e-5, pos, inv, H, Hkv, D, kc, vc, tokens_per_row=T)
    assert K.last_backend("decode_qkv_rope") == "triton"
    assert rel_err(q.float(), qr.float()) <= 5e-3
    assert rel_err(kc.float(), kr.float()) <= 5e-3 and rel_err(vc.float(), vr.float()) <= 5e-3


@interpreter_only
@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("M", [1, 16])
def test_triton_split_k_matches_reference(M, dtype, monkeypatch):
    """``ROPE_SPLIT``: Q|K|V with RoPE split along K (3 ways, the last a short chunk), the last split program of each
    column block summing the partials and writing q and the caches (the fixup: one launch, no reduce kernel, every
    counter zero again): q and the caches as the reference's, rows the step did not write untouched; without
    ``ROPE_SPLIT`` the same call never splits."""
    from archzoo.kernels import _fixup
    from archzoo.kernels.decode_linear import triton as gt

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setitem(gt.CONFIG_OVERRIDE, "SPLIT_K", 3)
    H, Hkv, D, Kd = 9, 3, 8, 40
    N = (H + 2 * Hkv) * D
    assert gt.launch_plan(M, N, Kd, torch.device("cpu"), rope=True)["n_splits"] == 1
    monkeypatch.setitem(gt.CONFIG_OVERRIDE, "ROPE_SPLIT", True)
    plan = gt.launch_plan(M, N, Kd, torch.device("cpu"), rope=True)
    assert (plan["n_splits"], plan["fixup"]) == (3, True)
    x, w, nw, pos, rope, kc, vc = _case(M, H, Hkv, D, Kd=Kd, dtype=dtype, seed=M + 1)
    w_il = w[rope_pair_order(H, Hkv, D)]
    kc_ref, vc_ref = kc.clone(), vc.clone()
    q_ref = naive_decode_qkv_rope(x, w_il, nw, 1e-5, pos, rope.inv_freq, H, Hkv, D, kc_ref, vc_ref)
    q = decode_qkv_rope(x, w_il, nw, 1e-5, pos, rope.inv_freq, H, Hkv, D, kc, vc)
    assert K.last_backend("decode_qkv_rope") == "triton"
    tol = 1e-6 if dtype == torch.float32 else 8e-3  # bf16: the split's sum order may flip a rounding by one ulp
    assert rel_err(q.float(), q_ref.float()) <= tol
    assert rel_err(kc.float(), kc_ref.float()) <= tol and rel_err(vc.float(), vc_ref.float()) <= tol
    written = torch.zeros_like(kc, dtype=torch.bool)
    written[torch.arange(M), :, pos % kc.shape[2]] = True
    assert torch.equal(kc[~written], kc_ref[~written]) and torch.equal(vc[~written], vc_ref[~written])
    assert _fixup.COUNTERS[x.device].eq(0).all(), "every counter must be zero again after a call"


# ---------------------------------------------------------- RoPE and the cache write after a projection made elsewhere


def _rope_write_case(M, H, Hkv, D, dtype, tokens=1):
    """y = the fused copy's projection (pair order, rounded to dtype, as F.linear gives it), with decode_qkv_rope's
    other arguments; caches of M // tokens rows."""
    x, w, nw, pos, rope, kc, vc = _case(M, H, Hkv, D, dtype=dtype, seed=M)
    y = naive_decode_linear(x, w[rope_pair_order(H, Hkv, D)], nw, 1e-5)  # (M, N) in pair order
    kc, vc = kc[: M // tokens].contiguous(), vc[: M // tokens].contiguous()
    if tokens > 1:  # a row's tokens at consecutive positions, as a speculative verify writes them
        pos = (torch.arange(M) % tokens) + 5 * (torch.arange(M) // tokens)
    return y, pos, rope, kc, vc


@interpreter_only
@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("M,tokens", [(1, 1), (3, 1), (37, 1), (70, 1), (6, 3)])
@pytest.mark.parametrize("H,Hkv,D", [(3, 3, 8), (3, 1, 6), (9, 1, 8), (9, 3, 8)], ids=["g1", "g3-d6", "g9", "g3"])
def test_rope_write_matches_reference(H, Hkv, D, M, tokens, dtype, monkeypatch):
    """``decode_rope_write`` (any M: 70 rows are past the GEMV's 64) against its reference: q and both caches to the
    bit in bf16 (every rounding repeated), written and untouched slots, ring positions past the slots, several tokens
    a cache row; and the reference equals ``decode_qkv_rope``'s on the same projection."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    y, pos, rope, kc, vc = _rope_write_case(M, H, Hkv, D, dtype, tokens)
    kc_ref, vc_ref = kc.clone(), vc.clone()
    q_ref = naive_decode_rope_write(y, pos, rope.inv_freq, H, Hkv, D, kc_ref, vc_ref, tokens)
    q = K.decode_rope_write(y, pos, rope.inv_freq, H, Hkv, D, kc, vc, tokens_per_row=tokens)
    assert K.last_backend("decode_rope_write") == "triton"
    if dtype == torch.bfloat16:
        assert torch.equal(q, q_ref) and torch.equal(kc, kc_ref) and torch.equal(vc, vc_ref)
    assert rel_err(q.float(), q_ref.float()) <= 1e-6
    assert torch.equal(kc, kc_ref) or rel_err(kc.float(), kc_ref.float()) <= 1e-6
    assert torch.equal(vc, vc_ref)  # V is copied as it is
    if tokens == 1:  # the reference is decode_qkv_rope's, on the projection it computes itself
        x, w, nw, _, _, kc0, vc0 = _case(M, H, Hkv, D, dtype=dtype, seed=M)
        kc2, vc2 = kc0[:M].clone(), vc0[:M].clone()
        q2 = naive_decode_qkv_rope(x, w[rope_pair_order(H, Hkv, D)], nw, 1e-5, pos, rope.inv_freq, H, Hkv, D, kc2, vc2)
        assert torch.equal(q2, q_ref) and torch.equal(kc2, kc_ref) and torch.equal(vc2, vc_ref)


def test_rope_write_bad_input():
    y, pos, rope, kc, vc = _rope_write_case(4, 3, 1, 6, torch.float32)
    args = (pos, rope.inv_freq, 3, 1, 6, kc, vc)
    with pytest.raises(ValueError, match="y must be"):
        K.decode_rope_write(y[0], *args)
    with pytest.raises(ValueError, match="y has 28 rows"):
        K.decode_rope_write(y[:, :28], *args)
    with pytest.raises(ValueError, match="k_cache must be"):
        K.decode_rope_write(y, pos, rope.inv_freq, 3, 1, 6, kc[:2], vc)
    with pytest.raises(ValueError, match="tokens_per_row"):
        K.decode_rope_write(y, *args, tokens_per_row=3)


def test_rope_write_float64_is_the_reference():
    y, pos, rope, kc, vc = _rope_write_case(5, 3, 1, 6, torch.float64)
    kc2, vc2 = kc.clone(), vc.clone()
    q = K.decode_rope_write(y, pos, rope.inv_freq, 3, 1, 6, kc, vc)
    assert K.last_backend("decode_rope_write") == "naive"
    q2 = naive_decode_rope_write(y, pos, rope.inv_freq, 3, 1, 6, kc2, vc2)
    assert torch.equal(q, q2) and torch.equal(kc, kc2) and torch.equal(vc, vc2)


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("M", [17, 64])
def test_cuda_rope_write_teacher_shape(M):
    """On the GPU in bf16 at the teacher's shape (9 / 3 heads of 64, a 256-slot cache): q and the caches against the
    reference (a GPU's cos / sin may differ from torch's by an ulp)."""
    g = torch.Generator().manual_seed(M)
    H, Hkv, D = 9, 3, 64
    y = (torch.randn(M, (H + 2 * Hkv) * D, generator=g)).bfloat16().cuda()
    pos = torch.randint(0, 600, (M,), generator=g).cuda()
    inv = RotaryEmbedding(D, 100000.0).inv_freq.cuda()
    kc, vc = (torch.randn(M, Hkv, 256, D, generator=g).bfloat16().cuda() for _ in range(2))
    kc_ref, vc_ref = kc.clone(), vc.clone()
    q = K.decode_rope_write(y, pos, inv, H, Hkv, D, kc, vc)
    assert K.last_backend("decode_rope_write") == "triton"
    q_ref = naive_decode_rope_write(y, pos, inv, H, Hkv, D, kc_ref, vc_ref)
    assert rel_err(q.float(), q_ref.float()) <= 1e-2 and rel_err(kc.float(), kc_ref.float()) <= 1e-2
    assert torch.equal(vc, vc_ref)
