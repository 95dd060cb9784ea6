"""tools/persistent_batch.py's persistent layer-stack kernel for B rows of x under Triton's interpreter with one
program (its barriers pass at once; every stage has several tiles, so the loop past the prefetched tile runs too):
the residual stream and both caches against the batch-1 PyTorch reference a row at a time, in fp32 and bf16, with
1, 3 and 17 rows (the MMA's 16-row tile padded, and more than one), GQA groups of 1 and 3, attention in one task a
(row, head) or in splits; bad shapes raise."""

from __future__ import annotations

import pytest
import torch

from conftest import assert_stack_matches, load_tool, requires_cuda

pytest.importorskip("triton")


def _tool():
    return load_tool("persistent_batch")


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.bfloat16, 3e-2)], ids=["fp32", "bf16"])
@pytest.mark.parametrize("B, H, HKV, pos, splits", [(3, 3, 1, 5, 1), (1, 2, 2, 8, 1), (17, 3, 1, 9, 3)],
                         ids=["b3-gqa3-pos5", "b1-mha-pos8", "b17-gqa3-pos9-3-splits"])  # fmt: skip
def test_batch_stack_matches_the_reference(monkeypatch, dtype, tol, B, H, HKV, pos, splits):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    m = _tool()
    L, D, HD, F, T_max = 2, 32, 16, 24, 12
    st = m.make_batch_stack(L, D, H, HKV, HD, F, T_max, pos, B, dtype, torch.device("cpu"))
    prep = m.prepare(st, H, HKV)
    block_t = 8 if splits == 1 else 2
    out, flag = m.run_batch(st, prep, H, HKV, pos, 1e-5, 1, rows=(16, 16, 16), block_t=block_t, splits=splits,
                            num_warps=1)  # fmt: skip
    want, kc_ref, vc_ref = m.batch_reference(st, H, HKV, pos, 1e-5)
    assert int(flag) == 0
    assert out.shape == (B, D)
    assert_stack_matches(prep, out, want, kc_ref, vc_ref, tol)
    assert not torch.equal(prep["vc"][:, :, :, pos], st["vc"][:, :, :, pos])  # slot pos written, every row
    assert torch.equal(prep["vc"][:, :, :, pos + 1 :], st["vc"][:, :, :, pos + 1 :])  # and nothing after it


def test_batch_tiles_at_the_teachers_shape():
    """On 132 programs: Q|K|V in 60 tiles of 16 rows, O / down in 36 of 16, gate|up in 96 of 32 (one a program)."""
    pf = load_tool("persistent_prefetch")
    assert [pf.rows_for(n, 132, 16) for n in (960, 576, 3072)] == [16, 16, 32]


def test_bad_shapes_say_which():
    m = _tool()
    st = m.make_batch_stack(1, 32, 3, 1, 16, 24, 12, 5, 2, torch.float32, torch.device("cpu"))
    prep = m.prepare(st, 3, 1)
    with pytest.raises(ValueError, match="at least 16"):
        m.run_batch(st, prep, 3, 1, 5, 1e-5, 1, rows=(8, 16, 16))
    with pytest.raises(ValueError, match="pos"):
        m.run_batch(st, prep, 3, 1, 12, 1e-5, 1, rows=(16, 16, 16))


def test_no_cuda_says_so(capsys):
    if torch.cuda.is_available():
        pytest.skip("has a GPU")
    assert _tool().main([]) == 2
    assert "needs a CUDA device" in capsys.readouterr().out


@requires_cuda
@pytest.mark.gpu
@pytest.mark.parametrize("B", [1, 16])
def test_batch_stack_on_the_gpu(B):
    """Where the barriers and bf16 tl.dot are real (the interpreter runs the dot in fp32): the teacher's shape
    (3 layers) at B rows on every SM against the reference a row at a time."""
    m = _tool()
    t = m.teacher_shape()
    pos, dev = 255, torch.device("cuda")
    st = m.make_batch_stack(3, t["D"], t["H"], t["HKV"], t["HD"], t["F"], pos + 1, pos, B, torch.bfloat16, dev,
                            theta=t["theta"])  # fmt: skip
    prep = m.prepare(st, t["H"], t["HKV"])
    programs = torch.cuda.get_device_properties(dev).multi_processor_count
    out, flag = m.run_batch(st, prep, t["H"], t["HKV"], pos, t["eps"], programs)
    assert int(flag) == 0
    want, kc_ref, vc_ref = m.batch_reference(st, t["H"], t["HKV"], pos, t["eps"])
    assert_stack_matches(prep, out, want, kc_ref, vc_ref, 3e-2)  # bf16's rounding, as under the interpreter
