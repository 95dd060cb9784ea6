"""MLA: the absorbed (decode) path equals the decompressed (training) path."""

from __future__ import annotations

import pytest
import torch

from archzoo.layers import ForwardContext

from conftest import MODEL_CONFIGS, assert_close, f64_model

MLA = next(p for p in MODEL_CONFIGS if p.stem == "mla")


@pytest.mark.parametrize("q_lora", [True, False])
def test_absorbed_equals_decompressed(q_lora):
    from conftest import load_yaml

    data = load_yaml(MLA)
    if not q_lora:
        data["mixer"]["q_lora_rank"] = None
    model = f64_model(data)
    mixer = model.blocks[0].mixer
    x = torch.randn(2, 13, model.cfg.d_model, dtype=torch.float64, requires_grad=True)
    mixer.absorb = False
    ref = mixer(x, None, ForwardContext())
    (gx_ref,) = torch.autograd.grad(ref.square().sum(), x)
    mixer.absorb = True
    out = mixer(x, None, ForwardContext())
    (gx,) = torch.autograd.grad(out.square().sum(), x)
    assert_close("mla output absorbed vs decompressed", out, ref, 1e-12)
    assert_close("mla d(input) absorbed vs decompressed", gx, gx_ref, 1e-12)


def test_decode_uses_absorbed_path_and_matches():
    model = f64_model(MLA)
    ids = torch.randint(0, model.cfg.vocab_size, (1, 12))
    with torch.no_grad():
        full = model(ids)
        cache = model.new_cache(1, 12)
        model(ids[:, :6], cache=cache)
        calls = []
        mixer = model.blocks[0].mixer
        orig = mixer._decode  # the decode step: absorbed attention over the cached latent rows
        mixer._decode = lambda *a: calls.append(1) or orig(*a)
        step = model(ids[:, 6:7], cache=cache)
        assert calls, "decode did not take the absorbed decode step"
        nope = model.blocks[0].mixer.kv_b_proj
        nope.register_forward_hook(lambda *a: calls.append("decompressed"))
        model(ids[:, 7:8], cache=cache)
    assert "decompressed" not in calls, "a decode step up-projected the latent cache"
    assert_close("mla decode logits", step, full[:, 6:7], 1e-10)


def _full_rank_query_mla(**mixer):
    from conftest import load_yaml

    data = load_yaml(MLA)
    data["mixer"] = {**data["mixer"], "q_lora_rank": None, **mixer}
    return f64_model(data)


def test_folded_decode_step_matches_the_unfolded_one_and_the_full_forward(monkeypatch):
    """W_uk folded into the query's copy and W_uv into O's (layers/mla_fold.py): the decode steps give the
    unfolded absorbed steps' logits and the full forward's, and run no per-head matmul."""
    import copy

    from archzoo.layers.mla_fold import FoldedMLA

    model = _full_rank_query_mla()
    assert all(isinstance(b.mixer.fused, FoldedMLA) for b in model.blocks), "the tiny MLA layers fold"
    ids = torch.randint(0, model.cfg.vocab_size, (2, 12), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        full = model(ids)
        cache = model.new_cache(2, 12)
        model(ids[:, :6], cache=cache)
        folded = copy.deepcopy(cache)
        folded.fused_weights = True
        model.refresh_fused()
        einsums = []
        real_einsum = torch.einsum
        for t in range(6, 12):
            ref = model(ids[:, t : t + 1], cache=cache)
            monkeypatch.setattr(torch, "einsum", lambda *a, **k: einsums.append(a[0]) or real_einsum(*a, **k))
            got = model(ids[:, t : t + 1], cache=folded)
            monkeypatch.setattr(torch, "einsum", real_einsum)
            assert_close(f"folded step {t} vs unfolded", got, ref, 1e-12)
            assert_close(f"folded step {t} vs full forward", got, full[:, t : t + 1], 1e-10)
    assert not einsums, f"the folded step still multiplies per head: {einsums}"


def test_folded_copies_follow_weight_changes():
    from archzoo.layers.mla_fold import FoldedMLA

    model = _full_rank_query_mla()
    mixer = model.blocks[0].mixer
    f = mixer.fused
    x = torch.randn(3, model.cfg.d_model, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="refresh"):
        f(x)
    assert f.refresh() and not f.refresh(), "a second refresh with nothing changed computes nothing"
    address = (f.weight.data_ptr(), f.o_weight.data_ptr())
    with torch.no_grad():
        mixer.kv_b_proj.weight.mul_(1.5)  # an optimizer-style in-place update of W_uk and W_uv
    assert f.refresh() and (f.weight.data_ptr(), f.o_weight.data_ptr()) == address, "recomputed in place"
    H, dn, dr, dv, r = f.dims
    q, kv = f(x)
    w = mixer.kv_b_proj.weight.view(H, dn + dv, r)
    q_ref = mixer.q_proj(x).view(3, H, dn + dr)
    q_lat = torch.einsum("bhd,hdr->bhr", q_ref[..., :dn], w[:, :dn])
    assert_close("folded query", q.view(3, H, r + dr), torch.cat([q_lat, q_ref[..., dn:]], -1), 1e-12)
    assert_close("folded latent row", kv, mixer.kv_a_proj(x), 1e-12)
    o_lat = torch.randn(3, H, r, dtype=torch.float64)
    o_ref = mixer.o_proj(torch.einsum("bhr,hvr->bhv", o_lat, w[:, dn:]).reshape(3, H * dv))
    assert_close("folded output", f.project_out(o_lat.reshape(3, H * r), None), o_ref, 1e-12)
    f.release()
    assert f.weight is None and f.o_weight is None
    with pytest.raises(ValueError, match="q_lora_rank"):
        FoldedMLA(f64_model(MLA).blocks[0].mixer)


def test_layers_whose_folded_copies_would_be_large_stay_unfolded(caplog, monkeypatch):
    from archzoo.kernels import _dispatch
    from archzoo.layers.fused import FusedLinears
    from archzoo.layers.mla_fold import FOLD_MAX_EXTRA_BYTES, fold_extra_bytes

    # the SmolLM2-sized students (9 heads, d 576, dn = dv = 64): r 64 / 128 / 256 fold
    for r in (64, 128, 256):
        assert fold_extra_bytes(9, 576, 64, 64, r, 2) <= FOLD_MAX_EXTRA_BYTES
    # DeepSeek-V2's attention (128 heads, d 5120, dn = dv = 128, r = 512): about 1 GB more a layer
    assert fold_extra_bytes(128, 5120, 128, 128, 512, 2) > 100 * FOLD_MAX_EXTRA_BYTES
    monkeypatch.setattr(_dispatch, "_LOGGED", set())  # said once a process: this test wants to see it said
    with caplog.at_level("WARNING"):
        model = _full_rank_query_mla(n_heads=64, kv_lora_rank=1024)  # a tiny d_model, but 64 x 1024 folded rows
    assert "keeps W_uk and W_uv unfolded" in caplog.text and "FOLD_MAX_EXTRA_BYTES" in caplog.text
    mixer = model.blocks[0].mixer
    assert fold_extra_bytes(64, model.cfg.d_model, mixer.dn, mixer.dv, 1024, 2) > FOLD_MAX_EXTRA_BYTES
    assert isinstance(mixer.fused, FusedLinears), "a layer above the limit keeps the unfolded step's copy"
    _ = model(torch.randint(0, model.cfg.vocab_size, (1, 3)))  # and still runs


def test_fold_switch_off_keeps_the_unfolded_copy(monkeypatch):
    from archzoo.layers import mla_fold
    from archzoo.layers.fused import FusedLinears

    monkeypatch.setattr(mla_fold, "ENABLED", False)  # read as a layer is built (tools/decode_profile.py --mla-fold)
    assert isinstance(_full_rank_query_mla().blocks[0].mixer.fused, FusedLinears)


def test_folded_step_compiles_once_and_matches_eager():
    from torch._dynamo.testing import CompileCounter

    torch._dynamo.reset()
    model = _full_rank_query_mla().float()
    cache = model.new_cache(2, 24, dtype=torch.float32)
    cache.fused_weights = True
    model.refresh_fused()
    ids = torch.randint(0, model.cfg.vocab_size, (2, 24))
    counter = CompileCounter()
    with torch.no_grad():
        model(ids[:, :4], cache=cache)
        eager_cache = __import__("copy").deepcopy(cache)
        step = torch.compile(lambda t: model(t, cache=cache), backend=counter, fullgraph=True)
        for t in range(4, 14):
            got = step(ids[:, t : t + 1])
            ref = model(ids[:, t : t + 1], cache=eager_cache)
            assert_close(f"compiled folded step {t}", got, ref, 1e-5)
    assert counter.frame_count == 1
    torch._dynamo.reset()
