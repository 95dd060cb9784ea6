"""BASED attention: the Triton kernel (forward, backward) against the quadratic reference, the reference against
linear attention over the expanded Taylor features, and the dispatcher's final state against the chunked form's.

Without a GPU the kernel runs on CPU tensors in Triton's interpreter (at its INTERPRET_CONFIG, 32 x 32 tiles;
on a GPU these short lengths take CUDA_DEFAULT). Awkward shapes: one position, lengths not a multiple of the
tiles and shorter than them, query/key dims that are not a power of two, value dims that are not either; and
tiles of queries and keys of different sizes, each way round. Errors are relative (RMS of the difference over
RMS of the reference) and named per tensor.
"""

from __future__ import annotations

import pytest
import torch

import archzoo.kernels as K
from archzoo.kernels._testing import import_triton_kernels, rel_err
from archzoo.kernels.based_attention import final_state, naive_based_attention, taylor_features
from archzoo.kernels.linear_attention import chunk_linear_attention

_mods, _skip = import_triton_kernels("archzoo.kernels.based_attention.triton")
TB = _mods[0] if _mods else None
DEV = "cuda" if torch.cuda.is_available() else "cpu"
needs_triton = pytest.mark.skipif(_skip is not None, reason=_skip or "")
TOL = {torch.float32: 2e-5, torch.bfloat16: 3e-2, torch.float16: 5e-3}
SHAPES = [  # (B, T, H, d, Dv)
    (1, 1, 1, 16, 16),
    (2, 7, 3, 16, 20),
    (1, 64, 2, 16, 64),
    (2, 65, 2, 5, 16),
    (1, 130, 3, 24, 33),
]


def _inputs(B, T, H, d, Dv, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, T, H, d, generator=g)
    k = torch.randn(B, T, H, d, generator=g)
    v = torch.randn(B, T, H, Dv, generator=g)
    return tuple(x.to(DEV, dtype) for x in (q, k, v))


def _check(got, want, shape, dtype, what=""):
    for name, w in want.items():
        # Over one position dq and dk are of the order of eps (o = v a / (a + eps)), a difference of two O(1)
        # terms in any finite precision: there they are measured against an O(1) floor, not their own size.
        floor = 1.0 if shape[1] == 1 and name in ("dq", "dk") else 0.0
        err = (got[name].double() - w).pow(2).mean().sqrt() / max(w.pow(2).mean().sqrt().item(), floor)
        assert err < TOL[dtype], f"{name}: relative error {err:.2e} at {shape} {dtype} {what}"


def _run(fn, q, k, v):
    leaves = [x.detach().clone().requires_grad_(True) for x in (q, k, v)]
    o = fn(*leaves)
    g = torch.Generator().manual_seed(1)
    (o.float() * torch.randn(o.shape, generator=g).to(o.device)).sum().backward()
    return {"o": o.detach(), "dq": leaves[0].grad, "dk": leaves[1].grad, "dv": leaves[2].grad}


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_reference_is_linear_attention_over_the_taylor_features(shape):
    q, k, v = (x.cpu().double() for x in _inputs(*shape, torch.float32))
    want, (S, z) = chunk_linear_attention(taylor_features(q), taylor_features(k), v, None, True, True, 1e-6)
    assert rel_err(naive_based_attention(q, k, v, 1e-6), want) < 1e-12
    S2, z2 = final_state(k, v)
    assert rel_err(S2, S) < 1e-12 and rel_err(z2, z) < 1e-12


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_kernel_matches_the_reference(shape, dtype):
    q, k, v = _inputs(*shape, dtype)
    got = _run(lambda *a: TB.based_attention(*a, 1e-6), q, k, v)
    want = _run(lambda *a: naive_based_attention(*(x.double() for x in a), 1e-6), q, k, v)
    _check(got, want, shape, dtype)


# (BLOCK_M, BLOCK_N) per kernel: more queries than keys per tile, and fewer, in each of the three kernels (dk/dv's
# programs own BLOCK_N keys). The diagonal then spans two key tiles, or a key tile spans two query tiles.
OTHER_TILES = {
    "m32_n16": {"fwd": (32, 16), "bwd_dq": (32, 16), "bwd_dkdv": (32, 16)},
    "m16_n32": {"fwd": (16, 32), "bwd_dq": (16, 32), "bwd_dkdv": (16, 32)},
}


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", [(1, 1, 2, 16, 16), (2, 17, 2, 5, 20), (1, 45, 3, 16, 33), (1, 100, 2, 24, 16)],
                         ids=str)  # fmt: skip
@pytest.mark.parametrize("tiles", OTHER_TILES, ids=str)
def test_kernel_at_other_tiles_matches_the_reference(tiles, shape, dtype, monkeypatch):
    """Each kernel launched at an explicit config (``CONFIG_OVERRIDE``) whose query and key tiles differ."""
    override = {k: dict(BLOCK_M=m, BLOCK_N=n, num_warps=4, num_stages=2) for k, (m, n) in OTHER_TILES[tiles].items()}
    monkeypatch.setattr(TB, "CONFIG_OVERRIDE", override)
    q, k, v = _inputs(*shape, dtype, seed=3)
    got = _run(lambda *a: TB.based_attention(*a, 1e-6), q, k, v)
    ran = TB.last_configs(shape[1])
    for name, (m, n) in OTHER_TILES[tiles].items():
        assert ran[name].startswith(f"BLOCK_M={m} BLOCK_N={n} ") and ran[name].endswith("(override)"), ran
    want = _run(lambda *a: naive_based_attention(*(x.double() for x in a), 1e-6), q, k, v)
    _check(got, want, shape, dtype, tiles)


@needs_triton
def test_configs_are_tiles_the_kernels_take():
    """Every config an autotuner or a default may pick: power-of-two tiles of at least 16 (tl.dot's least), one
    warpgroup or two, a real pipeline depth."""
    singles = (TB.CUDA_DEFAULT, TB.FP32_DEFAULT, TB.INTERPRET_CONFIG)
    lists = [TB.CUDA_CONFIGS, TB.FP32_CONFIGS, *({k: [c] for k, c in d.items()} for d in singles)]
    for configs in lists:
        assert set(configs) == set(TB.KERNELS)
        for name, cfgs in configs.items():
            assert cfgs, name
            for c in cfgs:
                assert set(c) == {"BLOCK_M", "BLOCK_N", "num_warps", "num_stages"}, (name, c)
                for b in (c["BLOCK_M"], c["BLOCK_N"]):
                    assert b >= 16 and b & (b - 1) == 0, (name, c)
                assert c["num_warps"] in (4, 8) and c["num_stages"] >= 1, (name, c)


@pytest.mark.skipif(DEV != "cuda", reason="autotuning times configs on a GPU")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_autotuned_kernel_matches_the_reference(dtype, monkeypatch):
    """Above SHORT_T the kernels are autotuned (here over two configs each, with unequal tiles): the pick is
    recorded and the outputs are those of the reference."""
    if dtype == torch.float32:
        monkeypatch.setattr(TB, "FP32_CONFIGS", {k: v[:2] for k, v in TB.FP32_CONFIGS.items()})
    else:
        two = {
            "fwd": [TB._cfg(64, 32, 4, 2), TB._cfg(128, 64, 8, 2)],
            "bwd_dq": [TB._cfg(64, 32, 4, 2), TB._cfg(128, 64, 8, 2)],
            "bwd_dkdv": [TB._cfg(32, 64, 4, 2), TB._cfg(64, 128, 8, 2)],
        }
        monkeypatch.setattr(TB, "CUDA_CONFIGS", two)
    shape = (1, TB.SHORT_T + 45, 2, 16, 64)
    q, k, v = _inputs(*shape, dtype)
    got = _run(lambda *a: TB.based_attention(*a, 1e-6), q, k, v)
    ran = TB.last_configs(shape[1])
    assert set(ran) == set(TB.KERNELS) and all(c.endswith("(autotuned)") for c in ran.values()), ran
    want = _run(lambda *a: naive_based_attention(*(x.double() for x in a), 1e-6), q, k, v)
    _check(got, want, shape, dtype, "autotuned")


@needs_triton
def test_kernel_reads_strided_inputs():
    """q, k, v as views of one fused projection (the layer's q_proj / k_proj outputs are views too)."""
    B, T, H, d, Dv = 2, 70, 2, 16, 16
    qkv = torch.randn(B, T, H, 2 * d + Dv, device=DEV)
    q, k, v = qkv[..., :d], qkv[..., d : 2 * d], qkv[..., 2 * d :]
    want = naive_based_attention(q, k, v)
    assert rel_err(TB.based_attention(q, k, v), want) < TOL[torch.float32]


@needs_triton
def test_dispatcher_runs_the_kernel_and_returns_the_chunked_forms_state(monkeypatch):
    if DEV == "cpu":
        monkeypatch.setenv("TRITON_INTERPRET", "1")  # the dispatcher's switch for CPU tensors
    q, k, v = _inputs(2, 40, 2, 16, 16, torch.float32)
    o, (S, z) = K.based_attention(q, k, v, output_final_state=True)
    assert K.last_backend("based_attention") == "triton"
    want, (S2, z2) = chunk_linear_attention(taylor_features(q), taylor_features(k), v, None, True, True, 1e-6)
    assert rel_err(o, want) < TOL[torch.float32]
    assert rel_err(S, S2) < 1e-5 and rel_err(z, z2) < 1e-5
    # With gradients wanted and a final state asked for, the chunked form runs (its state is differentiable).
    o, _ = K.based_attention(q.requires_grad_(), k, v, output_final_state=True)
    assert K.last_backend("based_attention") == "chunk"


def test_float64_takes_the_chunked_form():
    q, k, v = (x.cpu().double() for x in _inputs(1, 9, 2, 16, 16, torch.float32))
    o, final = K.based_attention(q, k, v)
    assert final is None and K.last_backend("based_attention") == "chunk"
    assert rel_err(o, naive_based_attention(q, k, v)) < 1e-12


@needs_triton
def test_refuses_inputs_it_cannot_take():
    q, k, v = _inputs(1, 4, 1, 16, 16, torch.float32)
    with pytest.raises(ValueError, match="value dim 200"):
        TB.based_attention(q, k, torch.randn(1, 4, 1, 200, device=DEV))
    with pytest.raises(ValueError, match="one dtype"):
        TB.based_attention(q, k, v.double())
    with pytest.raises(ValueError, match="k must have q's shape"):
        TB.based_attention(q, k[..., :8], v)


@needs_triton
def test_based_layer_through_the_kernel_equals_the_chunked_form(monkeypatch):
    """The BASED model in fp32: logits, parameter gradients, and a prefill's state (what decoding continues from)
    are the same through the kernel (Triton, the interpreter on CPU) as through the expanded chunked form."""
    import archzoo

    from conftest import ROOT, load_yaml

    torch.manual_seed(0)
    model = archzoo.build_model(load_yaml(ROOT / "configs/models/based.yaml")).to(DEV).float()
    ids = torch.randint(0, model.cfg.vocab_size, (2, 70), device=DEV)

    import importlib

    based_mod = importlib.import_module("archzoo.kernels.based_attention")  # the package, not K.based_attention
    real_use_triton = based_mod.use_triton

    def run(kernel: bool):
        if DEV == "cpu":
            monkeypatch.setenv("TRITON_INTERPRET", "1")
        # The chunked form on any device (on CUDA the dispatcher would otherwise take the kernel both times).
        monkeypatch.setattr(based_mod, "use_triton", real_use_triton if kernel else lambda *t: False)
        model.zero_grad()
        logits = model(ids)
        logits.float().pow(2).mean().backward()
        backend = K.last_backend("based_attention")
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        with torch.no_grad():
            cache = model.new_cache(2, 80)
            model(ids, cache=cache)
        states = [s for s in cache.layers if s is not None and "S" in s]
        return logits.detach(), grads, [(s["S"].clone(), s["z"].clone()) for s in states], backend

    lk, gk, sk, bk = run(True)
    lc, gc, sc, bc = run(False)
    assert (bk, bc) == ("triton", "chunk")
    assert rel_err(lk, lc) < 1e-5
    for n in gc:
        assert rel_err(gk[n], gc[n]) < 1e-4, n
    assert sk and all(rel_err(a, b) < 1e-5 and rel_err(za, zb) < 1e-5 for (a, za), (b, zb) in zip(sk, sc, strict=True))
