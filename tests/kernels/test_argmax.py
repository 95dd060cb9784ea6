"""argmax_rows: the greedy decode step's argmax in two Triton launches, exactly torch.argmax (the first maximum,
NaN as the maximum) on awkward rows; the dispatch, the custom op, and sampling's use of it. The interpreter on CPU
(chunks of 16 values, so a row spans several); bf16 on the GPU, marked."""

from __future__ import annotations

import pytest
import torch

import archzoo.kernels as K
from archzoo.kernels._testing import import_triton_kernels
from archzoo.sampling import sample_next

from conftest import graph_replayed, requires_cuda

_mods, _skip = import_triton_kernels("archzoo.kernels.argmax.triton")
pytestmark = pytest.mark.skipif(_skip is not None, reason=_skip or "")
T = _mods[0] if _mods else None
DEV = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture
def small_chunks(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    if DEV == "cpu":
        monkeypatch.setitem(T.CONFIG_OVERRIDE, "BLOCK", 16)


def _rows(B, V, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, V, generator=g).to(dtype)
    if V >= 40:
        x[0, 3] = x[0, V - 2] = x[0].max() + 1  # the maximum twice, in different chunks: the first wins
    if B > 1 and V >= 40:
        x[1, 33] = x[1, 20] = float("nan")  # NaN is the maximum, the first NaN wins
    if B > 2:
        x[2] = float("-inf")  # every value -inf: index 0
    if B > 3:
        x[3] = 1.0  # all equal: index 0
    if B > 4 and V >= 40:
        x[4, 17] = float("inf")
    return x.to(DEV)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("B, V", [(1, 1), (1, 15), (5, 40), (5, 97), (2, 1000)])
def test_matches_torch_argmax(B, V, dtype, small_chunks):
    x = _rows(B, V, dtype)
    got = K.argmax_rows(x)
    assert K.last_backend("argmax_rows") == "triton"
    assert got.dtype == torch.int64 and got.shape == (B,)
    assert got.tolist() == x.argmax(-1).tolist()


def test_strided_rows_and_the_custom_op(small_chunks):
    x = _rows(5, 300, torch.float32)[:, ::3]  # a column stride of 3
    assert K.argmax_rows(x).tolist() == x.argmax(-1).tolist()
    logits = torch.randn(3, 2, 77, device=DEV)[:, -1]  # the decode step's logits[:, -1]: a row stride
    assert K.argmax_rows(logits).tolist() == logits.argmax(-1).tolist()
    torch.library.opcheck(torch.ops.archzoo.argmax_rows.default, (x.contiguous(),))
    compiled = torch.compile(K.argmax_rows, fullgraph=True, backend="aot_eager")
    assert compiled(logits).tolist() == logits.argmax(-1).tolist()


def test_dispatch_falls_back_and_checks(small_chunks):
    x64 = torch.randn(2, 50, dtype=torch.float64, device=DEV)
    assert K.argmax_rows(x64).tolist() == x64.argmax(-1).tolist()
    assert K.last_backend("argmax_rows") == "naive"
    with pytest.raises(ValueError, match="x must be \\(rows, values\\)"):
        K.argmax_rows(torch.randn(50, device=DEV))
    with pytest.raises(ValueError, match="longer than"):
        K.argmax_rows(torch.empty(1, 2**24 + 1, dtype=torch.bfloat16, device=DEV))
    with pytest.raises(ValueError, match="floating point"):
        K.argmax_rows(torch.ones(2, 5, dtype=torch.long, device=DEV))


def test_sampling_uses_it(small_chunks):
    """Greedy sample_next is argmax_rows; a draw (temperature > 0) is the exponential race's argmax through it."""
    logits = _rows(5, 97, torch.float32)
    logits[1] = torch.randn(97)  # no NaN for sampling
    assert sample_next(logits).tolist() == logits.argmax(-1).tolist()
    assert K.last_backend("argmax_rows") == "triton"
    g1, g2 = torch.Generator(device=DEV).manual_seed(0), torch.Generator(device=DEV).manual_seed(0)
    probs_like = logits[[0, 1, 4]]
    a = sample_next(probs_like, temperature=0.7, top_k=20, generator=g1)
    b = probs_like.float() / 0.7  # the same steps with torch.argmax
    kth = torch.topk(b, 20, dim=-1).values[:, -1:]
    b = b.masked_fill(b < kth, float("-inf")).softmax(-1)
    race = torch.empty_like(b).exponential_(1.0, generator=g2)
    assert a.tolist() == (b / race).argmax(-1).tolist()


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("B", [1, 16, 64])
def test_cuda_vocab_rows(B):
    """The students' vocabulary (49,152) in bf16 and fp32: equal to torch.argmax, ties and NaN included, and a
    CUDA-graph replay gives the eager result."""
    for dtype in (torch.bfloat16, torch.float32):
        x = _rows(B, 49152, dtype, seed=B)
        got = K.argmax_rows(x)
        assert K.last_backend("argmax_rows") == "triton"
        assert torch.equal(got, x.argmax(-1))
        replayed, _graph = graph_replayed(lambda x=x: K.argmax_rows(x))
        assert torch.equal(replayed, got)
