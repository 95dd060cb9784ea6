"""The fused Mamba decode step (``mamba_decode_step``: conv update + SiLU, x_proj, dt_proj + softplus and the state
update in one kernel) against the naive reference and against the unfused sequence the layer ran before
(``causal_conv1d_update``, ``F.linear`` twice, ``selective_state_update``), over consecutive steps with the states
carried; channel splits; the custom op under ``torch.compile``; and a tiny Mamba hybrid generating the same tokens
with ``FUSED_STEP`` on and off, its compiled step traced once. Without a GPU the kernel runs in Triton's
interpreter on CPU tensors (tiny shapes: d_inner 40 and 24, not powers of two).
"""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F

import archzoo
import archzoo.kernels as K
from archzoo.kernels import _dispatch, _fixup
from archzoo.kernels._testing import import_triton_kernels, rel_err
from archzoo.kernels.causal_conv1d import naive_causal_conv1d_fn, naive_causal_conv1d_update
from archzoo.kernels.mamba_step import naive_mamba_decode_step
from archzoo.kernels.selective_scan import naive_selective_scan_fn, naive_selective_state_update
from archzoo.layers import mamba as mamba_mod

from conftest import compiled_steps, generates_alike, interpreter_only, recording_backend

_mods, _skip = import_triton_kernels("archzoo.kernels.mamba_step.triton")
pytestmark = pytest.mark.skipif(_skip is not None, reason=_skip or "")
T = _mods[0] if _mods else None
DEV = "cuda" if torch.cuda.is_available() else "cpu"
STEPS = 3


def _inputs(b, d, r, n, w, state_len, conv_bias, dt_bias, D, z, dtype, seed=0):
    """One step's operands as the Mamba layer passes them (x and z views of one in_proj output); fp32 SSM state."""
    g = torch.Generator().manual_seed(seed)
    rn = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    xz = rn(b, 2 * d)
    t = dict(
        x=xz[:, :d],
        z=xz[:, d:] if z else None,
        conv_state=rn(b, d, state_len),
        ssm_state=rn(b, d, n),
        conv_weight=rn(d, w) * 0.5,
        conv_bias=rn(d) * 0.3 if conv_bias else None,
        x_proj_weight=rn(r + 2 * n, d) / d**0.5,
        dt_proj_weight=rn(d, r) / r**0.5,
        A=-(0.2 + torch.rand(d, n, generator=g)),
        D=rn(d) if D else None,
        dt_bias=rn(d) * 0.5 - 1.0 if dt_bias else None,
    )
    keep32 = ("ssm_state", "A")  # the SSM state and A stay fp32 (ssm_state_dtype, Mamba._A)
    return {k: None if v is None else v.to(DEV, torch.float32 if k in keep32 else dtype) for k, v in t.items()}


def _args(t, x=None, z=None):
    """mamba_decode_step's positional arguments from ``_inputs``' dict (x / z replaced for a later step)."""
    x, z = t["x"] if x is None else x, t["z"] if z is None else z
    return (x, t["conv_state"], t["ssm_state"], t["conv_weight"], t["conv_bias"], t["x_proj_weight"],
            t["dt_proj_weight"], t["A"], t["D"], z, t["dt_bias"])  # fmt: skip


def _unfused(x, conv_state, ssm_state, conv_weight, conv_bias, x_proj_weight, dt_proj_weight, A, D, z, dt_bias):
    """The layer's step before the fusion (Mamba._step with F.linear projections): xc, dt, B, C rounded to x's
    dtype between the ops. The kernels' own references, so it runs alike with or without the interpreter."""
    r, n = dt_proj_weight.shape[1], ssm_state.shape[2]
    xc = naive_causal_conv1d_update(x, conv_state, conv_weight, conv_bias, "silu")
    dt, Bm, Cm = F.linear(xc, x_proj_weight).split([r, n, n], dim=-1)
    dt = F.linear(dt, dt_proj_weight)
    return naive_selective_state_update(ssm_state, xc, dt, A, Bm, Cm, D=D, z=z, dt_bias=dt_bias, dt_softplus=True)


def _states(t):
    return {"conv_state": t["conv_state"].clone(), "ssm_state": t["ssm_state"].clone()}


def _run_steps(fn, t, xs, zs, **kw):
    """``STEPS`` consecutive steps of ``fn`` from copies of t's states -> [(y, conv state, ssm state)] per step."""
    t = {**t, **_states(t)}
    out = []
    for x, z in zip(xs, zs, strict=True):
        y = fn(*_args(t, x, z), **kw)
        out.append((y, t["conv_state"].clone(), t["ssm_state"].clone()))
    return out


def _check(name, got, ref, tol):
    err = rel_err(got, ref)
    assert got.shape == ref.shape and err <= tol, f"{name}: relative error {err:.2e} > {tol:.0e}"


CASES = [  # b, d, r, n, w, state_len, conv_bias, dt_bias, D, z, dtype, blocks (None: the interpreter's, one block)
    (1, 40, 3, 4, 4, 3, True, True, True, True, torch.float32, 16),
    (3, 24, 5, 16, 2, 1, False, False, False, False, torch.float32, None),
    (3, 40, 5, 16, 4, 4, False, True, False, True, torch.bfloat16, 16),  # state_len = w (mamba_ssm's allocation)
    (1, 24, 3, 4, 2, 1, True, False, True, False, torch.bfloat16, None),
    (3, 40, 3, 4, 4, 3, True, True, True, True, torch.bfloat16, None),
    (1, 24, 5, 16, 3, 2, True, True, True, True, torch.float32, 16),
]


def _case_id(c) -> str:
    return "b{}-d{}-r{}-n{}-w{}-S{}-cb{:d}-dtb{:d}-D{:d}-z{:d}-{}-blk{}".format(*c[:10], str(c[10])[6:], c[11])


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_steps_match_reference_and_unfused(case, monkeypatch):
    """y, the new conv state and the new SSM state of consecutive steps (states carried), against the naive
    reference (fp32 throughout) and the unfused sequence; every step changes both states, so a dropped write
    fails. The conv state is a shift: equal to the bit."""
    *shape, dtype, blocks = case
    b, d = shape[:2]
    if blocks:  # several blocks in both phases, the last one ragged
        monkeypatch.setattr(T, "CONFIG_OVERRIDE", dict(BLOCK_C=blocks, BLOCK_S=blocks))
    t = _inputs(*shape, dtype)
    g = torch.Generator().manual_seed(1)
    xs = [t["x"]] + [torch.randn(b, d, generator=g).to(DEV, dtype) for _ in range(STEPS - 1)]
    zs = [t["z"]] + [torch.randn(b, d, generator=g).to(DEV, dtype) if t["z"] is not None else None
                     for _ in range(STEPS - 1)]  # fmt: skip
    got = _run_steps(T.mamba_decode_step, t, xs, zs)
    ref = _run_steps(naive_mamba_decode_step, t, xs, zs)
    old = _run_steps(_unfused, t, xs, zs)
    lowp = dtype != torch.float32
    # y is rounded to x's dtype once (and in the unfused sequence xc, dt, B, C before it too)
    tol_ref = dict(y=8e-3 if lowp else 2e-6, conv_state=0.0, ssm_state=2e-6)
    tol_old = dict(y=2e-2 if lowp else 2e-6, conv_state=0.0, ssm_state=1e-2 if lowp else 2e-6)
    prev = (None, t["conv_state"], t["ssm_state"])
    for step, (g_, r_, o_) in enumerate(zip(got, ref, old, strict=True)):
        for i, name in enumerate(("y", "conv_state", "ssm_state")):
            _check(f"step {step} {name} vs naive", g_[i], r_[i], tol_ref[name])
            _check(f"step {step} {name} vs unfused", g_[i], o_[i], tol_old[name])
            if i:
                assert not torch.equal(r_[i], prev[i]), f"step {step}: the reference left {name} unchanged"
        assert torch.equal(g_[1], r_[1]), f"step {step}: conv_state differs from the reference's shift"
        prev = r_


def test_splits_give_the_same_bits(monkeypatch):
    """1, 2 and 3 channel splits per row (small blocks: slices of 20 / 14 channels in blocks of 8, ragged): the same
    y and states to the bit over two steps, the conv state shifted once (by the row's last program), and the
    arrival counters left at zero."""
    monkeypatch.setattr(T, "CONFIG_OVERRIDE", dict(BLOCK_C=16, BLOCK_S=8))
    b, d = 2, 40
    t = _inputs(b, d, 3, 4, 4, 3, True, True, True, True, torch.float32)
    xs = [t["x"], torch.randn(b, d, generator=torch.Generator().manual_seed(2)).to(DEV)]
    zs = [t["z"], t["z"] * 0.5]
    one = _run_steps(T.mamba_decode_step, t, xs, zs, splits=1)
    for splits in (2, 3):
        many = _run_steps(T.mamba_decode_step, t, xs, zs, splits=splits)
        for step, (a, c) in enumerate(zip(one, many, strict=True)):
            for name, u, v in zip(("y", "conv_state", "ssm_state"), a, c, strict=True):
                assert torch.equal(u, v), f"splits={splits} step {step}: {name} differs from one split's"
        assert not _fixup.COUNTERS[t["x"].device].any(), "the arrival counters are zero again after the call"


def test_plan_splits_by_batch():
    """The split heuristic on an H100's 132 SMs at the students' shape (d 576, n 16, dt_rank 36): 9 slices of
    64 channels at batch 1, 8 of 80 (aligned to 16) at batch 16, one per row once the batch fills the SMs."""
    cuda = torch.device("cuda", 0)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(T, "CONFIG_OVERRIDE", {"SM_COUNT": 132})
        plans = {b: T.plan(b, 576, 16, 36, 3, cuda)[:2] for b in (1, 16, 132, 256)}
    assert plans == {1: (9, 64), 16: (8, 80), 132: (1, 576), 256: (1, 576)}, plans


@interpreter_only
def test_traced_through_the_custom_op(monkeypatch):
    """A compiled step keeps the call whole (the custom op mutating both states): one graph, fullgraph, the states
    and y as the reference's."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    t = _inputs(2, 24, 3, 4, 4, 3, True, True, True, True, torch.float32)
    got, ref = {**t, **_states(t)}, {**t, **_states(t)}
    y = torch.compile(K.mamba_decode_step, fullgraph=True, backend="aot_eager")(*_args(got))
    assert K.last_backend("mamba_decode_step") == "triton"
    y_ref = naive_mamba_decode_step(*_args(ref))
    for name in ("conv_state", "ssm_state"):
        _check(f"traced {name}", got[name], ref[name], 2e-6)
    _check("traced y", y, y_ref, 2e-6)


@interpreter_only
def test_dispatch_and_a_shape_it_does_not_take(monkeypatch, caplog):
    """CPU tensors without the interpreter: the naive reference; with it: the kernel; a d_state past the kernel's
    limit runs the unfused kernels and says why (logged once, last_backend 'unfused'), with the same result."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    t = _inputs(1, 24, 3, 4, 4, 3, True, True, True, True, torch.float32)
    K.mamba_decode_step(*_args({**t, **_states(t)}))
    assert K.last_backend("mamba_decode_step") == "naive"
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    K.mamba_decode_step(*_args({**t, **_states(t)}))
    assert K.last_backend("mamba_decode_step") == "triton"
    wide = _inputs(1, 8, 3, 80, 2, 1, False, True, True, True, torch.float32)
    got, ref = {**wide, **_states(wide)}, {**wide, **_states(wide)}
    monkeypatch.setattr(_dispatch, "_LOGGED", set())
    with caplog.at_level(logging.WARNING, logger="archzoo.kernels"):
        y = K.mamba_decode_step(*_args(got))
    assert K.last_backend("mamba_decode_step") == "unfused"
    assert any("d_state 80 > 64" in rec.getMessage() for rec in caplog.records), "the reason is logged"
    _check("unfused y", y, naive_mamba_decode_step(*_args(ref)), 2e-6)
    _check("unfused ssm_state", got["ssm_state"], ref["ssm_state"], 2e-6)


def test_bad_input():
    t = _inputs(2, 24, 3, 4, 4, 3, True, True, True, True, torch.float32)
    bad = [
        (dict(x=t["x"][0]), r"x must have shape \(b, d\)"),
        (dict(conv_state=t["conv_state"][..., :2]), r"conv_state must have shape \(b, d, state_len\)"),
        (dict(ssm_state=t["ssm_state"][:1]), r"ssm_state must have shape \(b, d, n\)"),
        (dict(conv_weight=t["conv_weight"].repeat(1, 3)), r"width must be in 2..8"),
        (dict(x_proj_weight=t["x_proj_weight"][:-1]), r"x_proj_weight must have shape \(dt_rank \+ 2 n, d\)"),
        (dict(A=t["A"][:, :3]), r"A must have shape \(d, n\)"),
        (dict(z=t["z"][:, :5]), r"z must have shape \(b, d\)"),
        (dict(D=t["ssm_state"].int()), "D must be a float16/bfloat16/float32/float64 tensor"),
    ]
    for change, msg in bad:
        with pytest.raises(ValueError, match=msg):
            K.mamba_decode_step(*_args({**t, **_states(t), **change}))


# ------------------------------------------------------------------ the layer in a model


def _hybrid(monkeypatch, seed: int = 0):
    """A tiny Mamba hybrid in fp32: an attention layer, then a Mamba layer of d_inner 40 (expand 1.25), d_state 4,
    dt_rank 3, d_conv 4. Its prefill runs the naive sequence kernels (the interpreter's scan takes seconds); the
    decode steps under test run the Triton kernels (TRITON_INTERPRET=1)."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(mamba_mod, "causal_conv1d_fn", naive_causal_conv1d_fn)
    monkeypatch.setattr(mamba_mod, "selective_scan_fn", naive_selective_scan_fn)
    cfg = dict(
        vocab_size=64, d_model=32, n_layers=2, tie_embeddings=True, init_std=0.3,
        mixer=dict(type="attention", n_heads=2, n_kv_heads=1),
        ffn=dict(type="swiglu", d_ff=48),
        layers=[dict(at=[1], mixer=dict(type="mamba", d_state=4, d_conv=4, expand=1.25, dt_rank=3, bias=True))],
    )  # fmt: skip
    torch.manual_seed(seed)
    model = archzoo.build_model(cfg).float().eval()
    mamba = model.blocks[1].mixer
    assert (mamba.d_inner, mamba.d_state, mamba.dt_rank) == (40, 4, 3)
    return model


@interpreter_only
def test_hybrid_generates_the_same_tokens_fused_or_not(monkeypatch):
    """Greedy generation (its decode steps read the fused copies) gives the same tokens with ``FUSED_STEP`` on (the
    kernel ran) and off (the unfused kernels ran)."""
    prompts = torch.randint(0, 64, (2, 5), generator=torch.Generator().manual_seed(0))
    generates_alike(_hybrid(monkeypatch), prompts, monkeypatch, mamba_mod, "FUSED_STEP", "mamba_decode_step")


@interpreter_only
def test_compiled_step_traces_once_with_the_fused_op(monkeypatch):
    """``torch.compile(step, fullgraph=True)`` traces the fused step once over consecutive steps (the custom op in
    the graph, neither unfused update op), with the eager step's logits and states (the decode contract,
    tests/test_decode_capture.py); flipping ``FUSED_STEP`` retraces (dynamo guards on it) to the unfused ops."""
    torch._dynamo.reset()
    model = _hybrid(monkeypatch, seed=1)
    model.refresh_fused()
    ids = torch.randint(0, 64, (2, 9), generator=torch.Generator().manual_seed(1))
    cache = model.new_cache(2, 9, dtype=torch.float32)
    cache.fused_weights = True
    graphs: list[list[str]] = []  # the call_function targets of each graph dynamo compiled (CompileCounter's count)

    def switch(i):  # the last step with the switch off
        monkeypatch.setattr(mamba_mod, "FUSED_STEP", i < 8)

    for i, got, ref, ref_cache in compiled_steps(model, ids, cache, 5, recording_backend(graphs), switch):
        _check(f"step {i} logits", got, ref, 1e-5)
        for name in ("conv", "ssm"):
            _check(f"step {i} {name} state", cache.layers[1][name], ref_cache.layers[1][name], 1e-5)
    torch._dynamo.reset()
    assert len(graphs) == 2, f"{len(graphs)} graphs: one over the 3 fused steps, one after the flip"
    fused, unfused = graphs
    assert sum("mamba_decode_step" in op for op in fused) == 1, fused
    assert not [op for op in fused if "selective_state_update" in op or "causal_conv1d_update" in op], fused
    assert not [op for op in unfused if "mamba_decode_step" in op], unfused
    assert sum("selective_state_update" in op for op in unfused) == 1, unfused
