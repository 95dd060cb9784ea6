"""The decode contract: one token per row through the cache is a capturable step for every family.

``torch.compile(step, fullgraph=True)`` must trace the whole step (no graph break: the kernel
launcher, MoE routing and the recurrent updates included), compile it once, and not recompile over
64 consecutive steps; its logits equal the eager step's. The compiler backend here is dynamo with
eager execution (``CompileCounter``): it checks tracing and guards, which is what can break; the
GPU test runs inductor and CUDA graphs on the SmolLM2-sized students.
"""

from __future__ import annotations

import copy
import os

import pytest
import torch
from torch._dynamo.testing import CompileCounter

from conftest import MODEL_CONFIGS, TRITON_SKIP, assert_close, f64_model, interpreter_only, recording_backend

STEPS = 64


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("path", MODEL_CONFIGS, ids=lambda p: p.stem)
def test_compiled_step_traces_once_and_matches_eager(path):
    model = f64_model(path).float()
    B, prompt = 2, 5
    ids = torch.randint(0, model.cfg.vocab_size, (B, prompt + STEPS))
    cache = model.new_cache(B, prompt + STEPS, dtype=torch.float32)
    with torch.no_grad():
        model(ids[:, :prompt], cache=cache)
        eager_cache = copy.deepcopy(cache)
        counter = CompileCounter()
        step = torch.compile(lambda t: model(t, cache=cache), backend=counter, fullgraph=True)
        for i in range(prompt, prompt + STEPS):
            out = step(ids[:, i : i + 1])
            ref = model(ids[:, i : i + 1], cache=eager_cache)
            assert_close(f"{path.stem} step {i} logits", out, ref, 1e-5)
    assert counter.frame_count == 1, f"{path.stem}: compiled {counter.frame_count} times over {STEPS} steps"
    assert torch.equal(cache.lengths, torch.full((B,), prompt + STEPS)), "lengths advance on the device"


@pytest.mark.parametrize("path", MODEL_CONFIGS, ids=lambda p: p.stem)
def test_rows_of_different_lengths_decode_as_if_alone(path):
    """Each row of a batch holds its own prompt from position 0; a step continues each at its own length."""
    model = f64_model(path)
    lens = [3, 7]
    ids = torch.randint(0, model.cfg.vocab_size, (2, 12))
    cache = model.new_cache(2, 12)
    with torch.no_grad():
        for b, n in enumerate(lens):
            model(ids[b : b + 1, :n], cache=cache.rows(b))
        assert cache.lengths.tolist() == lens
        steps = [model(torch.stack([ids[0, 3 + t], ids[1, 7 + t]])[:, None], cache=cache) for t in range(4)]
        for b, n in enumerate(lens):
            alone = model(ids[b : b + 1, : n + 4])[0, n:]  # (4, V)
            got = torch.cat([s[b] for s in steps])
            assert_close(f"{path.stem} row {b}", got, alone, 1e-10)


@pytest.mark.skipif(TRITON_SKIP is not None, reason=TRITON_SKIP or "")
@pytest.mark.parametrize("path", MODEL_CONFIGS, ids=lambda p: p.stem)
@interpreter_only
def test_decode_kernel_step_matches_sdpa_step(path, monkeypatch):
    """Where the Triton kernels run (here: the interpreter), a one-token step of a softmax or MLA layer runs
    ``decode_attention``: rows of different lengths, ring buffers and CLA give the masked-SDPA step's logits,
    eagerly and traced (the kernel is a custom op: no graph break, one compile)."""
    import archzoo.kernels as K
    from archzoo.layers import attention
    from archzoo.layers import moe as moe_mod

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    # The attention is under test here. The MoE decode step's kernels ("fused", the default) have their own tests
    # (tests/kernels/test_moe_step.py); interpreted at this model's shapes they took three minutes of CI.
    monkeypatch.setattr(moe_mod, "DECODE_EXPERTS", "reductions")
    model = f64_model(path).float()
    kinds = {blk.mixer.__class__.__name__ for blk in model.blocks}
    if not kinds & {"Attention", "MLA"}:
        pytest.skip(f"{path.stem}: no softmax attention")
    if "Mamba" in kinds:
        pytest.skip(f"{path.stem}: its Mamba layers take minutes in the interpreter; its attention is tested alone")
    lens, steps = [3, 9], 6
    ids = torch.randint(0, model.cfg.vocab_size, (2, 9 + steps), generator=torch.Generator().manual_seed(0))
    cache = model.new_cache(2, 9 + steps, dtype=torch.float32)
    with torch.no_grad():
        for b, n in enumerate(lens):
            model(ids[b : b + 1, :n], cache=cache.rows(b))
        ref_cache = copy.deepcopy(cache)
        counter = CompileCounter()
        step = torch.compile(lambda t: model(t, cache=cache), backend=counter, fullgraph=True)
        for t in range(steps):
            tok = torch.stack([ids[0, 3 + t], ids[1, 9 + t]])[:, None]
            ops = ("decode_attention", "decode_attention_ring", "decode_attention_mla")
            for op in ops:
                K._dispatch.record(op, "none")
            got = model(tok, cache=cache) if t % 2 else step(tok)
            ran = {K.last_backend(op) for op in ops}
            if t % 2:
                assert "triton" in ran, f"{path.stem}: the eager step did not run the decode kernel ({ran})"
            monkeypatch.setattr(attention, "DECODE_ATTENTION", "sdpa")
            ref = model(tok, cache=ref_cache)
            monkeypatch.setattr(attention, "DECODE_ATTENTION", "kernel")
            assert_close(f"{path.stem} step {t}", got, ref, 1e-5)
    assert counter.frame_count == 1, f"{path.stem}: compiled {counter.frame_count} times"


@pytest.mark.skipif(TRITON_SKIP is not None, reason=TRITON_SKIP or "")
@interpreter_only
def test_a_step_the_decode_kernel_cannot_take_says_why(monkeypatch, caplog):
    """Where the kernels run, a cache whose dtype differs from the step's takes masked SDPA, and says so."""
    import logging

    import archzoo.kernels as K
    from archzoo.kernels import _dispatch

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(_dispatch, "_LOGGED", set())
    model = f64_model(next(p for p in MODEL_CONFIGS if p.stem == "gqa")).float()
    cache = model.new_cache(1, 8, dtype=torch.float64)  # fp64 buffers, fp32 step
    ids = torch.randint(0, model.cfg.vocab_size, (1, 3))
    with torch.no_grad(), caplog.at_level(logging.WARNING, logger="archzoo.kernels"):
        model(ids[:, :2], cache=cache)
        model(ids[:, 2:], cache=cache)
    assert K.last_backend("decode_attention") == "sdpa"
    assert any("the cache holds torch.float64" in r.getMessage() for r in caplog.records)


def test_many_models_compile_their_steps_in_one_process(monkeypatch):
    """Every model's blocks share ``Block.forward``'s code object, whose compiled entries dynamo caps (8 by default;
    2 here): ``compile_step_blocks`` raises the cap, so the Nth model in one process still compiles (on the H200 the
    9th student's step failed with FailOnRecompileLimitHit under fullgraph=True before it did)."""
    import archzoo

    torch._dynamo.reset()
    monkeypatch.setattr(torch._dynamo.config, "recompile_limit", 2)
    for path in MODEL_CONFIGS[:5]:
        torch.manual_seed(0)
        model = archzoo.build_model(path).eval()
        ids = torch.randint(0, model.cfg.vocab_size, (1, 5))
        with torch.no_grad():
            cache = model.new_cache(1, 8)
            model(ids[:, :4], cache=cache)
            model.compile_step_blocks(backend="eager")
            model(ids[:, 4:], cache=cache)
    torch._dynamo.reset()


def _gemv_cfg(family: str) -> dict:
    """``family``'s reference config, smaller where only the decode GEMV's time in Triton's interpreter (programs x
    K tiles) grows with it: d_model 64, d_ff 96, a vocabulary of 64, 2 layers (swa: a windowed layer and the global
    one; cla: a leader and its member). The attention keeps its heads and head_dim 32 (MLA its dims), so Q|K|V with
    RoPE and the decode attention see the reference's shapes, and every GEMV the reference's kind of plan (2 rows
    element-wise, 8-row blocks, no split, several K tiles; 8-12x fewer programs and tiles)."""
    import archzoo

    cfg = archzoo.load_config(next(p for p in MODEL_CONFIGS if p.stem == family)).to_dict()
    cfg.update(vocab_size=64, d_model=64, n_layers=2)
    cfg["ffn"]["d_ff"] = 96
    if cfg["mixer"]["type"] == "attention":
        cfg["mixer"]["head_dim"] = 32  # d_model / n_heads of the reference
    for override in cfg["layers"]:  # swa: the global layer, the last one
        assert override["at"] == [3], override
        override["at"] = [1]
    return cfg


def _fused_pair(cfg: dict):
    """A model of ``cfg`` in fp32 with its fused copies, 2 x 8 token ids, and two caches (12 positions, reading the
    fused copies) each prefilled with the first 5 tokens: one for the step under test, one for the reference.

    The prefill runs the PyTorch forms even where the test set ``TRITON_INTERPRET``: both caches start from the
    same states either way, and these tests are about the decode step; the interpreted selective scan made the
    Mamba prefill 40 of its test's 50 s."""
    import archzoo

    torch.manual_seed(0)
    model = archzoo.build_model(cfg).float().eval()
    model.refresh_fused()
    ids = torch.randint(0, model.cfg.vocab_size, (2, 8), generator=torch.Generator().manual_seed(0))
    caches = []
    interpret = os.environ.pop("TRITON_INTERPRET", None)
    try:
        with torch.no_grad():
            for _ in range(2):
                c = model.new_cache(2, 12, dtype=torch.float32)
                c.fused_weights = True
                model(ids[:, :5], cache=c)
                caches.append(c)
    finally:
        if interpret is not None:
            os.environ["TRITON_INTERPRET"] = interpret
    return model, ids, caches


@pytest.mark.skipif(TRITON_SKIP is not None, reason=TRITON_SKIP or "")
@interpreter_only
@pytest.mark.parametrize("family", ["gqa", "swa", "cla", "mla"])
def test_gemv_step_matches_cublas_step(monkeypatch, family):
    """``layers.fused.DECODE_LINEAR = "kernel"``: a decode step that reads the fused copies runs O, gate|up and down
    through ``decode_linear`` and Q|K|V with RoPE and the cache write through ``decode_qkv_rope``, and gives
    F.linear's logits, eagerly and traced through the custom ops: global caches, a sliding window's ring (swa: the
    window is passed within the steps), a CLA member reading its leader's cache; MLA's Q|latent copy with the norm
    fused in and its O projection with the residual."""
    import archzoo.kernels as K

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    cfg = _gemv_cfg(family)
    if family == "swa":
        cfg["mixer"]["window"] = 4  # a ring of 4 slots: the steps at positions 5 and 6 wrap around
    if family == "mla":
        cfg["mixer"]["q_lora_rank"] = None  # as the students: a full-rank query, in the fused Q|latent copy
    model, ids, caches = _fused_pair(cfg)

    def ran():
        assert K.last_backend("decode_linear") == "triton"
        if family != "mla":
            assert K.last_backend("decode_qkv_rope") == "triton"

    with torch.no_grad():
        counter = _kernel_steps_against_cublas(model, ids, caches, monkeypatch, after_eager=ran)
    assert counter.frame_count == 1


def _kernel_steps_against_cublas(model, ids, caches, monkeypatch, before=None, after_eager=None) -> CompileCounter:
    """Two decode steps (positions 5 and 6: one traced whole, one eager) under ``DECODE_LINEAR = "kernel"`` on
    ``caches[0]``, each against the cuBLAS step on ``caches[1]``: logits, then every buffer of every layer.
    ``before()`` runs before each kernel step, ``after_eager()`` after the eager one (what it ran)."""
    import archzoo.kernels as K
    from archzoo.layers import fused

    counter = CompileCounter()
    step = torch.compile(lambda t: model(t, cache=caches[0]), backend=counter, fullgraph=True)
    for t in range(5, 7):
        tok = ids[:, t : t + 1]
        monkeypatch.setattr(fused, "DECODE_LINEAR", "kernel")
        K._dispatch.record("decode_linear", "none")
        if before is not None:
            before()
        got = step(tok) if t % 2 else model(tok, cache=caches[0])
        if not t % 2 and after_eager is not None:
            after_eager()
        monkeypatch.setattr(fused, "DECODE_LINEAR", "cublas")
        assert_close(f"step {t}", got, model(tok, cache=caches[1]), 1e-5)
    for i, (a, b) in enumerate(zip(caches[0].layers, caches[1].layers, strict=True)):  # buffers written alike
        for name in a.buffers if a is not None else ():
            assert_close(f"layer {i} {name}", a[name], b[name], 1e-5)
    return counter


@pytest.mark.skipif(TRITON_SKIP is not None, reason=TRITON_SKIP or "")
@interpreter_only
@pytest.mark.parametrize("in_proj_conv", [False, True])
def test_gemv_step_takes_the_mamba_biases(monkeypatch, in_proj_conv):
    """A Mamba layer with biased in_proj and o_proj (the Mamba and Jamba students' ``bias: true``): the decode GEMV
    adds each bias in its epilogue (in_proj with the block's norm fused in, alone or with the conv step in its
    epilogue (``IN_PROJ_CONV``), o_proj with the residual), where these two projections ran through cuBLAS before;
    the step's logits and states are F.linear's, eagerly and traced."""
    import archzoo
    import archzoo.kernels as K
    from archzoo.layers import fused
    from archzoo.layers import mamba as mamba_mod

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(mamba_mod, "IN_PROJ_CONV", in_proj_conv)
    cfg = archzoo.load_config(next(p for p in MODEL_CONFIGS if p.stem == "mamba")).to_dict()
    cfg.update(vocab_size=64, d_model=64, n_layers=2)
    cfg["mixer"]["bias"] = True
    cfg["mixer"]["expand"] = 1
    model, ids, caches = _fused_pair(cfg)
    with torch.no_grad():
        for layer in model.blocks:  # non-zero biases, so that a dropped one shows
            for lin in (layer.mixer.in_proj, layer.mixer.o_proj):
                lin.bias.copy_(torch.randn_like(lin.bias))
        model.refresh_fused()
        biased = []
        real = fused.decode_linear
        monkeypatch.setattr(fused, "decode_linear", lambda *a: biased.append(a[6] is not None) or real(*a))
        real_conv = mamba_mod.decode_linear_conv
        monkeypatch.setattr(
            mamba_mod, "decode_linear_conv", lambda *a: biased.append(a[4] is not None) or real_conv(*a)
        )

        def ran():
            assert K.last_backend("decode_linear") == "triton"
            if in_proj_conv:
                assert K.last_backend("decode_linear_conv") == "triton"
            assert sum(biased) == 2 * cfg["n_layers"], biased  # in_proj and o_proj, each layer, on the GEMV

        counter = _kernel_steps_against_cublas(model, ids, caches, monkeypatch, before=biased.clear, after_eager=ran)
    assert counter.frame_count == 1


def _step_graph_ops(model, cache, tok) -> list[str]:
    """The call_function targets of one traced decode step (fullgraph), as strings."""
    graphs: list[list[str]] = []
    torch._dynamo.reset()
    torch.compile(lambda t: model(t, cache=cache), backend=recording_backend(graphs), fullgraph=True)(tok)
    torch._dynamo.reset()
    return [t for g in graphs for t in g]


@pytest.mark.skipif(TRITON_SKIP is not None, reason=TRITON_SKIP or "")
@interpreter_only
def test_gemv_epilogues_step(monkeypatch):
    """Issue 18: the gate|up copy is interleaved, and with ``DECODE_LINEAR = "kernel"`` a SwiGLU block's decode
    step runs gate|up with the SwiGLU epilogue and down with the residual add: the logits equal the cuBLAS step's
    (a copy stepped under "cublas"), eagerly and traced, and the traced step holds no silu where the cuBLAS step
    has one a layer, three GEMV calls a layer (O, gate|up, down) and one ``decode_qkv_rope`` (Q|K|V with RoPE and
    the cache write in its epilogue: no rotate_half left in the step), and one for the LM head with the final norm."""
    import archzoo
    from archzoo.layers import fused

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    torch.manual_seed(0)
    ref_model = archzoo.build_model(_gemv_cfg("gqa")).float().eval()
    model = copy.deepcopy(ref_model)
    ref_model.refresh_fused()
    monkeypatch.setattr(fused, "DECODE_LINEAR", "kernel")
    model.refresh_fused()
    mlps = [b.ffn for b in model.blocks if getattr(b.ffn, "fused", None) is not None]
    assert mlps and all(m.fused.pairs for m in mlps)
    ids = torch.randint(0, model.cfg.vocab_size, (2, 8), generator=torch.Generator().manual_seed(0))
    caches = []
    for _ in range(2):
        c = model.new_cache(2, 12, dtype=torch.float32)
        c.fused_weights = True
        caches.append(c)
    with torch.no_grad():
        model(ids[:, :5], cache=caches[0])
        ref_model(ids[:, :5], cache=caches[1])
        counter = CompileCounter()
        step = torch.compile(lambda t: model(t, cache=caches[0]), backend=counter, fullgraph=True)
        for t in range(5, 7):  # one traced step, one eager
            tok = ids[:, t : t + 1]
            monkeypatch.setattr(fused, "DECODE_LINEAR", "kernel")
            got = step(tok) if t % 2 else model(tok, cache=caches[0])
            monkeypatch.setattr(fused, "DECODE_LINEAR", "cublas")
            ref = ref_model(tok, cache=caches[1])
            assert_close(f"step {t}", got, ref, 1e-5)
        assert counter.frame_count == 1

        # the ops of one traced step: the GEMV's (now) against cuBLAS's (before)
        tok = ids[:, 7:8]
        monkeypatch.setattr(fused, "DECODE_LINEAR", "kernel")
        now = _step_graph_ops(model, caches[0], tok)
        monkeypatch.setattr(fused, "DECODE_LINEAR", "cublas")
        before = _step_graph_ops(ref_model, caches[1], tok)
    silu = [op for op in now if "silu" in op]
    assert not silu, f"the SwiGLU epilogue leaves no silu in the step, found {silu}"
    assert sum("silu" in op for op in before) == len(mlps)
    gemv = [op for op in now if "decode_linear" in op]
    assert len(gemv) == 3 * len(mlps) + 1, gemv  # + the LM head, the final norm in its GEMV
    assert sum("decode_qkv_rope" in op for op in now) == len(mlps)
    neg = [op for op in now if "neg" in op]  # rotate_half's, of Q and K in every layer before
    assert sum("neg" in op for op in before) == 2 * len(mlps) and not neg, neg


def test_gemv_step_adds_both_residuals_in_epilogues(monkeypatch):
    """With ``DECODE_LINEAR = "kernel"`` a decode step of a SwiGLU attention block hands both residual adds to the
    GEMVs after them: the O projection (``Attention.TAKES_RESIDUAL``) and down each get ``residual=``, and the
    logits equal those of the same step with the adds outside (the reference form runs here: no interpreter)."""
    import archzoo
    from archzoo.layers import attention as attn_mod
    from archzoo.layers import fused

    path = next(p for p in MODEL_CONFIGS if p.stem == "gqa")
    torch.manual_seed(0)
    model = archzoo.build_model(path).double().eval()
    ids = torch.randint(0, model.cfg.vocab_size, (2, 6), generator=torch.Generator().manual_seed(0))

    def step_logits(mode: str) -> tuple[torch.Tensor, list]:
        monkeypatch.setattr(fused, "DECODE_LINEAR", mode)
        model.refresh_fused()
        cache = model.new_cache(2, 8, dtype=torch.float64)
        cache.fused_weights = True
        seen = []
        real = fused.decode_project

        def spy(*args, **kwargs):
            seen.append(kwargs.get("residual") is not None)
            return real(*args, **kwargs)

        monkeypatch.setattr(fused, "decode_project", spy)
        monkeypatch.setattr(attn_mod, "decode_project", spy)
        with torch.no_grad():
            model(ids[:, :5], cache=cache)
            out = model(ids[:, 5:], cache=cache)
        monkeypatch.setattr(fused, "decode_project", real)
        monkeypatch.setattr(attn_mod, "decode_project", real)
        return out, seen

    want, seen_cublas = step_logits("cublas")
    got, seen_kernel = step_logits("kernel")
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert not any(seen_cublas)
    assert sum(seen_kernel) == 2 * model.cfg.n_layers, seen_kernel  # O and down, every layer


@pytest.mark.skipif(TRITON_SKIP is not None, reason=TRITON_SKIP or "")
@interpreter_only
@pytest.mark.parametrize("max_rows", [1, 2])
def test_auto_linear_takes_the_gemv_up_to_its_rows(monkeypatch, max_rows):
    """``DECODE_LINEAR = "auto"``: a step of 2 rows runs the GEMV and its epilogues where ``AUTO_MAX_ROWS`` >= 2,
    F.linear where it is 1, the whole step one way (the sites that fuse a norm or a residual ask ``gemv_for``);
    the logits are F.linear's either way, and the pool's key holds the setting (``decode_switches``)."""
    import archzoo.kernels as K
    from archzoo.generation import decode_switches
    from archzoo.layers import fused

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    model, ids, caches = _fused_pair(_gemv_cfg("gqa"))
    with torch.no_grad():
        monkeypatch.setattr(fused, "DECODE_LINEAR", "auto")
        monkeypatch.setattr(fused, "AUTO_MAX_ROWS", max_rows)
        monkeypatch.setattr(fused, "AUTO_DEVICES", ("cuda", "cpu"))  # "auto" itself, under the interpreter
        assert ("AUTO_MAX_ROWS", max_rows) in decode_switches()
        K._dispatch.record("decode_linear", "none")
        K._dispatch.record("decode_qkv_rope", "none")
        got = model(ids[:, 5:6], cache=caches[0])
        # above its rows "auto" records that cuBLAS ran (bench decode's linear_backend), not a silent fallback
        assert K.last_backend("decode_linear") == ("triton" if max_rows >= 2 else "cublas")
        assert K.last_backend("decode_qkv_rope") == ("triton" if max_rows >= 2 else "none")
        monkeypatch.setattr(fused, "DECODE_LINEAR", "cublas")
        assert_close("auto step", got, model(ids[:, 5:6], cache=caches[1]), 1e-5)


@pytest.mark.skipif(TRITON_SKIP is not None, reason=TRITON_SKIP or "")
@interpreter_only
@pytest.mark.parametrize("family", ["gqa", "swa"])
def test_auto_qkv_takes_the_qkv_kernel_past_the_gemv_rows(monkeypatch, family):
    """``QKV_MAX_ROWS`` above ``AUTO_MAX_ROWS`` ("auto-qkv" in bench decode): a 2-row step with AUTO_MAX_ROWS 1
    runs Q|K|V, RoPE and the cache write as one ``decode_qkv_rope`` and every other projection through F.linear;
    logits and caches are the cuBLAS step's, and the pool key holds the setting."""
    import archzoo.kernels as K
    from archzoo.bench.decode_input import decode_linear_form
    from archzoo.generation import decode_switches
    from archzoo.layers import fused

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    model, ids, caches = _fused_pair(_gemv_cfg(family))
    monkeypatch.setattr(fused, "AUTO_DEVICES", ("cuda", "cpu"))  # "auto" itself, under the interpreter
    monkeypatch.setattr(fused, "AUTO_MAX_ROWS", 1)
    with torch.no_grad():
        with decode_linear_form("auto-qkv"):
            assert ("QKV_MAX_ROWS", 64) in decode_switches() and fused.DECODE_LINEAR == "auto"
            K._dispatch.record("decode_qkv_rope", "none")
            K._dispatch.record("decode_linear", "none")
            got = model(ids[:, 5:6], cache=caches[0])
            assert K.last_backend("decode_qkv_rope") == "triton"
            assert K.last_backend("decode_linear") == "cublas"  # O, gate|up, down and the head: 2 rows > 1
        assert fused.QKV_MAX_ROWS is None and ("QKV_MAX_ROWS", None) in decode_switches()  # restored
        monkeypatch.setattr(fused, "DECODE_LINEAR", "cublas")
        want = model(ids[:, 5:6], cache=caches[1])
    assert_close(f"{family} auto-qkv step", got, want, 1e-5)
    for i, (a, b) in enumerate(zip(caches[0].layers, caches[1].layers, strict=True)):
        for name in a.buffers if a is not None else ():
            assert_close(f"{family} layer {i} {name}", a[name], b[name], 1e-5)


@pytest.mark.skipif(TRITON_SKIP is not None, reason=TRITON_SKIP or "")
@interpreter_only
@pytest.mark.parametrize("family", ["gqa", "swa", "cla"])
def test_rope_write_after_cublas_matches_the_compiled_ops(monkeypatch, family):
    """``ROPE_WRITE_MIN_ROWS``: a 2-row step whose projections run F.linear (cuBLAS's path) takes RoPE and the cache
    write through ``decode_rope_write`` (CLA: its members, which own no K / V, keep the ops); logits and caches
    are the plain step's; a compiled step traces once with the op, and the pool key holds the setting."""
    import archzoo.kernels as K
    from archzoo.generation import decode_switches
    from archzoo.layers import fused

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    model, ids, caches = _fused_pair(_gemv_cfg(family))
    monkeypatch.setattr(fused, "AUTO_DEVICES", ("cuda", "cpu"))
    monkeypatch.setattr(fused, "DECODE_LINEAR", "cublas")
    with torch.no_grad():
        want = model(ids[:, 5:6], cache=caches[1])
        monkeypatch.setattr(fused, "ROPE_WRITE_MIN_ROWS", 2)
        assert ("ROPE_WRITE_MIN_ROWS", 2) in decode_switches()
        K._dispatch.record("decode_rope_write", "none")
        graphs: list[list[str]] = []
        step = torch.compile(lambda t: model(t, cache=caches[0]), backend=recording_backend(graphs), fullgraph=True)
        got = step(ids[:, 5:6])
    assert K.last_backend("decode_rope_write") == "triton"
    assert len(graphs) == 1 and any("decode_rope_write" in op for op in graphs[0]), graphs
    assert_close(f"{family} rope-write step", got, want, 1e-5)
    for i, (a, b) in enumerate(zip(caches[0].layers, caches[1].layers, strict=True)):
        for name in a.buffers if a is not None else ():
            assert_close(f"{family} layer {i} {name}", a[name], b[name], 1e-5)


def test_a_qkv_bias_keeps_the_plain_rope_and_says_why(monkeypatch, caplog):
    """A Q|K|V with a bias (``qkv_bias``) cannot take ``decode_rope_write`` / ``decode_qkv_rope`` (the kernels take
    none): the step runs the plain RoPE and cache write, logs why for each op, and gives the plain step's logits."""
    import logging

    import archzoo.kernels as K
    from archzoo.layers import fused

    cfg = _gemv_cfg("gqa")
    cfg["mixer"]["qkv_bias"] = True
    model, ids, caches = _fused_pair(cfg)
    monkeypatch.setattr(K._dispatch, "_LOGGED", set())
    monkeypatch.setattr(fused, "AUTO_DEVICES", ("cuda", "cpu"))
    with torch.no_grad():
        monkeypatch.setattr(fused, "DECODE_LINEAR", "cublas")
        want = model(ids[:, 5:6], cache=caches[1])
        settings = {"decode_rope_write": ("ROPE_WRITE_MIN_ROWS", 2), "decode_qkv_rope": ("DECODE_LINEAR", "kernel")}
        for op, setting in settings.items():
            monkeypatch.setattr(fused, *setting)
            K._dispatch.record(op, "none")
            cache = copy.deepcopy(caches[0])
            with caplog.at_level(logging.WARNING, logger="archzoo.kernels"):
                got = model(ids[:, 5:6], cache=cache)
            assert K.last_backend(op) == "unfused", op
            said = [r.getMessage() for r in caplog.records if op in r.getMessage()]
            assert said and "has a bias" in said[0], said
            assert_close(f"{op}: the step with a Q|K|V bias", got, want, 1e-4)


def test_compiled_generate_says_why_qkv_runs_apart_before_it_traces(monkeypatch, caplog):
    """A traced step cannot log, and ``generate(compile=True)`` runs no eager step: ``explain_unfused`` says on the
    host, before compiling, why a layer with a Q|K|V bias keeps the plain RoPE and cache write, from the same
    decision the step makes (``Attention.step_fusion``), for a step's B x 1 and a speculative verify's B x (k+1)."""
    import logging

    import archzoo.kernels as K
    from archzoo import generation
    from archzoo.layers import fused

    cfg = _gemv_cfg("gqa")
    cfg["mixer"]["qkv_bias"] = True
    model, ids, _ = _fused_pair(cfg)
    monkeypatch.setattr(K._dispatch, "_LOGGED", set())
    monkeypatch.setattr(fused, "AUTO_DEVICES", ("cuda", "cpu"))
    monkeypatch.setattr(fused, "ROPE_WRITE_MIN_ROWS", 2)
    calls = []

    class Stop(Exception):
        pass

    def explain(m, B, T):
        calls.append((m, B, T))
        generation_explain(m, B, T)
        raise Stop  # the wiring is what this half tests, not compiling on the CPU

    generation_explain = generation.explain_unfused
    monkeypatch.setattr(generation, "explain_unfused", explain)
    with caplog.at_level(logging.WARNING, logger="archzoo.kernels"), pytest.raises(Stop):
        model.generate(ids[:, :4], 3, compile=True)
    assert calls == [(model, 2, 1)], calls
    said = [r.getMessage() for r in caplog.records if "decode_rope_write" in r.getMessage()]
    assert said and "has a bias" in said[0], said
    assert K.last_backend("decode_rope_write") == "unfused"
    monkeypatch.setattr(fused, "ROPE_WRITE_MIN_ROWS", 64)  # a verify of 2 x 3 rows: the GEMV's Q|K|V
    monkeypatch.setattr(fused, "DECODE_LINEAR", "kernel")
    generation_explain(model, 2, 3)
    said = [r.getMessage() for r in caplog.records if "decode_qkv_rope" in r.getMessage()]
    assert said and "has a bias" in said[0], said
    plain, _, _ = _fused_pair(_gemv_cfg("gqa"))  # without the bias: nothing to say
    caplog.clear()
    monkeypatch.setattr(K._dispatch, "_LOGGED", set())
    K._dispatch.record("decode_qkv_rope", "none")
    with caplog.at_level(logging.WARNING, logger="archzoo.kernels"):
        generation_explain(plain, 2, 3)
    assert not caplog.records, [r.getMessage() for r in caplog.records]
    assert K.last_backend("decode_qkv_rope") == "none"


@pytest.mark.skipif(TRITON_SKIP is not None, reason=TRITON_SKIP or "")
@interpreter_only
@pytest.mark.parametrize("family", ["gqa", "swa", "cla"])
def test_verify_forward_through_the_gemv_matches_cublas(monkeypatch, family, caplog):
    """A speculative verify's (2, 3) forward on the fused copies with the decode GEMV: Q|K|V, RoPE and the K/V write
    in one kernel for each row's 3 tokens (``decode_qkv_rope(tokens_per_row=3)``) where the cache is global (a
    ring keeps the unfused write: a later token could overwrite a slot an earlier one reads), and the LM head with
    the final norm through the GEMV, as the one-token step's: the logits and caches F.linear's. The ring's layer
    says why it keeps the unfused write."""
    import logging

    import archzoo.kernels as K
    from archzoo.layers import fused
    from archzoo.speculative import _forward

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(K._dispatch, "_LOGGED", set())
    model, ids, caches = _fused_pair(_gemv_cfg(family))
    traced_cache = copy.deepcopy(caches[0])
    with torch.no_grad():
        monkeypatch.setattr(fused, "DECODE_LINEAR", "kernel")
        K._dispatch.record("decode_qkv_rope", "none")
        with caplog.at_level(logging.WARNING, logger="archzoo.kernels"):
            got = _forward(model, ids[:, 5:8], caches[0])
        ring_said = any("tokens a row into a ring buffer" in r.getMessage() for r in caplog.records)
        assert ring_said == (family == "swa"), [r.getMessage() for r in caplog.records]
        qkv = K.last_backend("decode_qkv_rope")
        head = K.last_backend("decode_linear")
        counter = CompileCounter()  # traced whole: decode_qkv_rope's custom op with tokens_per_row
        traced = torch.compile(lambda t: _forward(model, t, traced_cache), backend=counter, fullgraph=True)(ids[:, 5:8])
        monkeypatch.setattr(fused, "DECODE_LINEAR", "cublas")
        want = _forward(model, ids[:, 5:8], caches[1])
    assert counter.frame_count == 1
    assert_close(f"{family} traced verify logits", traced, got, 1e-6)
    assert torch.equal(traced_cache.lengths, caches[0].lengths)
    assert qkv == "triton", f"{family}: the verify's Q|K|V ran {qkv}"  # swa and cla: their global leader layer
    assert head == "triton", f"{family}: the verify's LM head ran {head}"
    assert_close(f"{family} verify logits", got, want, 1e-5)
    for i, (a, b) in enumerate(zip(caches[0].layers, caches[1].layers, strict=True)):
        for name in a.buffers if a is not None else ():
            assert_close(f"{family} layer {i} {name}", a[name], b[name], 1e-5)
    assert torch.equal(caches[0].lengths, caches[1].lengths)


@pytest.mark.skipif(TRITON_SKIP is not None, reason=TRITON_SKIP or "")
@pytest.mark.parametrize("stem", ["gqa", "cla", "mla"])
@interpreter_only
def test_verify_forward_through_the_decode_kernel_matches_sdpa(stem, monkeypatch):
    """A speculative verify's (B, k+1) forward over caches of rows of different lengths: through the decode kernel
    (several query tokens a row, each to its own causal bound) as through masked SDPA, logits and caches alike.
    MLA keeps SDPA for several tokens a row (its latent kernel takes one), and says so."""
    import archzoo.kernels as K
    from archzoo.layers import attention
    from archzoo.speculative import _forward

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    path = next(p for p in MODEL_CONFIGS if p.stem == stem)
    model = f64_model(path).float()
    ids = torch.randint(0, model.cfg.vocab_size, (2, 20), generator=torch.Generator().manual_seed(1))
    cache = model.new_cache(2, 24, dtype=torch.float32)
    with torch.no_grad():
        for b, n in enumerate((4, 11)):
            model(ids[b : b + 1, :n], cache=cache.rows(b))
        ref_cache = copy.deepcopy(cache)
        verify = ids[:, 12:15]  # three tokens a row, as k = 2 verifies
        K._dispatch.record("decode_attention", "none")
        got = _forward(model, verify, cache)
        ran = K.last_backend("decode_attention")
        monkeypatch.setattr(attention, "DECODE_ATTENTION", "sdpa")
        ref = _forward(model, verify, ref_cache)
    assert ran == ("sdpa" if stem == "mla" else "triton"), f"{stem}: the verify ran {ran}"
    assert_close(f"{stem} verify logits", got, ref, 1e-5)
    assert torch.equal(cache.lengths, ref_cache.lengths)


@pytest.mark.skipif(TRITON_SKIP is not None, reason=TRITON_SKIP or "")
@interpreter_only
@pytest.mark.parametrize(
    "T, window, one_token, says",
    [(17, None, None, "17 tokens a row: the decode kernel takes at most 16"),
     (3, 8, None, "3 tokens a row: the ring decode kernel takes one"),
     (2, None, "MLA latent", "2 tokens a row: the MLA latent decode kernel takes one")],
)  # fmt: skip
def test_several_tokens_a_row_the_kernels_cannot_take_say_why(T, window, one_token, says, monkeypatch, caplog):
    """Where the kernels run, a decode forward of more tokens a row than a kernel takes runs masked SDPA and logs
    why, once; up to 16 over a global cache takes the kernel."""
    import logging

    import archzoo.kernels as K
    from archzoo.kernels import _dispatch
    from archzoo.layers.attention import use_decode_kernel

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(_dispatch, "_LOGGED", set())
    k = torch.zeros(1, 1, 32, 8)
    with caplog.at_level(logging.WARNING, logger="archzoo.kernels"):
        assert not use_decode_kernel(torch.zeros(1, 2, T, 8), k, window, one_token)
    assert K.last_backend("decode_attention") == "sdpa"
    assert any(says in r.getMessage() for r in caplog.records), [r.getMessage() for r in caplog.records]
    assert use_decode_kernel(torch.zeros(1, 2, 16, 8), k)


def test_regional_step_computes_positions_once():
    """A decode step computes its new tokens' positions once a forward call (``ForwardContext.positions`` memoised),
    not once an attention layer: computed in each layer they were a kernel of their own per layer in the step,
    between the PDL-launched GEMVs (docs/decode.md). With the blocks compiled one by one (``compile_step_blocks``,
    as ``generate`` does) the first attention block's graph computes them and the later blocks' graph reads them
    (one arange fewer there); the steps equal the eager ones."""
    from archzoo.layers.base import ForwardContext

    lengths = torch.tensor([3, 7])
    ctx = ForwardContext(pos=None, lengths=lengths)
    first = ctx.positions(2, lengths.device)
    assert ctx.positions(2, lengths.device) is first and torch.equal(first, torch.tensor([[3, 4], [7, 8]]))
    assert ForwardContext(pos=4).positions(2, lengths.device).tolist() == [4, 5]
    from archzoo.layers import base

    with pytest.MonkeyPatch.context() as mp:  # the form before, kept for the A/B (tools/decode_profile.py --once)
        mp.setattr(base, "ONCE_A_STEP", False)
        again = ForwardContext(pos=None, lengths=lengths)
        assert again.positions(2, lengths.device) is not again.positions(2, lengths.device)

    path = next(p for p in MODEL_CONFIGS if p.stem == "gqa")
    model = f64_model(path).float()
    graphs: list[list[str]] = []
    model.compile_step_blocks(backend=recording_backend(graphs, ("call_function", "call_method")))
    B, prompt, steps = 2, 5, 3
    ids = torch.randint(0, model.cfg.vocab_size, (B, prompt + steps))
    cache = model.new_cache(B, prompt + steps, dtype=torch.float32)
    with torch.no_grad():
        model(ids[:, :prompt], cache=cache)
        eager_cache = copy.deepcopy(cache)
        eager_cache.compiled_blocks = False
        for i in range(prompt, prompt + steps):
            out = model(ids[:, i : i + 1], cache=cache)
            ref = model(ids[:, i : i + 1], cache=eager_cache)
            assert_close(f"step {i} logits", out, ref, 1e-5)
    aranges = [sum("arange" in t for t in g) for g in graphs[:2]]  # graphs[2]: the final norm with the head
    assert len(graphs) == 3 and aranges[1] < aranges[0], f"aranges in the block graphs: {aranges}"


def test_step_head_is_compiled_once_and_a_copy_uses_its_own_weights():
    """``compile_step_blocks`` compiles the final norm with the LM head for the steps whose head is not the decode
    GEMV's (eagerly six kernels before cuBLAS's GEMM at 64 rows): one graph for every step, equal to the eager head;
    the modules are the compiled function's arguments, so a deep copy of the model with other weights gives its own
    logits, not the original's."""
    path = next(p for p in MODEL_CONFIGS if p.stem == "gqa")
    model = f64_model(path).float()
    graphs: list[list[str]] = []
    model.compile_step_blocks(backend=recording_backend(graphs, ("call_function", "call_method", "call_module")))
    ids = torch.randint(0, model.cfg.vocab_size, (2, 8))

    def steps(m, compiled: bool) -> list[torch.Tensor]:
        cache = m.new_cache(2, 8, dtype=torch.float32)
        cache.compiled_blocks = compiled
        with torch.no_grad():
            m(ids[:, :5], cache=cache)
            return [m(ids[:, i : i + 1], cache=cache) for i in range(5, 8)]

    for i, (out, ref) in enumerate(zip(steps(model, True), steps(model, False), strict=True)):
        assert_close(f"step {i} logits", out, ref, 1e-5)
    assert len(graphs) == 3, f"{len(graphs)} graphs: two block graphs and one head graph expected"
    twin = copy.deepcopy(model)
    with torch.no_grad():
        twin.norm.weight.mul_(2.0)
        twin.lm_head.weight.mul_(-1.0)
    for i, (out, ref) in enumerate(zip(steps(twin, True), steps(twin, False), strict=True)):
        assert_close(f"the copy's step {i} logits", out, ref, 1e-5)


def test_update_ops_return_their_kernels_outputs_without_a_copy(monkeypatch):
    """The Mamba step's update ops (custom ops mutating their state) return the kernel's new tensor as it is, with
    no device copy (a ``clone()`` a call was two ``Memcpy DtoD`` a Mamba layer in every decode step); only an output
    that shares memory with an input is copied, since a custom op may not return an alias."""
    from archzoo.kernels import _capture

    g = torch.Generator().manual_seed(0)
    b, d, n = 2, 8, 4
    state, x, dt = torch.randn(b, d, n, generator=g), torch.randn(b, d, generator=g), torch.rand(b, d, generator=g)
    A, B, C = -torch.rand(d, n, generator=g), torch.randn(b, n, generator=g), torch.randn(b, n, generator=g)
    clones = []
    real_clone = torch.Tensor.clone
    monkeypatch.setattr(torch.Tensor, "clone", lambda t, *a, **k: clones.append(t) or real_clone(t, *a, **k))
    out = _capture._state_update_op(state, x, dt, A, B, C, None, None, None, False)
    conv_state, w = torch.randn(b, d, 3, generator=g), torch.randn(d, 4, generator=g)
    y = _capture._conv_update_op(x, conv_state, w, None, "silu")
    assert not clones, f"{len(clones)} copies of kernel outputs"
    for t in (out, y):
        assert all(t.untyped_storage().data_ptr() != i.untyped_storage().data_ptr() for i in (state, x, conv_state))
    monkeypatch.setattr(_capture, "COPY_OUTPUTS", True)  # the form before (tools/decode_profile.py --once off)
    _capture._conv_update_op(x, conv_state, w, None, "silu")
    assert len(clones) == 1
    monkeypatch.setattr(_capture, "COPY_OUTPUTS", False)
    clones.clear()
    monkeypatch.setattr(_capture, "_conv_update", lambda x, *args: x)  # an update that returned its input
    aliased = _capture._conv_update_op(x, conv_state, w, None, "silu")
    assert len(clones) == 1 and torch.equal(aliased, x) and aliased.untyped_storage().data_ptr() != x.data_ptr()


def test_pool_key_holds_every_step_switch(monkeypatch):
    """A captured step replays the kernels it captured: each switch a traced step reads is in the pool's key, so a
    flip captures anew instead of replaying the other form (the MoE decode experts, the made-once constants, S4D's and
    Mamba's fused steps, the SSM update kernels' PDL)."""
    from archzoo.generation import decode_switches
    from archzoo.kernels import _capture, _pdl
    from archzoo.layers import base, fused, mamba, moe, s4

    before = decode_switches()
    for module, name, value in ((moe, "DECODE_EXPERTS", "kernel"), (base, "ONCE_A_STEP", False),
                                (_capture, "COPY_OUTPUTS", True), (s4, "FUSED_STEP", not s4.FUSED_STEP),
                                (mamba, "IN_PROJ_CONV", not mamba.IN_PROJ_CONV),
                                (_pdl, "UPDATE_KERNELS", not _pdl.UPDATE_KERNELS),
                                (fused, "ROPE_WRITE_MIN_ROWS", None if fused.ROPE_WRITE_MIN_ROWS else 17)):  # fmt: skip
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(module, name, value)
            assert decode_switches() != before, f"{name} is not in the pool's key"
    assert decode_switches() == before


def test_every_decode_linear_form_has_its_names():
    """Each ``--decode-linear`` form has its row suffix, its chart name and, for the GEMV forms, its overrides
    (three tables of one list: a form added to one and not the others would fail at a row)."""
    from archzoo.bench.decode_input import GEMV_OVERRIDES, LINEARS
    from archzoo.bench.decode_report import LINEAR_SUFFIX
    from archzoo.bench.spec_chart import FORM_NAMES

    assert set(LINEAR_SUFFIX) == set(LINEARS) and set(FORM_NAMES) == set(LINEARS)
    assert set(GEMV_OVERRIDES) <= set(LINEARS) and len(set(LINEAR_SUFFIX.values())) == len(LINEARS)
