"""The Mamba block: an independent step-by-step recurrence, full == prefill + decode, state bytes, init."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import archzoo
from archzoo.config import MambaConfig
from archzoo.layers import ForwardContext
from archzoo.layers.mamba import Mamba

from conftest import recording_backend

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "models"
SPLITS = [[13], [1] * 13, [5, 1, 1, 4, 2], [1, 7, 1, 1, 3], [6, 3, 4]]


def rel_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    return ((a - ref).pow(2).mean().sqrt() / ref.pow(2).mean().sqrt()).item()


def make_layer(seed: int = 0, d_model: int = 12, **kw) -> Mamba:
    torch.manual_seed(seed)
    cfg = MambaConfig(**{"d_state": 4, "d_conv": 3, "expand": 2, "dt_min": 0.05, "dt_max": 0.5, **kw})
    m = Mamba(cfg, d_model).double()
    with torch.no_grad():  # larger projections than the default init, so every path matters
        for lin in (m.in_proj, m.x_proj, m.o_proj):
            lin.weight.normal_(0.0, 0.3)
    return m


def reference_mamba(m: Mamba, u: torch.Tensor) -> torch.Tensor:
    """Gu & Dao (2023) Alg. 2 one token at a time, in plain PyTorch, from the module's parameters only."""
    b, T, _ = u.shape
    R, N, W = m.dt_rank, m.d_state, m.d_conv
    xz = F.linear(u, m.in_proj.weight, m.in_proj.bias)
    xs, z = xz[..., : m.d_inner], xz[..., m.d_inner :]  # (B, T, Di)
    w = m.conv1d.weight[:, 0, :]  # (Di, W)
    A = -torch.exp(m.A_log)
    h = torch.zeros(b, m.d_inner, N, dtype=u.dtype)
    outs = []
    for t in range(T):
        acc = torch.zeros(b, m.d_inner, dtype=u.dtype) if m.conv1d.bias is None else m.conv1d.bias.expand(b, -1)
        for k in range(W):
            s = t - (W - 1) + k
            if s >= 0:
                acc = acc + w[:, k] * xs[:, s]
        xc = F.silu(acc)  # (B, Di)
        dbc = xc @ m.x_proj.weight.t()
        dt = F.softplus(dbc[:, :R] @ m.dt_proj.weight.t() + m.dt_proj.bias)  # (B, Di)
        Bt, Ct = dbc[:, R : R + N], dbc[:, R + N :]  # (B, N)
        h = torch.exp(dt[..., None] * A) * h + (dt * xc)[..., None] * Bt[:, None, :]
        y = (h * Ct[:, None, :]).sum(-1) + m.D * xc
        y = y * F.silu(z[:, t])
        outs.append(F.linear(y, m.o_proj.weight, m.o_proj.bias))
    return torch.stack(outs, dim=1)


@pytest.mark.parametrize("kw", [{}, {"d_conv": 2, "bias": True}, {"d_conv": 4, "conv_bias": False, "dt_rank": 3}])
def test_matches_plain_recurrence(kw):
    m = make_layer(**kw)
    x = torch.randn(2, 9, 12, dtype=torch.float64)
    ref = reference_mamba(m, x)
    out = m(x, None, ForwardContext())
    assert rel_err(out, ref) < 1e-12, f"mamba output vs plain recurrence: rel err {rel_err(out, ref):.2e}"


@pytest.mark.parametrize("split", SPLITS)
def test_full_equals_prefill_plus_decode(split):
    m = make_layer(seed=1)
    x = torch.randn(3, sum(split), 12, dtype=torch.float64)
    full = m(x, None, ForwardContext())
    state = m.new_state(3, sum(split), torch.float64, "cpu")
    outs, pos = [], 0
    for n in split:
        outs.append(m(x[:, pos : pos + n], state, ForwardContext(pos=pos)))
        pos += n
    inc = torch.cat(outs, dim=1)
    assert rel_err(inc, full) < 1e-12, f"mamba incremental output, split {split}: rel err {rel_err(inc, full):.2e}"


def test_final_state_matches_decode_state():
    """Prefill's final conv/ssm states equal those left by decoding the same tokens one by one."""
    m = make_layer(seed=2)
    x = torch.randn(2, 7, 12, dtype=torch.float64)
    a, b = m.new_state(2, 7, torch.float64, "cpu"), m.new_state(2, 7, torch.float64, "cpu")
    m(x, a, ForwardContext(pos=0))
    for t in range(7):
        m(x[:, t : t + 1], b, ForwardContext(pos=t))
    for name in ("conv", "ssm"):
        assert rel_err(a[name], b[name]) < 1e-12, f"state {name}: rel err {rel_err(a[name], b[name]):.2e}"


def test_position_zero_ignores_stale_state():
    m = make_layer(seed=3)
    x = torch.randn(2, 5, 12, dtype=torch.float64)
    state = m.new_state(2, 5, torch.float64, "cpu")
    for buf in state.buffers.values():
        buf.normal_()
    out = m(x, state, ForwardContext(pos=0))
    ref = m(x, None, ForwardContext())
    assert rel_err(out, ref) < 1e-12, "a forward at pos 0 must not read the buffers' old contents"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.float64])
def test_state_bytes(dtype):
    cfg = MambaConfig(d_state=16, d_conv=4, expand=2)
    m = Mamba(cfg, 32)
    sizes = {Mamba.state_bytes(cfg, 32, 3, n, dtype) for n in (1, 100, 10_000)}
    assert len(sizes) == 1, f"Mamba state bytes depend on the sequence length: {sizes}"
    st = m.new_state(3, 100, dtype, "cpu")
    assert st.nbytes() == sizes.pop()
    assert st["ssm"].dtype == torch.promote_types(dtype, torch.float32), "the SSM state is kept in fp32 or wider"
    assert st["conv"].dtype == dtype and st["conv"].shape == (3, 64, 3)
    assert Mamba.bounded_state(cfg)


def test_init():
    cfg = MambaConfig(d_state=8, dt_min=1e-3, dt_max=1e-1, dt_init_floor=1e-4)
    m = Mamba(cfg, 64)
    n = torch.arange(1, 9, dtype=torch.float32)
    assert torch.allclose(-torch.exp(m.A_log), -n.expand(128, 8)), "A must start as S4D-Real: -(1..N)"
    assert torch.all(m.D == 1)
    dt = F.softplus(m.dt_proj.bias)
    assert dt.min() >= 1e-3 * (1 - 1e-5) and dt.max() <= 1e-1 * (1 + 1e-5), "softplus(dt bias) outside [dt_min, dt_max]"
    bound = m.dt_rank**-0.5
    assert m.dt_proj.weight.abs().max() <= bound
    for name, p in m.named_parameters():
        assert getattr(p, "_no_weight_decay", False) == (name in Mamba.no_weight_decay_names), name


def test_gradients_reach_every_parameter():
    m = make_layer(seed=4, bias=True)
    x = torch.randn(2, 6, 12, dtype=torch.float64, requires_grad=True)
    m(x, None, ForwardContext()).square().sum().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient reaches {name}"
    assert x.grad.abs().sum() > 0


def test_cache_holds_no_autograd_history():
    """Prefill with grad enabled is differentiable; the buffers it leaves carry no graph into the next call."""
    m = make_layer(seed=6)
    x = torch.randn(2, 8, 12, dtype=torch.float64)
    state = m.new_state(2, 8, torch.float64, "cpu")
    m(x[:, :3], state, ForwardContext(pos=0)).sum().backward()
    m(x[:, 3:4], state, ForwardContext(pos=3))
    m(x[:, 4:], state, ForwardContext(pos=4)).sum().backward()  # a chunk continuing from the state
    for name, buf in state.buffers.items():
        assert not buf.requires_grad and buf.grad_fn is None, f"state {name} carries autograd history"


# -------------------------------------------------------------------- model level


def model_cfg(**over) -> dict:
    cfg = archzoo.load_config(CONFIGS / "mamba.yaml").to_dict()
    cfg.update(n_layers=2, d_model=32, vocab_size=64, init_std=0.2, layers=[])
    cfg["mixer"].update(dt_min=0.05, dt_max=0.5)
    cfg.update(over)
    return cfg


def check_model_invariant(model, splits, vocab: int, tol: float = 1e-6):
    torch.manual_seed(0)
    ids = torch.randint(0, vocab, (2, sum(splits[0])))
    with torch.no_grad():
        full = model(ids)
        for split in splits:
            cache = model.new_cache(2, ids.shape[1])
            outs, pos = [], 0
            for n in split:
                outs.append(model(ids[:, pos : pos + n], cache=cache))
                pos += n
            inc = torch.cat(outs, dim=1)
            assert cache.seq_len == ids.shape[1]
            assert rel_err(inc, full) < tol, f"logits of split {split}: rel err {rel_err(inc, full):.2e}"


def test_model_invariant():
    model = archzoo.build_model(model_cfg()).double().eval()
    check_model_invariant(model, SPLITS, 64)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_model_cache_bytes(dtype):
    for path in (CONFIGS / "mamba.yaml", CONFIGS / "jamba.yaml"):
        cfg = archzoo.load_config(path)
        if any(b.ffn.type == "moe" for b in cfg.blocks) and importlib.util.find_spec("archzoo.layers.moe") is None:
            continue
        model = archzoo.build_model(cfg)
        cache = model.new_cache(2, 64, dtype=dtype)
        assert cache.nbytes() == archzoo.cache_bytes(cfg, 2, 64, dtype), path
    cfg = archzoo.load_config(CONFIGS / "mamba.yaml")
    assert archzoo.cache_bytes(cfg, 2, 64, dtype) == archzoo.cache_bytes(cfg, 2, 8192, dtype)
    assert archzoo.build_model(cfg).new_cache(1, 16).capacity is None, "a pure Mamba cache accepts any length"


@pytest.mark.skipif(importlib.util.find_spec("archzoo.layers.moe") is None, reason="archzoo.layers.moe not written yet")
def test_jamba_invariant():
    cfg = archzoo.load_config(CONFIGS / "jamba.yaml").to_dict()
    cfg.update(d_model=32, vocab_size=64, init_std=0.2)
    cfg["mixer"].update(dt_min=0.05, dt_max=0.5)
    cfg["layers"][0]["mixer"].update(n_heads=2, n_kv_heads=1)
    model = archzoo.build_model(cfg).double().eval()  # eval: MoE inference is dropless
    kinds = [b.mixer.type for b in model.cfg.blocks]
    assert kinds == ["mamba"] * 4 + ["attention"] + ["mamba"] * 3
    assert [b.ffn.type for b in model.cfg.blocks] == ["swiglu", "moe"] * 4
    check_model_invariant(model, [[11], [4, 1, 1, 3, 2], [1] * 11], 64)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    """The same block on CUDA (Triton kernels) and on CPU (naive references), full and incremental."""
    m = make_layer(seed=5).float()
    x = torch.randn(2, 37, 12)
    ref = m(x, None, ForwardContext())
    mc = m.cuda()
    out = mc(x.cuda(), None, ForwardContext()).cpu()
    assert rel_err(out, ref) < 1e-4, f"CUDA mamba output: rel err {rel_err(out, ref):.2e}"
    state = mc.new_state(2, 37, torch.float32, "cuda")
    with torch.no_grad():
        outs = [mc(x[:, :30].cuda(), state, ForwardContext(pos=0))]
        outs += [mc(x[:, t : t + 1].cuda(), state, ForwardContext(pos=t)) for t in range(30, 37)]
    inc = torch.cat(outs, dim=1).cpu()
    assert rel_err(inc, ref) < 1e-4, f"CUDA mamba prefill + decode: rel err {rel_err(inc, ref):.2e}"


def test_decode_A_made_once_and_kept_fresh():
    """``DecodeA`` (the decode step's A = -exp(A_log), made by ``refresh_fused`` outside the step): equal to ``_A()``,
    updated in place when A_log changes (a captured graph reads its address), unchanged otherwise, released on
    demand; a step on the fused path reads it and gives the step that computes A itself, and its compiled graph
    holds no ``exp`` of A_log (it was an Inductor kernel a layer in every decode step)."""
    m = make_layer(seed=3)
    assert m.fused.A is None and m.fused.refresh() and not m.fused.refresh()
    assert torch.equal(m.fused.A, m._A())
    address = m.fused.A.data_ptr()
    with torch.no_grad():
        m.A_log.add_(0.25)
    assert m.fused.refresh() and m.fused.A.data_ptr() == address and torch.equal(m.fused.A, m._A())
    x = torch.randn(2, 12, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    states = [m.new_state(2, 8, torch.float64, "cpu") for _ in range(2)]
    with torch.no_grad():
        y_fused = m._step(x, states[0], fused=True)
        y_plain = m._step(x, states[1], fused=False)
    # the fused step also reads x_proj and dt_proj folded into one weight (FOLD_DT): the same values to rounding
    assert rel_err(y_fused, y_plain) < 1e-12 and rel_err(states[0]["ssm"], states[1]["ssm"]) < 1e-12
    graphs: list[list[str]] = []
    backend = recording_backend(graphs, ("call_function", "call_method"))
    torch._dynamo.reset()
    try:
        with torch.no_grad():
            torch.compile(lambda t: m._step(t, states[0], fused=True), backend=backend, fullgraph=True)(x)
    finally:
        torch._dynamo.reset()
    targets = [t for g in graphs for t in g]
    assert targets and not [t for t in targets if "exp" in t and "expand" not in t], targets
    m.fused.release()
    assert m.fused.A is None


def test_decode_folds_x_proj_and_dt_proj(monkeypatch, caplog):
    """``FOLD_DT``: the decode copy ``xdt`` is [W_dt W_x,dt ; W_x,B ; W_x,C] (one projection for a step's dt, B, C),
    remade in place when x_proj or dt_proj changes in place; a fused step through it gives the unfolded step's
    output and state (fp64: to rounding); large layers and FOLD_DT off keep the two projections."""
    import archzoo.layers.mamba as mamba_mod

    m = make_layer(seed=4)
    assert m.fused.refresh()
    R = m.dt_rank
    wx, wdt = m.x_proj.weight, m.dt_proj.weight
    assert torch.allclose(m.fused.xdt, torch.cat([wdt @ wx[:R], wx[R:]]), rtol=0, atol=1e-14)
    address = m.fused.xdt.data_ptr()
    with torch.no_grad():
        m.dt_proj.weight.mul_(1.5)
    assert m.fused.refresh() and m.fused.xdt.data_ptr() == address
    assert torch.allclose(m.fused.xdt[: m.d_inner], m.dt_proj.weight @ wx[:R], rtol=0, atol=1e-14)
    x = torch.randn(3, 12, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    states = [m.new_state(3, 8, torch.float64, "cpu") for _ in range(2)]
    with torch.no_grad():
        for _ in range(3):
            y_fold = m._step(x, states[0], fused=True)
            y_plain = m._step(x, states[1], fused=False)
            assert rel_err(y_fold, y_plain) < 1e-12
    assert rel_err(states[0]["ssm"], states[1]["ssm"]) < 1e-12
    monkeypatch.setattr(mamba_mod, "FOLD_DT", False)
    assert m.fused.refresh() and m.fused.xdt is None  # the fold's switch is part of the copies' signature
    monkeypatch.setattr(mamba_mod, "FOLD_DT", True)
    assert m.fused.refresh() and m.fused.xdt is not None
    # d_inner 5,120, N 16, dt_rank 160 (a 2.8B Mamba): folding would read about 50 MB more a layer in bf16
    assert mamba_mod.fold_dt_extra_bytes(5120, 16, 160, 2) > mamba_mod.FOLD_DT_MAX_EXTRA_BYTES
    assert 0 < mamba_mod.fold_dt_extra_bytes(576, 16, 36, 2) < 1 << 20
    monkeypatch.setattr(mamba_mod, "FOLD_DT_MAX_EXTRA_BYTES", 0)
    with caplog.at_level(logging.WARNING):
        assert m.fused.refresh() and m.fused.xdt is None
    assert "keeps x_proj and dt_proj unfolded" in caplog.text  # said once, not silent


def test_decode_in_proj_and_conv_as_one_gemv(monkeypatch):
    """``IN_PROJ_CONV``: where the decode GEMV runs (DECODE_LINEAR "kernel" here; its reference form on this CPU),
    the fused step's in_proj and conv update are one ``decode_linear_conv`` call: the same output and states as the
    two calls, also through a compiled step (fullgraph: the conv state is the custom op's declared mutation)."""
    import archzoo.kernels as K
    import archzoo.layers.fused as fused_mod
    import archzoo.layers.mamba as mamba_mod
    from archzoo.layers.norm import RMSNorm

    m = make_layer(seed=5, d_model=12).float()
    m.fused.refresh()
    norm = RMSNorm(12).float()
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    monkeypatch.setattr(fused_mod, "DECODE_LINEAR", "kernel")
    x = torch.randn(3, 12, generator=torch.Generator().manual_seed(2))
    states = [m.new_state(3, 8, torch.float32, "cpu") for _ in range(3)]
    outs = []
    for on, st in zip((False, True), states[:2], strict=True):
        monkeypatch.setattr(mamba_mod, "IN_PROJ_CONV", on)
        K._dispatch.record("decode_linear_conv", "none")
        with torch.no_grad():
            outs.append([m._step(x * (t + 1), st, fused=True, norm=norm) for t in range(3)])
        assert K.last_backend("decode_linear_conv") == ("naive" if on else "none")  # the reference, on this CPU
    for a, b in zip(*outs, strict=True):
        assert torch.equal(a, b)
    for key in ("conv", "ssm"):
        assert torch.equal(states[0][key], states[1][key]), key
    torch._dynamo.reset()
    try:
        step = torch.compile(lambda t: m._step(t, states[2], fused=True, norm=norm), fullgraph=True, backend="eager")
        with torch.no_grad():
            got = [step(x * (t + 1)) for t in range(3)]
    finally:
        torch._dynamo.reset()
    for a, b in zip(got, outs[1], strict=True):
        assert torch.equal(a, b)
    assert torch.equal(states[2]["conv"], states[1]["conv"])
    # with FUSED_STEP on too, the in_proj + conv GEMV takes the step and the fused step says why it did not run
    monkeypatch.setattr(mamba_mod, "FUSED_STEP", True)
    with torch.no_grad():
        m._step(x, m.new_state(3, 8, torch.float32, "cpu"), fused=True, norm=norm)
    assert K.last_backend("mamba_decode_step") == "unfused"
    monkeypatch.setattr(mamba_mod, "FUSED_STEP", False)
    # where it does not fit, the two kernels run and the step says why: here a norm other than RMSNorm
    with torch.no_grad():
        m._step(x, m.new_state(3, 8, torch.float32, "cpu"), fused=True, norm=torch.nn.LayerNorm(12))
    assert K.last_backend("decode_linear_conv") == "unfused"
    assert "LayerNorm" in m._in_proj_conv_reason(x, states[0], torch.nn.LayerNorm(12))
