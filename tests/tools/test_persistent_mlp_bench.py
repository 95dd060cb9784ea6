"""tools/persistent_mlp_bench.py's persistent MLP-stack kernel under Triton's interpreter with one program (its
barriers then pass at once): the output against the layer-by-layer reference with the decode GEMV's roundings, in
fp32 and bf16, on shapes where every tile loop and K loop runs more than once and ends masked; bad shapes raise."""

from __future__ import annotations

import pytest
import torch

from conftest import load_tool

pytest.importorskip("triton")


def _tool():
    return load_tool("persistent_mlp_bench")


def _case(dtype, L=3, D=24, F=16):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(D, generator=g).to(dtype)
    norm_w = (1 + 0.1 * torch.randn(L, D, generator=g)).to(dtype)
    w_gu = (torch.randn(L, 2 * F, D, generator=g) / D**0.5).to(dtype)
    w_d = (torch.randn(L, D, F, generator=g) / F**0.5).to(dtype)
    return x, norm_w, w_gu, w_d


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.bfloat16, 3e-2)], ids=["fp32", "bf16"])
def test_mlp_stack_matches_the_reference(monkeypatch, dtype, tol):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    m = _tool()
    x, norm_w, w_gu, w_d = _case(dtype)
    # 4 gate|up tiles of 8 rows, 6 down tiles of 4; K tiles of 16 over d_model 24, of 8 over d_ff 16 (masked ends)
    out, flag = m.mlp_stack(x, norm_w, w_gu, w_d, 1e-5, 1, rows_gu=8, rows_d=4, block_k=16, block_f=8, num_warps=1)
    want = m.mlp_stack_reference(x, norm_w, w_gu, w_d, 1e-5)
    assert int(flag) == 0
    err = ((out.float() - want.float()).abs().max() / want.float().abs().max()).item()
    assert err < tol, f"relative error {err:.3g}"
    assert not torch.equal(out, x)  # the layers did something


def test_mlp_stack_reference_is_the_unfused_mlp():
    """The reference in fp32 is ``x + down(silu(gate(norm(x))) * up(norm(x)))`` layer by layer (interleaved rows)."""
    m = _tool()
    x, norm_w, w_gu, w_d = _case(torch.float32, L=2)
    want = x.clone()
    for layer in range(2):
        xn = want * torch.rsqrt(want.pow(2).mean() + 1e-5) * norm_w[layer]
        g, u = w_gu[layer][0::2] @ xn, w_gu[layer][1::2] @ xn
        want = want + w_d[layer] @ (torch.nn.functional.silu(g) * u)
    torch.testing.assert_close(m.mlp_stack_reference(x, norm_w, w_gu, w_d, 1e-5), want, rtol=1e-5, atol=1e-5)


def test_mlp_stack_bad_shapes_say_which():
    m = _tool()
    x, norm_w, w_gu, w_d = _case(torch.float32)
    with pytest.raises(ValueError, match="rows_gu"):
        m.mlp_stack(x, norm_w, w_gu, w_d, 1e-5, 1, rows_gu=6, rows_d=4)
    with pytest.raises(ValueError, match="do not fit"):
        m.mlp_stack(x[:-1], norm_w, w_gu, w_d, 1e-5, 1)


def test_no_cuda_says_so(capsys):
    if torch.cuda.is_available():
        pytest.skip("has a GPU")
    assert _tool().main([]) == 2
    assert "needs a CUDA device" in capsys.readouterr().out
