"""``speed.compile`` compiles each block of the student and the teacher (train/module.py). Every family of the
zoo must train through it: the loss and every gradient of a compiled forward + backward equal the eager ones.

AOT autograd with inductor's decompositions and partitioner (``aot_eager_decomp_partition``: no code generation)
is what inductor builds on, so an op or a layer pattern it cannot take fails here on the CPU, before a GPU run
of ``configs/distill/smollm2-*.yaml`` (all with ``speed.compile: true``) finds it. Not plain ``aot_eager``: it
runs the traced backward's aten ops as they are, and on the CPU ``elu_backward`` of a transposed gradient keeps
its strides where the meta function says contiguous, so the next ``view`` fails (the linear and Mamba families);
inductor decomposes those ops, as this backend does.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch._dynamo.backends.registry import lookup_backend

import archzoo
from archzoo.kernels import _dispatch

from conftest import ROOT

FAMILIES = sorted(p.stem for p in (ROOT / "configs" / "models").glob("*.yaml"))


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize(
    "family, interpret",
    [(f, False) for f in FAMILIES] + [(f, True) for f in ("based", "linear")],
)
def test_compiled_blocks_train_as_eager(family, interpret, monkeypatch):
    """interpret: BASED and linear attention through their Triton sequence kernels (Triton's interpreter on the CPU,
    as on a GPU): a compiled block runs them outside its graphs (``kernels._dispatch.outside_graphs``), as it runs
    the Mamba layer's scan and conv, which the interpreter takes minutes for at these sizes (199 s for the tiny
    Mamba model's forward)."""
    if interpret:
        from conftest import TRITON_SKIP

        if TRITON_SKIP:
            pytest.skip(TRITON_SKIP)
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    torch.manual_seed(0)
    eager = archzoo.build_model(archzoo.load_config(ROOT / "configs" / "models" / f"{family}.yaml")).train()
    compiled = copy.deepcopy(eager)
    inner = lookup_backend("aot_eager_decomp_partition")
    graphs = []

    def backend(gm, example_inputs):  # counts the graphs: a block that fell back to eager whole would pass unseen
        graphs.append(gm)
        return inner(gm, example_inputs)

    for block in compiled.blocks:
        block.compile(backend=backend)
    ids = torch.randint(0, eager.cfg.vocab_size, (2, 37))  # 37: not a multiple of any chunk or block size

    def loss_and_grads(model):
        logits = model(ids)
        loss = logits.float().logsumexp(-1).mean() - logits.float()[..., 0].mean() + model.aux_loss
        loss.backward()
        return loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}

    want_loss, want = loss_and_grads(eager)
    _dispatch._LAST_BACKEND.clear()  # what the compiled run records, not the eager one
    got_loss, got = loss_and_grads(compiled)
    assert graphs, "no block was compiled"
    torch.testing.assert_close(got_loss, want_loss, rtol=1e-5, atol=1e-6)
    if interpret:
        op = "based_attention" if family == "based" else "linear_attention"
        assert _dispatch.last_backend(op) == "triton", _dispatch.last_backend(op)
    assert sorted(got) == sorted(want)
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-5, msg=lambda m, n=name: f"{n}: {m}")
