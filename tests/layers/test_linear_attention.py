"""Linear attention and BASED: kernels (chunked == recurrent), feature maps, the layer, the models."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

import archzoo
from archzoo.config import LinearAttentionConfig
from archzoo.kernels.linear_attention import chunk_linear_attention, linear_attention, naive_linear_attention
from archzoo.layers import ForwardContext
from archzoo.layers.feature_maps import FEATURE_MAPS, TaylorExp, build_feature_map, feature_map_dim
from archzoo.layers.linear_attention import LinearAttention

from conftest import TRITON_SKIP, assert_close, f64_model, load_yaml, requires_cuda

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "models"
MAPS = list(FEATURE_MAPS)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These tensors are tiny: a second intra-op thread only adds overhead (10x+ on a busy machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def perturb_(module: torch.nn.Module, std: float, gen: torch.Generator) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * std)


# ------------------------------------------------------------------------------ kernels

TOL = {torch.float64: 1e-10, torch.float32: 1e-4, torch.bfloat16: 2e-2}


def kernel_inputs(fmap: str, B: int, T: int, H: int, f: int, Dv: int, dtype: torch.dtype, seed: int = 0):
    """Feature-mapped q, k (through a differentiable map of raw leaves), v and an initial state."""
    g = torch.Generator().manual_seed(seed)
    phi = build_feature_map(fmap, H, f).double()
    perturb_(phi, 0.3, g)
    raw_q = (torch.randn(B, T, H, f, generator=g, dtype=torch.float64) / f**0.25).to(dtype).requires_grad_()
    raw_k = (torch.randn(B, T, H, f, generator=g, dtype=torch.float64) / f**0.25).to(dtype).requires_grad_()
    v = torch.randn(B, T, H, Dv, generator=g, dtype=torch.float64).to(dtype).requires_grad_()
    # A state as a prefix of 5 positive-map tokens would leave (so z keeps the normaliser away from 0).
    F = feature_map_dim(fmap, f)
    kp = torch.rand(B, 5, H, F, generator=g, dtype=torch.float64)
    vp = torch.randn(B, 5, H, Dv, generator=g, dtype=torch.float64)
    S0 = torch.einsum("bthf,bthd->bhfd", kp, vp).requires_grad_()
    z0 = kp.sum(1).requires_grad_()
    phi = phi.to(dtype)
    return phi, raw_q, raw_k, v, (S0, z0)


SHAPES = [  # B, T, H, f, Dv, chunk_size
    (1, 1, 2, 5, 3, 4),
    (2, 63, 3, 6, 7, 16),
    (1, 37, 1, 3, 5, 64),
]


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}T{}H{}f{}Dv{}C{}".format(*s))
@pytest.mark.parametrize("fmap", MAPS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_chunk_matches_naive(fmap, shape, normalize, dtype):
    B, T, H, f, Dv, C = shape
    phi, raw_q, raw_k, v, (S0, z0) = kernel_inputs(fmap, B, T, H, f, Dv, dtype)
    results = []
    for fn in (naive_linear_attention, lambda *a, **kw: chunk_linear_attention(*a, **kw, chunk_size=C)):
        leaves = (raw_q, raw_k, v, S0, z0)
        for t in leaves:
            t.grad = None
        o, (S, z) = fn(phi(raw_q), phi(raw_k), v, (S0, z0), output_final_state=True, normalize=normalize)
        g = torch.Generator().manual_seed(1)
        loss = (o.double() * torch.randn(o.shape, generator=g, dtype=torch.float64)).sum() + (S * S).sum() + z.sum()
        loss.backward()
        results.append((o, S, z, *(t.grad.clone() for t in leaves)))
    names = ("o", "final S", "final z", "dq", "dk", "dv", "dS0", "dz0")
    # The identity map's normaliser q.z changes sign, so it comes close to 0 and amplifies round-off.
    tol = TOL[dtype] * (10 if fmap == "identity" and normalize else 1)
    for name, ref, got in zip(names, *results, strict=True):
        assert_close(f"{fmap} {name}", got, ref, tol)


def test_chunk_matches_naive_bf16():
    phi, raw_q, raw_k, v, state = kernel_inputs("elu", 2, 40, 2, 8, 8, torch.bfloat16)
    q, k = phi(raw_q), phi(raw_k)
    o_ref, (S_ref, _) = naive_linear_attention(q, k, v, state, output_final_state=True)
    o, (S, _) = chunk_linear_attention(q, k, v, state, output_final_state=True, chunk_size=16)
    assert o.dtype == torch.bfloat16 and S.dtype == torch.float32
    assert_close("o (bf16)", o, o_ref, TOL[torch.bfloat16])
    assert_close("final S (bf16)", S, S_ref, 1e-5)


def test_chunk_split_continues_state():
    """Two chunked calls chained through the state == one call (also a chunk size larger than T)."""
    _, _, _, v, _ = kernel_inputs("elu", 2, 50, 2, 4, 6, torch.float64)
    g = torch.Generator().manual_seed(3)
    q, k = torch.rand(2, 50, 2, 4, generator=g, dtype=torch.float64), torch.rand(2, 50, 2, 4, generator=g).double()
    v = v.detach()
    o_ref, (S_ref, z_ref) = linear_attention(q, k, v, output_final_state=True, chunk_size=8)
    o1, st = linear_attention(q[:, :21], k[:, :21], v[:, :21], output_final_state=True, chunk_size=8)
    o2, (S, z) = linear_attention(q[:, 21:], k[:, 21:], v[:, 21:], st, output_final_state=True, chunk_size=100)
    assert_close("o", torch.cat([o1, o2], 1), o_ref, 1e-12)
    assert_close("final S", S, S_ref, 1e-12)
    assert_close("final z", z, z_ref, 1e-12)


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("fmap", ["taylor", "hedgehog"])
def test_chunk_on_cuda_matches_naive_on_cpu(fmap):
    """The chunked form on CUDA (fp32 inputs, TF32 off) against the float64 recurrence on CPU, gradients too."""
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        phi, raw_q, raw_k, v, (S0, z0) = kernel_inputs(fmap, 2, 100, 3, 16, 32, torch.float64)
        results = []
        runs = (("cpu", torch.float64, naive_linear_attention), ("cuda", torch.float32, linear_attention))
        for dev, dtype, fn in runs:
            leaves = [t.detach().to(dev, dtype).requires_grad_() for t in (raw_q, raw_k, v, S0, z0)]
            phi_d = phi.to(dev, dtype)
            o, (S, z) = fn(phi_d(leaves[0]), phi_d(leaves[1]), leaves[2], (leaves[3], leaves[4]), True)
            (o.pow(2).sum() + S.sum() + z.sum()).backward()
            results.append([t.detach().cpu() for t in (o, S, z)] + [t.grad.cpu() for t in leaves])
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old
    for name, ref, got in zip(("o", "S", "z", "dq", "dk", "dv", "dS0", "dz0"), *results, strict=True):
        assert_close(f"{fmap} cuda {name}", got, ref, 1e-4)


def test_kernel_bad_input():
    q = torch.rand(1, 4, 2, 3)
    v = torch.rand(1, 4, 2, 5)
    with pytest.raises(ValueError, match="k must"):
        chunk_linear_attention(q, q[..., :2], v)
    with pytest.raises(ValueError, match="v must"):
        chunk_linear_attention(q, q, v[:, :3])
    with pytest.raises(ValueError, match="q must"):
        naive_linear_attention(q[0], q[0], v[0])
    with pytest.raises(ValueError, match="initial_state S"):
        chunk_linear_attention(q, q, v, (torch.zeros(1, 2, 3, 4), torch.zeros(1, 2, 3)))
    with pytest.raises(ValueError, match="chunk_size"):
        chunk_linear_attention(q, q, v, chunk_size=0)
    with pytest.raises(ValueError, match="feature_map"):
        feature_map_dim("softmax", 4)


# ------------------------------------------------------------------------- feature maps


def test_taylor_dot_product_is_second_order_exp():
    d = 16
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(50, d, generator=g, dtype=torch.float64), torch.randn(50, d, generator=g, dtype=torch.float64)
    phi = TaylorExp(d)
    assert phi(q).shape[-1] == feature_map_dim("taylor", d) == 1 + d + d * d
    s = (q * k).sum(-1) / math.sqrt(d)
    assert_close("phi(q).phi(k)", (phi(q) * phi(k)).sum(-1), 1 + s + s**2 / 2, 1e-12)


def test_feature_map_dims_and_positivity():
    x = torch.randn(2, 3, 4, 6)
    for name in MAPS:
        y = build_feature_map(name, 4, 6)(x)
        assert y.shape == (2, 3, 4, feature_map_dim(name, 6)), name
        if name in ("elu", "relu", "hedgehog"):
            assert bool((y >= 0).all()), f"{name} feature map must be non-negative"


def test_hedgehog_identity_init_and_gradients():
    model = archzoo.build_model(
        {
            "vocab_size": 64,
            "d_model": 32,
            "n_layers": 1,
            "mixer": {"type": "linear_attention", "n_heads": 2, "feature_map": "hedgehog", "feature_dim": 8},
            "ffn": {"type": "none"},
        }
    )
    mixer = model.blocks[0].mixer
    for name in ("q_map", "k_map"):
        w = getattr(mixer, name).weight
        assert torch.equal(w, torch.eye(8).expand(2, 8, 8)), f"{name}.weight must start at the identity"
    model(torch.randint(0, 64, (2, 12))).logsumexp(-1).sum().backward()
    for name in ("q_map", "k_map"):
        grad = getattr(mixer, name).weight.grad
        assert grad is not None and grad.abs().sum() > 0, f"{name}.weight gets no gradient"


# ------------------------------------------------------------------------------ layer

SPLITS = [(29,), (13, 1, 1, 5, 9), (8, 8, 13), (1,) * 6 + (23,), (20, 9)]


@pytest.mark.parametrize("fmap", MAPS)
def test_layer_full_equals_prefill_decode(fmap):
    torch.manual_seed(0)
    cfg = LinearAttentionConfig(n_heads=2, feature_map=fmap, feature_dim=6, chunk_size=8)
    layer = LinearAttention(cfg, d_model=24).double()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.2 + (p if p.dim() == 3 else 0))
    x = torch.randn(2, 29, 24, generator=g, dtype=torch.float64)
    with torch.no_grad():
        full = layer(x, None, ForwardContext(pos=0))
        k = layer.k_map(layer.k_proj(x).view(2, 29, 2, 6))  # (B, T, H, F)
        ref_state = (torch.einsum("bthf,bthd->bhfd", k, layer.v_proj(x).view(2, 29, 2, -1)), k.sum(1))
    for split in SPLITS:
        state = layer.new_state(2, 29, torch.float64, "cpu")
        state["S"].fill_(7.0)  # garbage from an earlier sequence: position 0 must ignore it
        nbytes, outs, pos = state.nbytes(), [], 0
        with torch.no_grad():
            for n in split:
                outs.append(layer(x[:, pos : pos + n], state, ForwardContext(pos=pos)))
                pos += n
        assert_close(f"{fmap} split {split}", torch.cat(outs, 1), full, 1e-10)
        assert_close(f"{fmap} state S after {split}", state["S"], ref_state[0], 1e-10)
        assert_close(f"{fmap} state z after {split}", state["z"], ref_state[1], 1e-10)
        assert state.nbytes() == nbytes == LinearAttention.state_bytes(cfg, 24, 2, 29, torch.float64)


def test_layer_state_bytes_constant_in_length():
    cfg = LinearAttentionConfig(n_heads=4, feature_map="taylor", feature_dim=16)
    sizes = {LinearAttention.state_bytes(cfg, 128, 3, n, torch.bfloat16) for n in (1, 64, 100_000)}
    assert sizes == {3 * 4 * 273 * 33 * 4}, f"state bytes {sizes} must be one value: 3 seqs x 4 heads x 273 x 33 fp32"
    layer = LinearAttention(cfg, 128)
    assert layer.new_state(3, 100_000, torch.bfloat16, "cpu").nbytes() == sizes.pop()
    assert LinearAttention.bounded_state(cfg)


# ------------------------------------------------------------------------------ models


def model_dict(name: str, chunk_size: int = 8) -> dict:
    d = load_yaml(CONFIGS / f"{name}.yaml")
    d["mixer"]["chunk_size"] = chunk_size  # shorter than the test sequence
    return d


@pytest.mark.parametrize("name", ["linear", "based"])
def test_model_full_equals_prefill_decode(name):
    model = f64_model(model_dict(name))
    T = 45  # past the chunk size (8) and BASED's window (16)
    ids = torch.randint(0, 512, (2, T), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full = model(ids)
        for split in [(17, 1, 1, 4, 22), (1,) * 3 + (30, 5, 1, 1, 1, 1, 1, 1, 1), (40, 5)]:
            cache = model.new_cache(2, T, dtype=torch.float64)
            nbytes, outs, pos = cache.nbytes(), [], 0
            for n in split:
                outs.append(model(ids[:, pos : pos + n], cache=cache))
                pos += n
            assert cache.seq_len == T and cache.nbytes() == nbytes
            assert_close(f"{name} logits, split {split}", torch.cat(outs, 1), full, 1e-9)


@pytest.mark.parametrize("name", ["linear", "based"])
def test_model_cache_bytes(name):
    cfg = archzoo.load_config(CONFIGS / f"{name}.yaml")
    model = archzoo.build_model(cfg)
    for dtype in (torch.bfloat16, torch.float32):
        for n in (8, 200):
            measured = model.new_cache(2, n, dtype=dtype).nbytes()
            assert measured == archzoo.cache_bytes(cfg, 2, n, dtype), f"{name} cache bytes, len {n}, {dtype}"
        # Windowed attention stops growing at its window, linear attention never grows.
        assert archzoo.cache_bytes(cfg, 2, 64, dtype) == archzoo.cache_bytes(cfg, 2, 100_000, dtype)
    assert model.new_cache(1, 100_000).capacity is None
    per_linear_layer = 4 * feature_map_dim(cfg.mixer.feature_map, cfg.mixer.feature_dim or 32) * 33 * 4
    n_linear = sum(b.mixer.type == "linear_attention" for b in cfg.blocks)
    attn = archzoo.cache_bytes(cfg, 1, 100, torch.float32) - n_linear * per_linear_layer
    assert attn == (0 if name == "linear" else 2 * 2 * 4 * 16 * 32 * 4), f"{name}: unexpected attention cache bytes"


def test_based_config_pattern():
    cfg = archzoo.load_config(CONFIGS / "based.yaml")
    kinds = [
        (b.mixer.type, getattr(b.mixer, "feature_map", None), getattr(b.mixer, "window", None)) for b in cfg.blocks
    ]
    assert kinds == [("linear_attention", "taylor", None), ("attention", None, 16)] * 2
    with pytest.raises(archzoo.ConfigError, match="mixer.feature_map"):
        archzoo.load_config(
            {**model_dict("linear"), "mixer": {"type": "linear_attention", "n_heads": 4, "feature_map": "exp"}}
        )


@pytest.mark.skipif(TRITON_SKIP is not None, reason=TRITON_SKIP or "")
@pytest.mark.parametrize("name", ["linear", "based"])
def test_decode_step_through_the_triton_update(name, monkeypatch):
    """Where the Triton kernels run (here: the interpreter), a decode step's recurrence is the fused update
    kernel: the logits and the state equal those of the PyTorch update, step by step."""
    import copy

    import archzoo.kernels as K

    from conftest import MODEL_CONFIGS

    model = f64_model(next(p for p in MODEL_CONFIGS if p.stem == name)).float()
    ids = torch.randint(0, model.cfg.vocab_size, (2, 10), generator=torch.Generator().manual_seed(0))
    cache = model.new_cache(2, 10, dtype=torch.float32)
    with torch.no_grad():
        model(ids[:, :5], cache=cache)
        ref_cache = copy.deepcopy(cache)
        for t in range(5, 10):
            monkeypatch.setenv("TRITON_INTERPRET", "1")
            got = model(ids[:, t : t + 1], cache=cache)
            assert K.last_backend("linear_attention_update") == "triton"
            monkeypatch.delenv("TRITON_INTERPRET")
            ref = model(ids[:, t : t + 1], cache=ref_cache)
            assert K.last_backend("linear_attention_update") == "naive"
            assert_close(f"{name} step {t}", got, ref, 1e-5)
    for a, b in zip(cache.layers, ref_cache.layers, strict=True):
        for key in a.buffers if a is not None else ():
            assert_close(f"{name} state {key}", a[key], b[key], 1e-5)
