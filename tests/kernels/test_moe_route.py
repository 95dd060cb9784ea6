"""``moe_route`` (the MoE layer's routing of many tokens and the grouped plan's counts in one launch) against its
reference (``MoE.forward``'s sequence) on awkward shapes: one token, token counts off the plan's chunks, experts not
a power of 2, top-1 / 2 / 3, a router bias, with and without renormalisation, fp32 and bf16; the counts against the
plan's own count launch; every gradient against autograd through the reference; the custom op under opcheck; bad
inputs; the reference where the kernel does not run. Without a GPU the kernel runs in Triton's interpreter on CPU
tensors; the GPU test takes the students' shape (4,096 tokens, d_model 576, 8 experts, top-2, bf16).
"""

from __future__ import annotations

import logging

import pytest
import torch

import archzoo.kernels as K
from archzoo.kernels._testing import import_triton_kernels, rel_err

from conftest import graph_replayed, requires_cuda

_mods, _skip = import_triton_kernels(
    "archzoo.kernels.moe_grouped.triton", "archzoo.kernels.moe_grouped.backward", "archzoo.kernels.moe_grouped.route"
)
pytestmark = pytest.mark.skipif(_skip is not None, reason=_skip or "")
DEV = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(autouse=True)
def kernels_env(monkeypatch):
    """The kernels run here: on CPU tensors under Triton's interpreter."""
    if DEV == "cpu":
        monkeypatch.setenv("TRITON_INTERPRET", "1")


def _inputs(N, D, E, dtype, bias=False, seed=0, device=DEV):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, D, generator=g)
    w = torch.randn(E, D, generator=g) / D**0.5
    b = torch.randn(E, generator=g) * 0.1 if bias else None
    return x.to(device, dtype), w.to(device, dtype), None if b is None else b.to(device, dtype)


CASES = [  # N, D, E, top_k, norm, bias, dtype
    (1, 16, 3, 1, True, False, torch.float32),  # one token, top-1
    (13, 20, 4, 2, True, False, torch.float32),  # N off the plan's chunk, D off the router tile
    (37, 24, 5, 3, False, True, torch.float32),  # top-3, 5 experts, a bias, no renormalisation
    (9, 40, 8, 2, True, True, torch.bfloat16),
    (70, 24, 6, 2, True, False, torch.bfloat16),  # several chunks (8 assignments each under the interpreter)
]
IDS = ["N{}-D{}-E{}-k{}-norm{}-bias{}-{}".format(*c[:6], str(c[6])[6:]) for c in CASES]


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_matches_reference_and_the_plans_counts(case):
    """top_e equal to the reference's, top_w within a rounding of it; the counts those of the plan's count launch,
    so the plan from them is the plan; the experts given the counts give the same bits as without."""
    from archzoo.kernels.moe_grouped import triton as T
    from archzoo.kernels.moe_grouped.routing import reference_route

    N, D, E, k, norm, bias, dtype = case
    x, w, b = _inputs(N, D, E, dtype, bias)
    top_w, top_e, counts = K.moe_route(x, w, b, k, norm)
    assert K.last_backend("moe_route") == "triton"
    assert top_w.dtype == dtype and top_e.dtype == torch.int32 and top_w.shape == top_e.shape == (N, k)
    ref_w, ref_e = reference_route(x, w, b, k, norm)
    assert torch.equal(top_e, ref_e), (top_e, ref_e)
    assert rel_err(top_w, ref_w) <= (1e-6 if dtype == torch.float32 else 1e-2), rel_err(top_w, ref_w)
    assert all(torch.equal(a, c) for a, c in zip(T.plan(top_e, E, counts), T.plan(top_e, E), strict=True))
    g = torch.Generator().manual_seed(1)
    gate = (torch.randn(E, 12, D, generator=g) / D**0.5).to(DEV, dtype)
    up = (torch.randn(E, 12, D, generator=g) / D**0.5).to(DEV, dtype)
    down = (torch.randn(E, D, 12, generator=g) / 12**0.5).to(DEV, dtype)
    want = K.moe_grouped_experts(x, gate, up, down, top_e, top_w)
    assert torch.equal(K.moe_grouped_experts(x, gate, up, down, top_e, top_w, counts=counts), want)


@pytest.mark.parametrize("case", CASES[1:4], ids=IDS[1:4])
def test_gradients_match_autograd_through_the_reference(case):
    """dx, drouter_w and drouter_b from moe_route's formula against autograd through the reference (the same
    chosen experts), for a random gradient of top_w."""
    from archzoo.kernels.moe_grouped.routing import reference_route

    N, D, E, k, norm, bias, dtype = case
    x, w, b = _inputs(N, D, E, dtype, bias)
    dout = torch.randn(N, k, generator=torch.Generator().manual_seed(2)).to(DEV, dtype)
    grads = []
    for fn in (lambda *a: K.moe_route(*a, k, norm)[0], lambda *a: reference_route(*a, k, norm)[0]):
        leaves = [t.clone().requires_grad_() if t is not None else None for t in (x, w, b)]
        out = fn(*leaves)
        grads.append(torch.autograd.grad(out, [t for t in leaves if t is not None], dout))
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    for name, got, want in zip(("dx", "drouter_w", "drouter_b"), *grads, strict=False):
        assert rel_err(got, want) <= tol, f"{name}: relative error {rel_err(got, want):.2e}"


@pytest.mark.parametrize("case", CASES[1:4], ids=IDS[1:4])
def test_logits_and_their_gradient(case):
    """``return_logits``: the router's logits as the layer holds them (F.linear in x's dtype, widened to fp32), and the
    gradients of top_w and the logits together (the layer's losses take the logits) against autograd through the
    layer's sequence with the same chosen experts; the reference (float64) returns the same four."""
    from archzoo.kernels.moe_step.naive import route

    N, D, E, k, norm, bias, dtype = case
    x, w, b = _inputs(N, D, E, dtype, bias)
    gen = torch.Generator().manual_seed(4)
    dtop = torch.randn(N, k, generator=gen).to(DEV, dtype)
    dlog = torch.randn(N, E, generator=gen).to(DEV)
    leaves = [t.clone().requires_grad_() if t is not None else None for t in (x, w, b)]
    top_w, top_e, counts, logits = K.moe_route(*leaves, k, norm, return_logits=True)
    assert counts is not None and logits.dtype == torch.float32 and logits.shape == (N, E)
    got = torch.autograd.grad(
        (top_w.float() * dtop.float()).sum() + (logits * dlog).sum(), [t for t in leaves if t is not None]
    )
    ref_leaves = [t.clone().requires_grad_() if t is not None else None for t in (x, w, b)]
    ref_logits = torch.nn.functional.linear(*ref_leaves).float()
    probs = ref_logits.softmax(-1)
    chosen = probs.gather(-1, top_e.long())
    ref_w = (chosen / chosen.sum(-1, keepdim=True) if norm else chosen).to(dtype)
    assert rel_err(logits, ref_logits.detach()) <= (1e-6 if dtype == torch.float32 else 1e-2)
    assert torch.equal(top_e.long(), route(ref_logits.detach(), k, norm)[2])  # no near-tie at these seeds
    want = torch.autograd.grad((ref_w.float() * dtop.float()).sum() + (ref_logits * dlog).sum(),
                               [t for t in ref_leaves if t is not None])  # fmt: skip
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    for name, a, c in zip(("dx", "drouter_w", "drouter_b"), got, want, strict=False):
        assert rel_err(a, c) <= tol, f"{name}: relative error {rel_err(a, c):.2e}"
    xd, wd = x.double(), w.double()
    out = K.moe_route(xd, wd, None, k, norm, return_logits=True)
    assert len(out) == 4 and out[2] is None and out[3].dtype == torch.float64


def test_route_op_passes_opcheck():
    """``torch.library.opcheck`` of the custom op (schema, fake tensors, autograd registration, AOTAutograd's trace
    against eager), with and without a bias."""
    from archzoo.kernels.moe_grouped import routing

    for bias in (False, True):
        x, w, b = _inputs(13, 20, 4, torch.float32, bias)
        leaves = [t.clone().requires_grad_() if t is not None else None for t in (x, w, b)]
        torch.library.opcheck(routing._route_op, (*leaves, 2, True))


def test_bad_input_and_the_reference_where_the_kernel_does_not_run(caplog, monkeypatch):
    monkeypatch.setattr(K._dispatch, "_LOGGED", set())
    x, w, _ = _inputs(5, 8, 4, torch.float32)
    for args, said in (((x[0], w, None, 2), "x must be"), ((x, w[:, :4], None, 2), "router_w must be"),
                       ((x, w, torch.zeros(3), 2), "router_b must be"), ((x, w, None, 5), "top_k must be"),
                       ((x, w.double(), None, 2), "x's dtype")):  # fmt: skip
        with pytest.raises(ValueError, match=said):
            K.moe_route(*args, True)
    with caplog.at_level(logging.WARNING, logger="archzoo.kernels"):
        top_w, top_e, counts = K.moe_route(x.double(), w.double(), None, 2, True)
    assert K.last_backend("moe_route") == "naive" and counts is None and top_w.dtype == torch.float64
    assert any("float64" in r.getMessage() for r in caplog.records), "the reference ran without saying why"


@pytest.mark.gpu
@requires_cuda
def test_cuda_students_shape_bf16():
    """At the students' shape in bf16: the experts of the reference (a near-tie may break the other way: at most
    0.5% of the choices differ), the weights within bf16 roundings, the plan from the counts the plan, the gradients
    near autograd's through the reference, and a CUDA-graph replay gives the eager result."""
    from archzoo.kernels.moe_grouped import triton as T
    from archzoo.kernels.moe_grouped.routing import reference_route

    x, w, _ = _inputs(4096, 576, 8, torch.bfloat16, device="cuda")
    top_w, top_e, counts = K.moe_route(x, w, None, 2, True)
    ref_w, ref_e = reference_route(x, w, None, 2, True)
    assert (top_e != ref_e).float().mean() <= 5e-3
    same = (top_e == ref_e).all(dim=1)
    assert rel_err(top_w[same], ref_w[same]) <= 1e-2
    assert all(torch.equal(a, c) for a, c in zip(T.plan(top_e, 8, counts), T.plan(top_e, 8), strict=True))
    out, _graph = graph_replayed(lambda: K.moe_route(x, w, None, 2, True)[0])
    assert torch.equal(out, top_w)


def test_routing_and_experts_compile_whole():
    """torch.compile(fullgraph=True) of the routing and the experts given its counts, on tensors requiring grad: one
    forward graph holding both custom ops and one backward graph (AOTAutograd, no inductor), with the eager output
    and gradients."""
    from torch._dynamo.backends.common import aot_autograd
    from torch._functorch.aot_autograd import make_boxed_func

    graphs: dict[str, list[str]] = {"fw": [], "bw": []}

    def recording(kind):
        def compiler(gm, example_inputs):
            graphs[kind].append(" ".join(str(n.target) for n in gm.graph.nodes))
            return make_boxed_func(gm.forward)

        return compiler

    g = torch.Generator().manual_seed(3)
    x, w, _ = _inputs(11, 16, 4, torch.float32, device="cpu")
    gate, up = torch.randn(4, 8, 16, generator=g) / 4, torch.randn(4, 8, 16, generator=g) / 4
    down = torch.randn(4, 16, 8, generator=g) / 3

    def fn(x, w, gate, up, down):
        top_w, top_e, counts = K.moe_route(x, w, None, 2, True)
        return K.moe_grouped_experts(x, gate, up, down, top_e, top_w, counts=counts)

    dout = torch.randn(11, 16, generator=g)

    def run(f):
        leaves = [t.clone().requires_grad_() for t in (x, w, gate, up, down)]
        out = f(*leaves)
        return out, torch.autograd.grad(out, leaves, dout)

    backend = aot_autograd(fw_compiler=recording("fw"), bw_compiler=recording("bw"))
    torch._dynamo.reset()
    try:
        out, grads = run(torch.compile(fn, backend=backend, fullgraph=True))
    finally:
        torch._dynamo.reset()
    assert len(graphs["fw"]) == 1 and len(graphs["bw"]) == 1, graphs
    assert "moe_route" in graphs["fw"][0] and "moe_grouped_experts_train" in graphs["fw"][0], graphs
    want_out, want = run(fn)
    assert torch.equal(out, want_out)
    for name, a, b in zip(("dx", "drouter_w", "dgate", "dup", "ddown"), grads, want, strict=True):
        assert rel_err(a, b) <= 1e-6, f"{name}: {rel_err(a, b):.2e}"
