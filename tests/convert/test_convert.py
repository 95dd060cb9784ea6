"""Teacher -> student initialisers (archzoo.convert): exact where the maths allows it, working students elsewhere."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

import archzoo
from archzoo.convert import convert
from archzoo.convert.mamba import output_split, score_factors, silu_inverse
from archzoo.convert.mla import rope_dims
from archzoo.layers import ForwardContext
from archzoo.layers.rope import RotaryEmbedding, apply_rope

from conftest import assert_close, f64_model, rel_err

H, D, DM = 4, 8, 32  # teacher heads, head_dim, d_model


def teacher_cfg(n_kv: int = 2, n_layers: int = 4, qkv_bias: bool = False, tie: bool = False) -> dict:
    return {
        "vocab_size": 61,
        "d_model": DM,
        "n_layers": n_layers,
        "tie_embeddings": tie,
        "mixer": {"type": "attention", "n_heads": H, "n_kv_heads": n_kv, "rope_theta": 10000.0, "qkv_bias": qkv_bias},
        "ffn": {"type": "swiglu", "d_ff": 48},
    }


def student_cfg(base: dict, mixer: dict | None = None, layers: list | None = None, **top) -> dict:
    cfg = copy.deepcopy(base)
    if mixer is not None:
        cfg["mixer"] = mixer if "type" in mixer else {**cfg["mixer"], **mixer}
    if layers is not None:
        cfg["layers"] = layers
    cfg.update(top)
    return cfg


def teacher(n_kv: int = 2, seed: int = 0, **kw):
    return f64_model(teacher_cfg(n_kv, **kw), seed=seed)


def ids(batch: int = 2, T: int = 11, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 61, (batch, T), generator=torch.Generator().manual_seed(seed))


def x_in(T: int = 9, seed: int = 2) -> torch.Tensor:
    return torch.randn(2, T, DM, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def logits(model, tokens):
    with torch.no_grad():
        return model.eval()(tokens)


def mixer_out(mixer, x):
    with torch.no_grad():
        return mixer(x, None, ForwardContext())


# ------------------------------------------------------------------------- identity


@pytest.mark.parametrize("n_kv,qkv_bias,tie", [(4, False, False), (2, False, True), (2, True, False)])
def test_identity_conversion_is_exact(n_kv, qkv_bias, tie):
    t = teacher(n_kv, qkv_bias=qkv_bias, tie=tie)
    s = convert(t, t.cfg)
    tok = ids()
    assert torch.equal(logits(s, tok), logits(t, tok)), "teacher converted into its own config changed its logits"
    for name, p in t.state_dict().items():
        assert torch.equal(s.state_dict()[name], p), name


# ---------------------------------------------------------------- working students

MLA_FULL = {
    "type": "mla",
    "n_heads": H,
    "q_lora_rank": None,
    "kv_lora_rank": 12,
    "qk_nope_head_dim": 4,
    "qk_rope_head_dim": 4,
    "v_head_dim": D,
    "kv_norm": False,
}
MLA_LOW = {**MLA_FULL, "kv_lora_rank": 5}  # of the 2 x (4 + 8) = 24 K/V dims of a 2-K/V-head teacher
MAMBA = {"type": "mamba", "d_state": 4, "d_conv": 4, "expand": 1}
ATTN = {"type": "attention", "n_heads": H, "n_kv_heads": 2, "rope_theta": 10000.0}
MOE = {"type": "moe", "n_experts": 4, "top_k": 2, "d_ff": 48}


def _la(fmap: str, **kw) -> dict:
    return {"type": "linear_attention", "n_heads": H, "feature_map": fmap, **kw}


STUDENTS = {
    "mqa": (dict(mixer={"n_kv_heads": 1}), {}),
    "mha_from_gqa": (dict(mixer={"n_kv_heads": 4}), {}),
    "cla_first": (dict(mixer={"cla_group": 2}), {"cla_share": "first"}),
    "cla_mean": (dict(mixer={"cla_group": 2}), {"cla_share": "mean"}),
    "swa": (dict(mixer={"window": 4}, layers=[{"at": [3], "mixer": {"window": None}}]), {}),
    "mla": (dict(mixer=MLA_FULL), {}),
    "mla_lowrank_qlora_norm": (dict(mixer={**MLA_FULL, "kv_lora_rank": 6, "q_lora_rank": 8, "kv_norm": True}), {}),
    **{f"linear_{m}": (dict(mixer=_la(m)), {}) for m in ("identity", "elu", "relu", "hedgehog", "taylor")},
    "linear_taylor_fd4": (dict(mixer=_la("taylor", feature_dim=4)), {}),
    "linear_pooled_heads": (dict(mixer=_la("elu", n_heads=2, head_dim=D)), {}),
    "based_hybrid": (
        dict(mixer=_la("taylor", feature_dim=4), layers=[{"at": "1::2", "mixer": {**ATTN, "window": 4}}]),
        {},
    ),
    "mamba": (dict(mixer=MAMBA), {}),
    "mamba_hybrid_bias": (dict(mixer={**MAMBA, "bias": True, "expand": 2}, layers=[{"at": "::2", "mixer": ATTN}]), {}),
    "jamba_moe": (dict(mixer=MAMBA, layers=[{"at": [2], "mixer": ATTN}, {"at": "1::2", "ffn": MOE}]), {}),
    "s4_lin_hybrid": (dict(mixer={"type": "s4", "d_state": 8}, layers=[{"at": "::2", "mixer": ATTN}]), {}),
    "s4_inv": (dict(mixer={"type": "s4", "d_state": 8, "init": "inv"}), {}),
    "s4_real": (dict(mixer={"type": "s4", "d_state": 8, "init": "real"}), {}),
    "moe_upcycle": (dict(ffn=MOE), {}),
    "fewer_layers": (dict(n_layers=3, mixer={"n_kv_heads": 1}), {}),
}


@pytest.mark.parametrize("name", list(STUDENTS))
def test_student_works(name):
    edits, options = STUDENTS[name]
    t = teacher(2)
    cfg = student_cfg(t.cfg.to_dict(), **edits)
    s = convert(t, cfg, **options).eval()
    ref = archzoo.build_model(cfg).state_dict()
    got = s.state_dict()
    assert set(got) == set(ref), f"{name}: parameter names differ from build_model's"
    for k, v in ref.items():
        assert got[k].shape == v.shape, f"{name}: {k} shape {tuple(got[k].shape)} != {tuple(v.shape)}"
        assert torch.isfinite(got[k]).all(), f"{name}: {k} not finite"
    tok = ids()
    full = logits(s, tok)
    assert torch.isfinite(full).all(), f"{name}: logits not finite"
    with torch.no_grad():  # prefill then decode through the cache gives the same logits
        cache = s.new_cache(2, tok.shape[1])
        steps = [s(tok[:, :6], cache=cache)] + [s(tok[:, j : j + 1], cache=cache) for j in range(6, tok.shape[1])]
    assert_close(f"{name} cached logits", torch.cat(steps, 1), full, 1e-9)
    out = s.generate(tok[:, :5], 4)
    assert out.shape == (2, 9), f"{name}: generate returned {tuple(out.shape)}"


def test_growing_kv_heads_is_exact():
    t = teacher(2)
    s = convert(t, student_cfg(t.cfg.to_dict(), mixer={"n_kv_heads": 4}))
    tok = ids()
    assert_close("MHA student from GQA teacher: logits", logits(s, tok), logits(t, tok), 1e-12)


# ------------------------------------------------------------------------- GQA / MLA


def test_gqa_from_mha_is_mean_pooled():
    t = teacher(4)
    s = convert(t, student_cfg(t.cfg.to_dict(), mixer={"n_kv_heads": 2}))
    src, dst = t.blocks[0].mixer, s.blocks[0].mixer
    for name in ("k_proj", "v_proj"):
        w = getattr(src, name).weight.view(2, 2, D, DM).mean(1).reshape(2 * D, DM)
        assert torch.equal(getattr(dst, name).weight, w), f"{name}: not the mean of each pair of teacher heads"
    x = x_in()
    B, T, _ = x.shape
    q = src.q_proj(x).view(B, T, H, D).transpose(1, 2)
    k = src.k_proj(x).view(B, T, 4, D).transpose(1, 2).reshape(B, 2, 2, T, D).mean(2)  # pooled (B, 2, T, D)
    v = src.v_proj(x).view(B, T, 4, D).transpose(1, 2).reshape(B, 2, 2, T, D).mean(2)
    cos, sin = RotaryEmbedding(D, 10000.0).double()(torch.arange(T), torch.float64)
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin).repeat_interleave(2, dim=1)
    scores = q @ k.transpose(-1, -2) / math.sqrt(D)
    scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
    o = (scores.softmax(-1) @ v.repeat_interleave(2, dim=1)).transpose(1, 2).reshape(B, T, H * D)
    with torch.no_grad():
        assert_close("GQA attention vs pooled manual", mixer_out(dst, x), src.o_proj(o), 1e-12)


def test_mla_full_rank_reproduces_mqa_teacher():
    """MQA teacher whose queries read only the kept RoPE dims: MLA at full rank is exact."""
    t = teacher(1)
    _, drop = rope_dims(D, MLA_FULL["qk_rope_head_dim"], "high")
    with torch.no_grad():
        for block in t.blocks:
            block.mixer.q_proj.weight.view(H, D, DM)[:, drop] = 0
    s = convert(t, student_cfg(t.cfg.to_dict(), mixer=MLA_FULL))  # kv_lora_rank 12 = dn + D: full
    tok = ids()
    assert_close("MLA logits vs teacher", logits(s, tok), logits(t, tok), 1e-10)


def test_mla_shared_rope_key_absorbs_each_groups_phase():
    """GQA teacher whose K/V heads' RoPE rows differ by a complex scale per frequency (a phase and
    a gain): the shared key plus per-group query phases is exact, where a mean of the heads is not."""
    t = teacher(2)
    dr = MLA_FULL["qk_rope_head_dim"]
    keep, drop = rope_dims(D, dr, "high")
    half = dr // 2
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for block in t.blocks:
            block.mixer.q_proj.weight.view(H, D, DM)[:, drop] = 0
            wk = block.mixer.k_proj.weight.view(2, D, DM)
            k0 = torch.complex(wk[0, keep[:half]], wk[0, keep[half:]])  # (dr/2, d)
            c = torch.polar(
                0.5 + torch.rand(half, 1, generator=gen, dtype=torch.float64),
                6.3 * torch.rand(half, 1, generator=gen, dtype=torch.float64),
            )
            wk[1, keep[:half]], wk[1, keep[half:]] = (c * k0).real, (c * k0).imag
    cfg = {**MLA_FULL, "kv_lora_rank": 2 * (MLA_FULL["qk_nope_head_dim"] + D)}  # full rank for 2 K/V heads
    s = convert(t, student_cfg(t.cfg.to_dict(), mixer=cfg), mla_rope_key="svd")
    tok = ids()
    assert_close("MLA from GQA with phase-related RoPE keys", logits(s, tok), logits(t, tok), 1e-10)
    mean = convert(t, student_cfg(t.cfg.to_dict(), mixer=cfg))
    assert rel_err(logits(mean, tok), logits(t, tok)) > 1e-3, "the default mean of the heads is not exact here"


def test_mla_full_rank_k_nope_is_teacher_key():
    t = teacher(2)
    s = convert(t, student_cfg(t.cfg.to_dict(), mixer={**MLA_FULL, "kv_lora_rank": 2 * (4 + D)}))
    src, dst = t.blocks[1].mixer, s.blocks[1].mixer
    _, drop = rope_dims(D, 4, "high")
    x = x_in()
    with torch.no_grad():
        latent = dst.kv_a_proj(x)[..., : dst.r]
        k_nope = dst.kv_b_proj(latent).view(2, -1, H, 4 + D)[..., :4]  # (B, T, H, dn)
        k_teacher = src.k_proj(x).view(2, -1, 2, D)[..., drop].repeat_interleave(2, dim=2)
    assert_close("MLA per-head k_nope vs teacher's unrotated key", k_nope, k_teacher, 1e-10)


def test_mla_calibration_full_rank_stays_exact():
    """The activation-aware factorisation at full rank is exact like the plain one (MQA teacher, queries on the kept
    RoPE dims), and the converter says it ran."""
    t = teacher(1)
    _, drop = rope_dims(D, MLA_FULL["qk_rope_head_dim"], "high")
    with torch.no_grad():
        for block in t.blocks:
            block.mixer.q_proj.weight.view(H, D, DM)[:, drop] = 0
    s = convert(t, student_cfg(t.cfg.to_dict(), mixer=MLA_FULL), calibration=ids(4, 16, seed=7))
    tok = ids()
    assert_close("MLA (activation-aware, full rank) logits vs teacher", logits(s, tok), logits(t, tok), 1e-9)
    assert any("activation-aware" in n for n in s.convert_notes)


def _spiky_teacher():
    """A GQA teacher whose inputs have a few large dimensions, as a residual stream has."""
    t = teacher(2)
    with torch.no_grad():
        t.embed.weight[:, :3] *= 20.0
    return t


def _assert_calibration_helps(t, cfg, cal):
    """Logits on the calibration tokens closer to the teacher's with calibration than without; -> the fitted one."""
    plain, fitted = convert(t, cfg), convert(t, cfg, calibration=cal)
    ref = logits(t, cal)
    assert rel_err(logits(fitted, cal), ref) < rel_err(logits(plain, cal), ref)
    return fitted


def test_mqa_calibration_is_exact_for_phase_related_keys_and_equal_values():
    """GQA -> MQA with calibration: where the two K/V heads' keys differ by a complex scale per RoPE frequency and
    their values are equal, the fitted merge (shared key, query heads absorbing each group's phase, output refit) is
    exact, where mean pooling is not."""
    t = teacher(2)
    half = D // 2
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for block in t.blocks:
            wk = block.mixer.k_proj.weight.view(2, D, DM)
            k0 = torch.complex(wk[0, :half], wk[0, half:])
            c = torch.polar(0.5 + torch.rand(half, 1, generator=gen, dtype=torch.float64),
                            6.3 * torch.rand(half, 1, generator=gen, dtype=torch.float64))  # fmt: skip
            wk[1, :half], wk[1, half:] = (c * k0).real, (c * k0).imag
            wv = block.mixer.v_proj.weight.view(2, D, DM)
            wv[1] = wv[0]
    cfg = student_cfg(t.cfg.to_dict(), mixer={"n_kv_heads": 1})
    s = convert(t, cfg, calibration=ids(4, 16, seed=7))
    tok = ids()
    assert_close("MQA (fitted) logits vs teacher", logits(s, tok), logits(t, tok), 1e-9)
    assert any("K/V fitted" in n for n in s.convert_notes)
    assert rel_err(logits(convert(t, cfg), tok), logits(t, tok)) > 1e-3, "mean pooling is not exact here"


def test_mqa_calibration_fits_the_attention_output_better():
    """A generic GQA teacher: the fitted merge's attention outputs are closer to the teacher's on the calibration
    inputs than mean pooling's."""
    t, cal = _spiky_teacher(), ids(6, 16, seed=3)
    cfg = student_cfg(t.cfg.to_dict(), mixer={"n_kv_heads": 1})
    _assert_calibration_helps(t, cfg, cal)


def test_cla_calibration_fits_the_shared_kv_better():
    """CLA2 on a GQA teacher: with calibration the group's shared K/V (members' keys and values predicted from the
    leader's input) and the refitted query / output projections give logits closer to the teacher's than the group
    mean; members keep the projections their leader's fit set."""
    t, cal = _spiky_teacher(), ids(6, 16, seed=3)
    cfg = student_cfg(t.cfg.to_dict(), mixer={"cla_group": 2})
    fitted = _assert_calibration_helps(t, cfg, cal)
    first = convert(t, cfg, calibration=cal, cla_share="first")
    assert any("cla_share='first'" in n for n in first.convert_notes), "the unused calibration is said"
    member = fitted.blocks[1].mixer
    assert not member.owns_kv and not torch.equal(member.o_proj.weight, t.blocks[1].mixer.o_proj.weight)


def _kv_output_error(t, s, x_tokens) -> float:
    """Sum over layers of E||[k_nope; v](x) - teacher's||^2 on the teacher's own mixer inputs for these tokens."""
    inputs = {}
    hooks = [b.mixer.register_forward_hook(lambda m, a, o, i=i: inputs.__setitem__(i, a[0])) for i, b in
             enumerate(t.blocks)]  # fmt: skip
    with torch.no_grad():
        t(x_tokens)
    for h in hooks:
        h.remove()
    err = 0.0
    _, drop = rope_dims(D, MLA_LOW["qk_rope_head_dim"], "high")
    dn = MLA_LOW["qk_nope_head_dim"]
    for i, (tb, sb) in enumerate(zip(t.blocks, s.blocks, strict=True)):
        x, src, dst = inputs[i], tb.mixer, sb.mixer
        with torch.no_grad():
            kv = dst.kv_b_proj(dst.kv_a_proj(x)[..., : dst.r]).view(*x.shape[:2], H, dn + D)
            kv = kv[..., ::2, :]  # one head per K/V group
            ref_k = src.k_proj(x).view(*x.shape[:2], 2, D)[..., drop]
            ref_v = src.v_proj(x).view(*x.shape[:2], 2, D)
        err += float((kv[..., :dn] - ref_k).pow(2).sum() + (kv[..., dn:] - ref_v).pow(2).sum())
    return err


def test_mla_calibration_fits_the_projections_outputs_better():
    """Low rank: on the calibration inputs, the activation-aware factorisation's K/V outputs are closer to the
    teacher's than the plain SVD's (it minimises exactly that error; the plain SVD minimises the weights' error)."""
    t = _spiky_teacher()
    cal = ids(6, 16, seed=3)
    cfg = student_cfg(t.cfg.to_dict(), mixer=MLA_LOW)
    plain, aware = convert(t, cfg), convert(t, cfg, calibration=cal)
    assert _kv_output_error(t, aware, cal) < 0.9 * _kv_output_error(t, plain, cal)


@pytest.mark.parametrize("bad", [torch.zeros(0, 3, dtype=torch.long), torch.full((1, 4), 99), torch.ones(2, 3)])
def test_bad_calibration_is_refused(bad):
    t = teacher(2)
    with pytest.raises(ValueError, match="calibration"):
        convert(t, student_cfg(t.cfg.to_dict(), mixer=MLA_LOW), calibration=bad)


# ----------------------------------------------------------------------------- MoE


def test_moe_upcycle_without_noise_equals_dense():
    t = teacher(2)
    cfg = student_cfg(t.cfg.to_dict(), ffn=MOE)
    s = convert(t, cfg, moe_noise=0.0)
    tok = ids()
    assert_close("upcycled MoE logits vs dense teacher", logits(s, tok), logits(t, tok), 1e-12)
    noisy = convert(t, cfg)
    assert not torch.equal(noisy.blocks[0].ffn.gate_proj.weight[0], noisy.blocks[0].ffn.gate_proj.weight[1])


@pytest.mark.parametrize("n_shared", [1, 2])
def test_moe_upcycle_with_shared_experts_equals_dense(n_shared):
    t = teacher(2)
    cfg = student_cfg(t.cfg.to_dict(), ffn={**MOE, "n_shared_experts": n_shared})
    s = convert(t, cfg, moe_noise=0.0)
    tok = ids()
    assert_close(f"upcycled MoE with {n_shared} shared experts vs dense", logits(s, tok), logits(t, tok), 1e-12)


# -------------------------------------------------------------------- layers, errors


def test_layer_subset_chosen_and_default():
    t = teacher(2)
    s = convert(t, student_cfg(t.cfg.to_dict(), n_layers=2), layers=[3, 1])
    for i, j in enumerate([3, 1]):
        assert torch.equal(s.blocks[i].mixer.q_proj.weight, t.blocks[j].mixer.q_proj.weight), f"student layer {i}"
        assert torch.equal(s.blocks[i].ffn.up_proj.weight, t.blocks[j].ffn.up_proj.weight), f"student layer {i}"
    s = convert(t, student_cfg(t.cfg.to_dict(), n_layers=3))
    for i, j in enumerate([0, 2, 3]):  # evenly spaced, first and last kept
        assert torch.equal(s.blocks[i].mixer.q_proj.weight, t.blocks[j].mixer.q_proj.weight), f"student layer {i}"


ERRORS = {
    "unknown option": ({}, {"sharing": "first"}, "unknown convert option"),
    "d_model": (dict(d_model=16, mixer={"n_heads": 2}), {}, "d_model"),
    "too many layers": (dict(n_layers=6), {}, "more than the teacher's"),
    "bad layer index": (dict(n_layers=2), {"layers": [0, 7]}, r"layers=\[0, 7\]"),
    "attention heads": (dict(mixer={"n_heads": 2, "n_kv_heads": 2}), {}, "n_heads/head_dim"),
    "linear head_dim": (dict(mixer=_la("elu", head_dim=4)), {}, "head_dim 4 must equal the teacher's head_dim 8"),
    "linear feature_dim": (dict(mixer=_la("hedgehog", feature_dim=4)), {}, "feature_dim = the teacher's head_dim 8"),
    "linear n_heads": (dict(mixer=_la("taylor", n_heads=3, head_dim=8)), {}, "n_heads=3 must divide"),
    "mamba expand": (dict(mixer={**MAMBA, "expand": 0.75}), {}, "e.g. expand = 1"),
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_clear_errors(case):
    edits, options, match = ERRORS[case]
    t = teacher(2)
    with pytest.raises(ValueError, match=match):
        convert(t, student_cfg(t.cfg.to_dict(), **edits), **options)


def test_hybrid_keeps_teacher_attention():
    t = teacher(2)
    cfg = student_cfg(t.cfg.to_dict(), mixer=MAMBA, layers=[{"at": "::2", "mixer": ATTN}])
    s = convert(t, cfg)
    for i in (0, 2):
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            ours, theirs = getattr(s.blocks[i].mixer, name).weight, getattr(t.blocks[i].mixer, name).weight
            assert torch.equal(ours, theirs), f"layer {i} {name} changed"
        assert torch.equal(s.blocks[i].mixer_norm.weight, t.blocks[i].mixer_norm.weight)


# ------------------------------------------------------------------ linear attention


def _taylor_attention(src, x: torch.Tensor) -> torch.Tensor:
    """The teacher's layer with exp(s) replaced by 1 + s + s^2/2 and no RoPE, s = q.k / sqrt(D)."""
    B, T, _ = x.shape
    q = src.q_proj(x).view(B, T, H, D).transpose(1, 2)
    k = src.k_proj(x).view(B, T, src.n_kv_heads, D).transpose(1, 2).repeat_interleave(H // src.n_kv_heads, 1)
    v = src.v_proj(x).view(B, T, src.n_kv_heads, D).transpose(1, 2).repeat_interleave(H // src.n_kv_heads, 1)
    s = q @ k.transpose(-1, -2) / math.sqrt(D)
    w = (1 + s + s.square() / 2).tril()
    o = (w / w.sum(-1, keepdim=True)) @ v
    return src.o_proj(o.transpose(1, 2).reshape(B, T, H * D))


@pytest.mark.parametrize("feature_dim", [D, 4])
def test_taylor_reproduces_teacher_scores(feature_dim):
    """BASED from attention: exact Taylor attention over the teacher's scores when the score rank fits."""
    t = teacher(2)
    if feature_dim < D:  # make each head's score form rank feature_dim, so the SVD cut loses nothing
        with torch.no_grad():
            for block in t.blocks:
                block.mixer.q_proj.weight.view(H, D, DM)[:, feature_dim:] = 0
    mixer = _la("taylor", feature_dim=feature_dim, eps=1e-12)
    s = convert(t, student_cfg(t.cfg.to_dict(), mixer=mixer))
    x = x_in()
    with torch.no_grad():
        for i in range(4):
            ref = _taylor_attention(t.blocks[i].mixer, x)
            assert_close(
                f"layer {i} taylor linear attention vs teacher scores", mixer_out(s.blocks[i].mixer, x), ref, 1e-10
            )
    assert any("RoPE" in n for n in s.convert_notes)


def test_linear_attention_copies_and_repeats_heads():
    t = teacher(2)
    s = convert(t, student_cfg(t.cfg.to_dict(), mixer=_la("hedgehog")))
    src, dst = t.blocks[2].mixer, s.blocks[2].mixer
    assert torch.equal(dst.q_proj.weight, src.q_proj.weight)
    assert torch.equal(dst.o_proj.weight, src.o_proj.weight)
    for name in ("k_proj", "v_proj"):
        rep = getattr(src, name).weight.view(2, D, DM).repeat_interleave(2, dim=0).reshape(H * D, DM)
        assert torch.equal(getattr(dst, name).weight, rep), name
    eye = torch.eye(D, dtype=torch.float64).expand(H, D, D)
    assert torch.equal(dst.q_map.weight, eye) and torch.equal(dst.k_map.weight, eye), "hedgehog starts at identity"


# ----------------------------------------------------------------------------- Mamba


def test_output_split():
    assert torch.equal(output_split(3, 3), torch.eye(3, dtype=torch.float64))
    for r, k in [(2, 4), (4, 2), (3, 2), (2, 3)]:
        P = output_split(r, k)
        assert torch.allclose(P.sum(1), torch.ones(r, dtype=torch.float64)), (r, k)
        assert torch.allclose(P.sum(0), torch.full((k,), r / k, dtype=torch.float64)), (r, k)


@pytest.mark.parametrize("expand", [1, 2])
def test_mamba_maps_v_o_and_gate(expand):
    t = teacher(2)
    s = convert(t, student_cfg(t.cfg.to_dict(), mixer={**MAMBA, "expand": expand, "bias": True}))
    src, dst = t.blocks[1].mixer, s.blocks[1].mixer
    Di, k = dst.d_inner, dst.d_inner // (2 * D)
    wx = src.v_proj.weight.view(2, D, DM).repeat_interleave(k, dim=0).reshape(Di, DM)
    assert torch.equal(dst.in_proj.weight[:Di], wx), "x half of in_proj is not V repeated"
    wo = dst.o_proj.weight.view(DM, 2, k, D)
    if k == 2:  # one channel block per query head: o_proj copied
        assert torch.equal(dst.o_proj.weight, src.o_proj.weight)
    summed = wo.view(DM, 2, 2, k // 2, D).sum(3).reshape(DM, H * D)  # each query head's blocks
    assert_close("Mamba out blocks summed per query head vs o_proj", summed, src.o_proj.weight, 1e-14)
    assert torch.equal(dst.in_proj.weight[Di:], torch.zeros_like(dst.in_proj.weight[Di:]))
    assert_close("neutral gate SiLU(z)", F.silu(dst.in_proj.bias[Di:]), torch.ones(Di, dtype=torch.float64), 1e-12)
    taps = torch.zeros(Di, dst.d_conv, dtype=torch.float64)
    taps[:, -1] = 1
    assert torch.equal(dst.conv1d.weight.squeeze(1), taps), "conv is not the identity"


def test_mamba_b_c_give_mean_score_at_full_rank():
    """MHA teacher (V full rank) and d_state >= d_model: C.B read from x = V u equals the head-mean score."""
    t = teacher(4)
    s = convert(t, student_cfg(t.cfg.to_dict(), mixer={**MAMBA, "d_state": DM}))
    src, dst = t.blocks[0].mixer, s.blocks[0].mixer
    R, N, Di = dst.dt_rank, dst.d_state, dst.d_inner
    wx = dst.in_proj.weight[:Di]
    wB, wC = dst.x_proj.weight[R : R + N] @ wx, dst.x_proj.weight[R + N :] @ wx  # (N, d) on x ~ V u / 2
    wq, wk = src.q_proj.weight.view(H, D, DM), src.k_proj.weight.view(H, D, DM)
    M = torch.einsum("hcd,hce->de", wq, wk) / (H * math.sqrt(D))
    assert_close("Mamba C^T B (x linearised, slope 1/2) vs mean score form", (wC / 2).t() @ (wB / 2), M, 1e-9)
    Ct, Bt, basis = score_factors(src, 3)
    assert Ct.shape == (3, DM) and basis.shape == (DM, DM)


def test_mamba_without_bias_starts_silent():
    t = teacher(2)
    s = convert(t, student_cfg(t.cfg.to_dict(), mixer=MAMBA))
    assert torch.equal(mixer_out(s.blocks[0].mixer, x_in()), torch.zeros(2, 9, DM, dtype=torch.float64))
    assert any("starts silent" in n for n in s.convert_notes)
    assert abs(F.silu(torch.tensor(silu_inverse(1.0), dtype=torch.float64)).item() - 1.0) < 1e-14


# -------------------------------------------------------------------------------- S4D


@pytest.mark.parametrize("init", ["lin", "inv", "real"])
def test_s4_value_output_path_and_average_kernel(init):
    t = teacher(2)
    cfg = student_cfg(t.cfg.to_dict(), mixer={"type": "s4", "d_state": 8, "init": init})
    s = convert(t, cfg)
    fresh = archzoo.build_model(cfg).double()
    src, dst = t.blocks[3].mixer, s.blocks[3].mixer
    wv = src.v_proj.weight.view(2, D, DM).repeat_interleave(2, dim=0).reshape(H * D, DM)
    assert_close("S4D o_proj vs W_o V", dst.o_proj.weight, src.o_proj.weight @ wv, 1e-14)
    for name in ("A_log_re", "A_im", "B"):
        p = getattr(dst, name)
        if p is not None:
            assert torch.equal(p, getattr(fresh.blocks[3].mixer, name)), f"{name}: S4D spectrum changed"
    assert torch.equal(dst.D, torch.full_like(dst.D, 0.25))
    with torch.no_grad():
        dtA, dB, C = dst.discretize(torch.float64)
        total = dst._out((C * dB / (1 - torch.exp(dtA))).sum(-1))  # (H,) infinite kernel sums
        assert_close("S4D kernel total weight", total, torch.full_like(total, 0.75), 1e-12)
        if init == "lin":  # the real mode A = -1/2: a positive decaying kernel
            assert (dst.kernel(50, torch.float64) > 0).all()


def test_mla_norm_rope_keeps_the_pairs_the_queries_use(tmp_path):
    """MQA teacher whose queries read only two of the four RoPE pairs, and not the two highest: 'norm' finds those
    pairs in every layer (their queries are the only non-zero ones), gives each layer its own ``rope_pairs``, and
    MLA at full rank is then exact; 'high' keeps the wrong pairs and is not."""
    t = teacher(1)
    pairs = [[1, 3], [0, 2], [2, 3], [1, 3]]
    with torch.no_grad():
        for block, keep in zip(t.blocks, pairs, strict=True):
            drop = [p for p in range(D // 2) if p not in keep]
            q = block.mixer.q_proj.weight.view(H, D, DM)
            q[:, drop], q[:, [p + D // 2 for p in drop]] = 0, 0
    s = convert(t, student_cfg(t.cfg.to_dict(), mixer=MLA_FULL), mla_rope="norm", calibration=ids(4, 16, seed=7))
    assert [b.mixer.rope_pairs for b in s.cfg.blocks] == pairs
    assert all(b.mixer.rope_theta == 10000.0 for b in s.cfg.blocks)
    tok = ids()
    assert_close("MLA ('norm' pairs, full rank) logits vs teacher", logits(s, tok), logits(t, tok), 1e-9)
    high = convert(t, student_cfg(t.cfg.to_dict(), mixer=MLA_FULL))
    assert rel_err(logits(high, tok), logits(t, tok)) > 1e-3, "'high' keeps pairs 0, 1: not the ones used here"
    # The pairs travel with the saved student: loaded back (built on the meta device, its RoPE frequencies made
    # anew), it computes the same logits.
    s.save_pretrained(tmp_path / "s")
    again = archzoo.from_pretrained(tmp_path / "s").double()
    assert [b.mixer.rope_pairs for b in again.cfg.blocks] == pairs
    assert torch.equal(logits(again, tok), logits(s, tok))


def test_mla_rope_pairs_must_be_rising_and_in_range():
    base = {**MLA_FULL, "type": "mla"}
    for bad in ([0], [2, 1], [1, 1], [0, 4], [-1, 2]):
        with pytest.raises(ValueError, match="rope_pairs must be 2 rising pair indices in"):
            archzoo.load_config(student_cfg(teacher_cfg(1), mixer={**base, "rope_pairs": bad}))
    with pytest.raises(ValueError, match="mla_rope='nope'; supported: 'high', 'norm'"):
        convert(teacher(1), student_cfg(teacher_cfg(1), mixer=MLA_FULL), mla_rope="nope")
    with pytest.raises(ValueError, match="mla_rope='norm' ranks RoPE pairs .* pass calibration token ids"):
        convert(teacher(1), student_cfg(teacher_cfg(1), mixer=MLA_FULL), mla_rope="norm")
