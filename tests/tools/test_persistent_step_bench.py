"""tools/persistent_step_bench.py's persistent layer-stack kernel under Triton's interpreter with one program (its
barriers pass at once): the residual stream and both caches against a layer-by-layer PyTorch reference (head
order, rotate-half RoPE), in fp32 and bf16, with GQA groups of 1 and 3, a cache position inside and at the first
attention tile's edge, and head-dim tiles of several Q|K|V rows; bad shapes raise."""

from __future__ import annotations

import pytest
import torch

from conftest import assert_stack_matches, load_tool, requires_cuda

pytest.importorskip("triton")


def _tool():
    return load_tool("persistent_step_bench")


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.bfloat16, 3e-2)], ids=["fp32", "bf16"])
@pytest.mark.parametrize("H, HKV, pos", [(3, 1, 5), (2, 2, 8), (6, 2, 0)], ids=["gqa3-pos5", "mha-pos8", "gqa3-pos0"])
def test_step_stack_matches_the_reference(monkeypatch, dtype, tol, H, HKV, pos):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    m = _tool()
    L, D, HD, F, T_max = 2, 24, 8, 16, 12
    st = m.make_stack(L, D, H, HKV, HD, F, T_max, pos, dtype, torch.device("cpu"))
    out, kc, vc, flag = m.step_stack(st, H, HKV, pos, 1e-5, 1, rows_qkv=4, rows_d=4, rows_gu=8, block_k=16, block_f=8,
                                     block_t=8, num_warps=1)  # fmt: skip
    want, kc_ref, vc_ref = m.step_stack_reference(st, H, HKV, pos, 1e-5)
    assert int(flag) == 0
    for name, got, ref in (("x", out, want), ("K cache", kc, kc_ref), ("V cache", vc, vc_ref)):
        err = ((got.float() - ref.float()).abs().max() / ref.float().abs().max()).item()
        assert err < tol, f"{name}: relative error {err:.3g}"
    assert not torch.equal(kc[:, :, pos], st["kc"][:, :, pos])  # slot pos written
    assert torch.equal(kc[:, :, pos + 1 :], st["kc"][:, :, pos + 1 :])  # and nothing after it


def test_step_stack_bad_shapes_say_which():
    m = _tool()
    st = m.make_stack(1, 24, 3, 1, 8, 16, 12, 5, torch.float32, torch.device("cpu"))
    with pytest.raises(ValueError, match="rows_qkv"):
        m.step_stack(st, 3, 1, 5, 1e-5, 1, rows_qkv=6)
    with pytest.raises(ValueError, match="pos"):
        m.step_stack(st, 3, 1, 12, 1e-5, 1, rows_qkv=4)


def test_no_cuda_says_so(capsys):
    if torch.cuda.is_available():
        pytest.skip("has a GPU")
    assert _tool().main([]) == 2
    assert "needs a CUDA device" in capsys.readouterr().out


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.bfloat16, 3e-2)], ids=["fp32", "bf16"])
@pytest.mark.parametrize("H, HKV, pos, splits, split_sync",
                         [(3, 1, 5, 1, False), (2, 2, 8, 1, False), (3, 1, 9, 3, False), (2, 2, 4, 4, False),
                          (3, 1, 9, 3, True), (2, 2, 8, 1, True)],
                         ids=["gqa3-pos5", "mha-pos8", "gqa3-pos9-3-splits", "mha-pos4-4-splits",
                              "gqa3-pos9-3-splits-arrive-first", "mha-pos8-arrive-first"])  # fmt: skip
def test_prefetch_stack_matches_the_reference(monkeypatch, dtype, tol, H, HKV, pos, splits, split_sync):
    """``persistent_prefetch``: each stage's first tile loaded a stage ahead, the others in the loop (one program
    here: every stage has several tiles), attention in one task a head or in splits of the cache merged in O (tiles
    of 2 positions; at position 4, three tiles for four splits: the last split has none), against the same
    reference; arriving at each barrier before the tile's loads (``split_sync``, here with
    atomic polls) or after."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    m, pf = _tool(), load_tool("persistent_prefetch")
    L, D, HD, F, T_max = 2, 24, 8, 16, 12
    st = m.make_stack(L, D, H, HKV, HD, F, T_max, pos, dtype, torch.device("cpu"))
    prep = m.prepare(st, H, HKV)
    block_t = 8 if splits == 1 else 2
    out, flag = pf.run_prefetch(st, prep, H, HKV, pos, 1e-5, 1, rows=(4, 4, 8), block_t=block_t, splits=splits,
                                num_warps=1, split_sync=split_sync, poll_load=not split_sync)  # fmt: skip
    want, kc_ref, vc_ref = m.step_stack_reference(st, H, HKV, pos, 1e-5)
    assert int(flag) == 0
    assert_stack_matches(prep, out, want, kc_ref, vc_ref, tol)


def test_prefetch_tiles_one_a_program():
    """At the teacher's shape on 132 programs every stage's tiles fit one a program (so each is prefetched)."""
    pf = load_tool("persistent_prefetch")
    assert [pf.rows_for(n, 132) for n in (960, 576, 3072)] == [8, 8, 32]
    assert [pf.rows_for(n, 66) for n in (960, 576, 3072)] == [16, 16, 64]


@requires_cuda
@pytest.mark.gpu
@pytest.mark.parametrize("split_sync, poll_load", [(False, True), (True, True), (True, False)],
                         ids=["prefetch", "arrive-first", "arrive-first-atomic-polls"])  # fmt: skip
def test_prefetch_stack_on_the_gpu(split_sync, poll_load):
    """Where the barriers are real: the teacher's shape (3 layers) in bf16 on every SM, each program one tile a
    stage, against the reference; a barrier released early (a program reading a stage's output before every program
    wrote it) shows as a wrong x, a stalled one as the flag."""
    m, pf = _tool(), load_tool("persistent_prefetch")
    t = m.teacher_shape()
    pos, dev = 255, torch.device("cuda")
    st = m.make_stack(3, t["D"], t["H"], t["HKV"], t["HD"], t["F"], pos + 1, pos, torch.bfloat16, dev, theta=t["theta"])
    prep = m.prepare(st, t["H"], t["HKV"])
    programs = torch.cuda.get_device_properties(dev).multi_processor_count
    for _ in range(3):  # the same slot each time: the same result, whatever order the programs met in
        out, flag = pf.run_prefetch(st, prep, t["H"], t["HKV"], pos, t["eps"], programs, split_sync=split_sync,
                                    poll_load=poll_load)  # fmt: skip
        assert int(flag) == 0
        want, kc_ref, vc_ref = m.step_stack_reference(st, t["H"], t["HKV"], pos, t["eps"])
        assert_stack_matches(prep, out, want, kc_ref, vc_ref, 1e-2)  # the benchmark's runs matched it exactly
