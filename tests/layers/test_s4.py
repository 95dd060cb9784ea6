"""S4D: convolution path == recurrence, full == prefill + decode, the initialisations, state bytes."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import archzoo
from archzoo.config import S4Config
from archzoo.layers import ForwardContext
from archzoo.layers.s4 import S4D

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "models"
INITS = ["lin", "inv", "real"]
SPLITS = [[17], [1] * 17, [6, 1, 1, 5, 4], [1, 9, 1, 1, 5], [8, 9]]


def rel_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    return ((a - ref).pow(2).mean().sqrt() / ref.pow(2).mean().sqrt()).item()


def make_layer(init: str, seed: int = 0, d_model: int = 6, d_state: int = 8) -> S4D:
    torch.manual_seed(seed)
    # dt up to 0.5 so that the state carries over many steps and the skip D u does not dominate
    m = S4D(S4Config(d_state=d_state, init=init, dt_min=0.05, dt_max=0.5), d_model).double()
    with torch.no_grad():
        m.D.mul_(0.1)
        m.o_proj.weight.normal_(0.0, 0.5)
    return m


def reference_s4d(m: S4D, u: torch.Tensor) -> torch.Tensor:
    """The ZOH recurrence h_t = dA h_{t-1} + dB u_t, y_t = sum over all d_state modes of C h_t, one step at a time.

    Written from the paper's formulas with the conjugate modes spelt out (no 2 Re shortcut).
    """
    b, T, H = u.shape
    A = -torch.exp(m.A_log_re)
    if m.is_complex:
        A = torch.complex(A, m.A_im)
        Bp, Cp = torch.view_as_complex(m.B), torch.view_as_complex(m.C)
        A, Bp, Cp = (torch.cat([t, t.conj()], dim=-1) for t in (A, Bp, Cp))  # (H, d_state)
    else:
        Bp, Cp = m.B, m.C
    dt = torch.exp(m.log_dt)[:, None]
    dA = torch.exp(dt * A)
    dB = (dA - 1) / A * Bp
    h = torch.zeros(b, H, A.shape[-1], dtype=dA.dtype)
    ys = []
    for t in range(T):
        h = dA * h + dB * u[:, t, :, None]
        y = (Cp * h).sum(-1)
        if y.is_complex():
            assert y.imag.abs().max() < 1e-12, "conjugate pairs must give a real output"
            y = y.real
        ys.append(y + m.D * u[:, t])
    y = torch.stack(ys, dim=1)  # (B, T, H)
    return F.linear(F.gelu(y), m.o_proj.weight)


@pytest.mark.parametrize("init", INITS)
def test_convolution_equals_recurrence(init):
    m = make_layer(init)
    x = torch.randn(2, 23, 6, dtype=torch.float64)
    out = m(x, None, ForwardContext())
    ref = reference_s4d(m, x)
    assert rel_err(out, ref) < 1e-12, f"S4D-{init} conv path vs recurrence: rel err {rel_err(out, ref):.2e}"


@pytest.mark.parametrize("init", INITS)
@pytest.mark.parametrize("split", SPLITS)
def test_full_equals_prefill_plus_decode(init, split):
    m = make_layer(init, seed=1)
    x = torch.randn(3, sum(split), 6, dtype=torch.float64)
    full = m(x, None, ForwardContext())
    state = m.new_state(3, sum(split), torch.float64, "cpu")
    outs, pos = [], 0
    for n in split:
        outs.append(m(x[:, pos : pos + n], state, ForwardContext(pos=pos)))
        pos += n
    inc = torch.cat(outs, dim=1)
    assert rel_err(inc, full) < 1e-12, f"S4D-{init} incremental output, split {split}: rel err {rel_err(inc, full):.2e}"


@pytest.mark.parametrize("init", INITS)
def test_closed_form_state_equals_recurrent_state(init):
    m = make_layer(init, seed=2)
    x = torch.randn(2, 9, 6, dtype=torch.float64)
    a, b = m.new_state(2, 9, torch.float64, "cpu"), m.new_state(2, 9, torch.float64, "cpu")
    m(x[:, :3], a, ForwardContext(pos=0))
    m(x[:, 3:], a, ForwardContext(pos=3))
    for t in range(9):
        m(x[:, t : t + 1], b, ForwardContext(pos=t))
    assert rel_err(a["ssm"], b["ssm"]) < 1e-12, f"final state: rel err {rel_err(a['ssm'], b['ssm']):.2e}"


def test_position_zero_ignores_stale_state():
    m = make_layer("lin", seed=3)
    x = torch.randn(2, 5, 6, dtype=torch.float64)
    state = m.new_state(2, 5, torch.float64, "cpu")
    state["ssm"].normal_()
    out = m(x, state, ForwardContext(pos=0))
    assert rel_err(out, m(x, None, ForwardContext())) < 1e-12, "a forward at pos 0 must not read old buffers"


def test_initialisations():
    H, N = 4, 16
    lin = S4D(S4Config(d_state=N, init="lin"), H)
    n = torch.arange(N // 2, dtype=torch.float32)
    assert torch.allclose(-torch.exp(lin.A_log_re), torch.full((H, N // 2), -0.5))
    assert torch.allclose(lin.A_im, math.pi * n.expand(H, -1)), "S4D-Lin: Im A_n = pi n"
    inv = S4D(S4Config(d_state=N, init="inv"), H)
    assert torch.allclose(inv.A_im, (N / math.pi * (N / (2 * n + 1) - 1)).expand(H, -1)), "S4D-Inv imaginary parts"
    real = S4D(S4Config(d_state=N, init="real"), H)
    assert real.A_im is None and real.n_modes == N
    assert torch.allclose(-torch.exp(real.A_log_re), -(torch.arange(N) + 1.0).expand(H, -1)), "S4D-Real: A_n = -(n+1)"
    cfg = S4Config(d_state=N, dt_min=1e-3, dt_max=1e-1)
    dt = torch.exp(S4D(cfg, 256).log_dt)
    assert dt.min() >= 1e-3 * (1 - 1e-5) and dt.max() <= 1e-1 * (1 + 1e-5), "dt outside [dt_min, dt_max]"
    for name, p in lin.named_parameters():
        assert getattr(p, "_no_weight_decay", False) == (name in S4D.no_weight_decay_names), name


def test_odd_state_with_complex_init_is_an_error():
    with pytest.raises(ValueError, match="d_state"):
        S4D(S4Config(d_state=7, init="lin"), 4)
    S4D(S4Config(d_state=7, init="real"), 4)  # real modes need no pairing


@pytest.mark.parametrize("init", INITS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.float64])
def test_state_bytes(init, dtype):
    cfg = S4Config(d_state=8, init=init)
    sizes = {S4D.state_bytes(cfg, 16, 3, n, dtype) for n in (1, 100, 10_000)}
    assert len(sizes) == 1, f"S4D state bytes depend on the sequence length: {sizes}"
    st = S4D(cfg, 16).new_state(3, 100, dtype, "cpu")
    assert st.nbytes() == sizes.pop()
    assert st["ssm"].dtype == torch.promote_types(dtype, torch.float32)
    assert S4D.bounded_state(cfg)


@pytest.mark.parametrize("init", INITS)
def test_gradients_reach_every_parameter(init):
    m = make_layer(init, seed=4)
    x = torch.randn(2, 7, 6, dtype=torch.float64, requires_grad=True)
    m(x, None, ForwardContext()).square().sum().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient reaches {name}"


def test_gradient_matches_recurrence():
    m = make_layer("inv", seed=5)
    x = torch.randn(2, 11, 6, dtype=torch.float64)
    m(x, None, ForwardContext()).sin().sum().backward()
    conv = {n: p.grad.clone() for n, p in m.named_parameters()}
    m.zero_grad()
    reference_s4d(m, x).sin().sum().backward()
    for n, p in m.named_parameters():
        assert rel_err(conv[n], p.grad) < 1e-10, f"grad {n}: rel err {rel_err(conv[n], p.grad):.2e}"


def test_cache_holds_no_autograd_history():
    """Prefill and decode with grad enabled are differentiable; the buffer carries no graph into the next call."""
    m = make_layer("lin", seed=7)
    x = torch.randn(2, 8, 6, dtype=torch.float64)
    state = m.new_state(2, 8, torch.float64, "cpu")
    m(x[:, :3], state, ForwardContext(pos=0)).sum().backward()
    m(x[:, 3:4], state, ForwardContext(pos=3)).sum().backward()
    m(x[:, 4:], state, ForwardContext(pos=4)).sum().backward()
    assert not state["ssm"].requires_grad and state["ssm"].grad_fn is None, "state ssm carries autograd history"


# -------------------------------------------------------------------- model level


def model_cfg(init: str) -> dict:
    cfg = archzoo.load_config(CONFIGS / "s4.yaml").to_dict()
    cfg.update(n_layers=2, d_model=16, vocab_size=64, init_std=0.2)
    cfg["mixer"].update(d_state=8, init=init, dt_min=0.05, dt_max=0.5)
    return cfg


@pytest.mark.parametrize("init", INITS)
def test_model_invariant(init):
    model = archzoo.build_model(model_cfg(init)).double().eval()
    torch.manual_seed(0)
    ids = torch.randint(0, 64, (2, 17))
    with torch.no_grad():
        full = model(ids)
        for split in SPLITS:
            cache = model.new_cache(2, 17)
            outs, pos = [], 0
            for n in split:
                outs.append(model(ids[:, pos : pos + n], cache=cache))
                pos += n
            inc = torch.cat(outs, dim=1)
            assert rel_err(inc, full) < 1e-6, f"S4D-{init} logits, split {split}: rel err {rel_err(inc, full):.2e}"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_model_cache_bytes(dtype):
    cfg = archzoo.load_config(CONFIGS / "s4.yaml")
    model = archzoo.build_model(cfg)
    assert model.new_cache(2, 64, dtype=dtype).nbytes() == archzoo.cache_bytes(cfg, 2, 64, dtype)
    assert archzoo.cache_bytes(cfg, 2, 64, dtype) == archzoo.cache_bytes(cfg, 2, 8192, dtype)
    assert model.new_cache(1, 16).capacity is None, "an S4D cache accepts any length"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    m = make_layer("lin", seed=6).float()
    x = torch.randn(2, 300, 6)
    ref = m(x, None, ForwardContext())
    mc = m.cuda()
    state = mc.new_state(2, 300, torch.float32, "cuda")
    with torch.no_grad():
        out = mc(x.cuda(), None, ForwardContext()).cpu()
        inc = [mc(x[:, :290].cuda(), state, ForwardContext(pos=0))]
        inc += [mc(x[:, t : t + 1].cuda(), state, ForwardContext(pos=t)) for t in range(290, 300)]
    inc = torch.cat(inc, dim=1).cpu()
    assert rel_err(out, ref) < 1e-4, f"CUDA S4D output: rel err {rel_err(out, ref):.2e}"
    assert rel_err(inc, ref) < 1e-4, f"CUDA S4D prefill + decode: rel err {rel_err(inc, ref):.2e}"


def test_bf16_cast_keeps_the_spectrum_in_fp32():
    """model.to(bfloat16) would round A_im (up to pi * d_state / 2) to 3 digits; S4D keeps it fp32."""
    import yaml

    from archzoo import build_model

    data = yaml.safe_load((Path(__file__).resolve().parents[2] / "configs" / "models" / "s4.yaml").read_text())
    data["init_std"] = 0.1
    torch.manual_seed(0)
    model = build_model(data).eval()
    ref = build_model(data).eval()
    ref.load_state_dict(model.state_dict())
    ref = ref.double()
    model = model.to(torch.bfloat16)
    mixer = model.blocks[0].mixer
    assert mixer.A_im.dtype == torch.float32 and mixer.o_proj.weight.dtype == torch.bfloat16
    ids = torch.randint(0, data["vocab_size"], (2, 64))
    with torch.no_grad():
        out, exp = model(ids).double(), ref(ids)
    err = ((out - exp).norm() / exp.norm()).item()
    assert err < 3e-2, f"bf16 S4D model logits: relative error {err:.3e}"
