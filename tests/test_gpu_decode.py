"""The captured decode path on CUDA: the SmolLM2-sized students, blocks compiled by inductor, the
step replayed as a CUDA graph, against eager decoding. Skipped without CUDA (run on the H200 with
`pytest -q tests/test_gpu_decode.py`)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import archzoo

from conftest import ROOT, assert_close, requires_cuda

pytestmark = [pytest.mark.gpu, requires_cuda]
STUDENTS = sorted((ROOT / "configs" / "students").glob("*.yaml"))


@pytest.fixture(autouse=True)
def _no_tf32():
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32 = old


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    """Each test compiles its own model's blocks, and every block compiles under one code object
    (``Block.forward``) whose entries dynamo caps (``allow_recompiles``: 64): eighteen students times two tests,
    plus what other GPU test files compiled in the same process, would reach the cap."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("path", STUDENTS, ids=lambda p: Path(p).stem)
def test_compiled_blocks_step_equals_eager_in_fp32(path):
    torch.manual_seed(0)
    model = archzoo.build_model(path).to("cuda").eval()
    ids = torch.randint(0, model.cfg.vocab_size, (4, 40), device="cuda")
    with torch.no_grad():
        eager_cache = model.new_cache(4, 64)
        model(ids[:, :32], cache=eager_cache)
        eager = [model(ids[:, t : t + 1], cache=eager_cache) for t in range(32, 40)]
        model.compile_step_blocks()
        cache = model.new_cache(4, 64)
        model(ids[:, :32], cache=cache)
        compiled = [model(ids[:, t : t + 1], cache=cache) for t in range(32, 40)]
    model.step_blocks = None
    for t, (a, b) in enumerate(zip(compiled, eager, strict=True)):
        assert_close(f"{Path(path).stem} step {t}", a, b, 1e-4)


@pytest.mark.parametrize("path", STUDENTS, ids=lambda p: Path(p).stem)
def test_captured_generate_matches_eager_in_fp32(path):
    torch.manual_seed(0)
    model = archzoo.build_model(path).to("cuda").eval()
    prompts = [torch.randint(0, model.cfg.vocab_size, (n,), device="cuda") for n in (5, 17, 9)]
    eager = model.generate(prompts, 12, compile=False)
    captured = model.generate(prompts, 12, compile=True)
    assert model.last_generate_stats["backend"] == "cuda_graph"
    same = sum(torch.equal(a, b) for a, b in zip(captured, eager, strict=True))
    assert same == len(prompts), f"{Path(path).stem}: {len(prompts) - same} rows differ from eager greedy decoding"
    again = model.generate(prompts, 12, compile=True)  # replays the pooled graph
    assert model.last_generate_stats["compile_s"] == 0.0
    assert all(torch.equal(a, b) for a, b in zip(again, captured, strict=True))


@pytest.mark.parametrize("name", ["mamba", "jamba"])
def test_ssm_updates_launched_with_pdl_decode_as_without(name, monkeypatch):
    """The conv and state update kernels in the PDL chain (``_pdl.UPDATE_KERNELS``, on by default since this and
    the A/B ran on an H100): captured greedy decoding in bf16 gives the tokens it gives with them outside the
    chain. A kernel reading its inputs before ``gdc_wait`` would race the GEMV before it and change tokens."""
    from archzoo.kernels import _pdl

    if not _pdl.pdl_enabled(torch.device("cuda")):  # both runs would launch the same way: nothing compared
        pytest.skip("programmatic dependent launch is off on this GPU (archzoo/kernels/_pdl.py)")

    def decode(update: bool) -> list[torch.Tensor]:
        monkeypatch.setattr(_pdl, "UPDATE_KERNELS", update)
        torch._dynamo.reset()
        torch.manual_seed(0)
        model = archzoo.build_model(ROOT / "configs" / "students" / f"{name}.yaml").to("cuda", torch.bfloat16).eval()
        prompts = [torch.randint(0, model.cfg.vocab_size, (n,), device="cuda") for n in (5, 17, 9)]
        return model.generate(prompts, 48, compile=True)

    without, with_pdl = decode(False), decode(True)
    assert all(torch.equal(a, b) for a, b in zip(with_pdl, without, strict=True))
