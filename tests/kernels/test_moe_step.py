"""The decode step's routed MoE experts in two launches (``moe_decode_experts``) against the naive reference (the
MoE layer's own gather form) in fp64 and in the inputs' dtype, on awkward shapes (d_model and d_ff not multiples of
the tiles, one token, top-1 and top-2, two tokens on the same expert); the dispatch; the custom op under
``torch.compile``; and an MoE layer's decode output with ``DECODE_EXPERTS`` "kernel" against "reductions". The same
for routing and experts together (``moe_decode_step``, ``DECODE_EXPERTS`` "fused"): output and routing against the
layer's sequence, ties in the router's logits as ``topk_by_max`` breaks them. Without a GPU the kernels run in
Triton's interpreter on CPU tensors.
"""

from __future__ import annotations

import pytest
import torch

import archzoo.kernels as K
from archzoo.kernels import _dispatch
from archzoo.kernels._testing import import_triton_kernels, rel_err
from archzoo.kernels.moe_step import naive_moe_decode_experts, naive_moe_decode_step, naive_moe_route, topk_by_max
from archzoo.layers import moe as moe_mod

from conftest import compiled_steps, graph_replayed, interpreter_only, recording_backend, requires_cuda

_mods, _skip = import_triton_kernels("archzoo.kernels.moe_step.triton")
pytestmark = pytest.mark.skipif(_skip is not None, reason=_skip or "")
T = _mods[0] if _mods else None
DEV = "cuda" if torch.cuda.is_available() else "cpu"


def _inputs(N, D, F, E, top_k, dtype, seed=0, device=DEV):
    g = torch.Generator().manual_seed(seed)
    rn = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    x = rn(N, D)
    gate, up, down = rn(E, F, D) / D**0.5, rn(E, F, D) / D**0.5, rn(E, D, F) / F**0.5
    top_e = torch.stack([torch.randperm(E, generator=g)[:top_k] for _ in range(N)])
    if N > 1:
        top_e[1, 0] = top_e[0, 0]  # two tokens on one expert
    top_w = torch.rand(N, top_k, generator=g).softmax(-1)
    t = [x, gate, up, down]
    return [v.to(device, dtype) for v in t] + [top_e.to(device), top_w.to(device, dtype)]


def _traced(*calls):
    """Each (fn, args) compiled whole and called -> (outputs, the call targets of every graph traced)."""
    graphs: list[list[str]] = []
    backend = recording_backend(graphs)
    torch._dynamo.reset()
    outs = tuple(torch.compile(fn, backend=backend, fullgraph=True)(*args) for fn, args in calls)
    torch._dynamo.reset()
    return outs, [t for g in graphs for t in g]


def _check(name, got, want, tol):
    err = rel_err(got, want)
    assert err <= tol, f"{name}: relative error {err:.2e} > {tol:.0e}"


CASES = [  # N, D, F, E, top_k, dtype
    (1, 40, 56, 4, 2, torch.float32),
    (1, 40, 56, 8, 1, torch.float32),
    (3, 24, 72, 8, 2, torch.float32),
    (1, 40, 56, 4, 2, torch.bfloat16),
    (2, 33, 40, 8, 2, torch.bfloat16),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "N{}-D{}-F{}-E{}-k{}-{}".format(*c[:5], str(c[5])[6:]))
def test_matches_reference(case):
    """The kernels' output against the reference in fp64 (the truth) and in the inputs' dtype (the layer's
    roundings: bf16 between the projections)."""
    *shape, dtype = case
    args = _inputs(*shape, dtype)
    got = T.moe_decode_experts(*args)
    assert got.shape == (shape[0], shape[1]) and got.dtype == dtype
    exact = naive_moe_decode_experts(*[a.double() if a.is_floating_point() else a for a in args])
    layer = naive_moe_decode_experts(*args)  # the layer's form in the inputs' dtype (bf16 products rounded too)
    if dtype == torch.float32:
        _check("out vs fp64 reference", got.double(), exact, 2e-6)
        _check("out vs reference in its dtype", got, layer, 2e-6)
    else:  # bf16 roundings between the projections, to nearest even: as close to the truth as the layer's form
        _check("out vs fp64 reference", got.double(), exact, 8e-3)
        _check("out vs reference in its dtype", got, layer, 1e-2)
        assert rel_err(got.double(), exact) <= 1.25 * rel_err(layer.double(), exact) + 1e-3


def test_strided_x_and_int32_experts(monkeypatch):
    """x a strided view (a column slice of a wider tensor) and int32 expert indices, with several tiles a row."""
    monkeypatch.setattr(T, "CONFIG_OVERRIDE", dict(BLOCK_D=8, DOWN_BLOCK_F=8))
    x, g, u, d, e, w = _inputs(2, 40, 56, 8, 2, torch.float32)
    wide = torch.randn(2, 100, device=DEV)
    wide[:, 30:70] = x
    got = T.moe_decode_experts(wide[:, 30:70], g, u, d, e.int(), w)
    _check("strided x", got, naive_moe_decode_experts(x, g, u, d, e, w), 2e-6)


def test_down_blocks_fill_the_gpu():
    """The down kernel's rows a program halve while its programs are few (batch 1), not below the minimum."""
    cfg = T.INTERPRET_CONFIG  # 4 "SMs", 2 programs each: 8 programs aimed at
    assert (cfg["DOWN_BLOCK_N"], cfg["DOWN_MIN_BLOCK_N"]) == (8, 2)
    assert T.down_block_n(1, 16, torch.device("cpu")) == 2, "2 programs of 8 rows -> 8 of 2: halved twice"
    assert T.down_block_n(1, 40, torch.device("cpu")) == 4, "5 programs of 8 rows -> 10 of 4"
    assert T.down_block_n(16, 64, torch.device("cpu")) == 8, "128 programs already: not halved"


def test_bad_input():
    x, g, u, d, e, w = _inputs(2, 16, 24, 4, 2, torch.float32, device="cpu")
    with pytest.raises(ValueError, match="down_w must be"):
        K.moe_decode_experts(x, g, u, d.transpose(1, 2), e, w)
    with pytest.raises(ValueError, match="top_w must be"):
        K.moe_decode_experts(x, g, u, d, e, w[:, :1])
    with pytest.raises(ValueError, match="top_e must be"):
        K.moe_decode_experts(x, g, u, d, e.float(), w)
    with pytest.raises(ValueError, match="gate_w must have x's dtype"):
        K.moe_decode_experts(x, g.double(), u, d, e, w)


@interpreter_only
def test_dispatch_and_the_custom_op(monkeypatch):
    """CPU tensors: the naive reference without the interpreter, the kernels with it; float64 always the reference;
    under torch.compile(fullgraph=True) the custom op, with the eager result."""
    args = _inputs(1, 40, 56, 4, 2, torch.float32, device="cpu")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    ref = K.moe_decode_experts(*args)
    assert K.last_backend("moe_decode_experts") == "naive"
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    got = K.moe_decode_experts(*args)
    assert K.last_backend("moe_decode_experts") == "triton"
    _check("interpreted vs naive", got, ref, 2e-6)
    K.moe_decode_experts(*[a.double() if a.is_floating_point() else a for a in args])
    assert K.last_backend("moe_decode_experts") == "naive"
    (traced,), targets = _traced((lambda *a: K.moe_decode_experts(*a) * 2, args))
    assert any("moe_decode_experts" in t for t in targets), targets
    _check("traced", traced, 2 * got, 2e-6)


@interpreter_only
@pytest.mark.parametrize("n_experts, top_k, tokens", [(4, 2, 1), (8, 2, 3)])
def test_layer_decode_kernel_matches_reductions(n_experts, top_k, tokens, monkeypatch):
    """An MoE layer's decode output (no gradients, few tokens: the static gather branch) with
    ``DECODE_EXPERTS = "kernel"`` equals the "reductions" form, and the kernel ran; an unknown form is an error."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    cfg = moe_mod.MoEConfig(type="moe", n_experts=n_experts, top_k=top_k, d_ff=48)
    torch.manual_seed(0)
    layer = moe_mod.MoE.from_config(cfg, 40).eval()
    x = torch.randn(tokens, 1, 40)
    with torch.no_grad():
        ref = layer(x)
        monkeypatch.setattr(moe_mod, "DECODE_EXPERTS", "kernel")
        _dispatch.record("moe_decode_experts", "none")
        got = layer(x)
        assert K.last_backend("moe_decode_experts") == "triton" and layer.last_dispatch == "static"
        _check("layer, kernel vs reductions", got, ref, 2e-6)
        monkeypatch.setattr(moe_mod, "DECODE_EXPERTS", "fuse")
        with pytest.raises(ValueError, match="DECODE_EXPERTS must be one of reductions, kernel, fused"):
            layer(x)


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("n_experts, tokens", [(4, 1), (8, 1), (8, 3)])
def test_cuda_student_shapes_bf16(n_experts, tokens):
    """bf16 at the Jamba / MoE students' shapes (d_model 576, d_ff 1,536, top-2): against the fp64 reference and
    the layer's bf16 form; two calls agree to the bit, and a CUDA-graph replay gives the eager result."""
    args = _inputs(tokens, 576, 1536, n_experts, 2, torch.bfloat16, device="cuda")
    got = K.moe_decode_experts(*args)
    assert K.last_backend("moe_decode_experts") == "triton"
    exact = naive_moe_decode_experts(*[a.double() if a.is_floating_point() else a for a in args])
    _check("vs fp64", got.double(), exact, 1e-2)
    _check("vs the layer's bf16 form", got, naive_moe_decode_experts(*args), 1e-2)
    assert torch.equal(got, K.moe_decode_experts(*args)), "two calls must agree to the bit"
    out, _graph = graph_replayed(lambda: K.moe_decode_experts(*args))
    assert torch.equal(out, got), "a CUDA-graph replay must give the eager result"


@interpreter_only
def test_moe_model_generates_the_same_tokens(monkeypatch):
    """Greedy generation of a tiny MoE model at batch 1 (its steps take the static gather branch): the same tokens
    with ``DECODE_EXPERTS`` "kernel" and "fused" (their kernels ran) as with "reductions"."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    model = _tiny_moe_model(seed=0)
    prompt = torch.randint(0, 64, (1, 5), generator=torch.Generator().manual_seed(0))
    out = {}
    ops = {"kernel": "moe_decode_experts", "fused": "moe_decode_step"}
    for form in ("kernel", "fused", "reductions"):
        monkeypatch.setattr(moe_mod, "DECODE_EXPERTS", form)
        for op in ops.values():
            _dispatch.record(op, "none")
        out[form] = model.generate(prompt, 6)
        for f, op in ops.items():
            assert K.last_backend(op) == ("triton" if f == form else "none"), (form, op)
    for form in ("kernel", "fused"):
        assert torch.equal(out[form], out["reductions"]), (
            f"{form}: {out[form].tolist()} != {out['reductions'].tolist()}"
        )


@interpreter_only
@pytest.mark.parametrize("form, op", [("kernel", "moe_decode_experts"), ("fused", "moe_decode_step")])
def test_compiled_step_traces_once_with_the_kernel(form, op, monkeypatch):
    """``torch.compile(step, fullgraph=True)`` of a tiny MoE model's decode step at batch 1 traces once over
    consecutive steps with ``DECODE_EXPERTS = "kernel"`` or "fused" (the custom op in the graph, once a layer; with
    "fused" no router product or routing ops besides it), with the eager step's logits (the decode contract,
    tests/test_decode_capture.py)."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(moe_mod, "DECODE_EXPERTS", form)
    torch._dynamo.reset()
    model = _tiny_moe_model(seed=1)
    ids = torch.randint(0, 64, (1, 9), generator=torch.Generator().manual_seed(1))
    cache = model.new_cache(1, 9, dtype=torch.float32)
    graphs: list[list[str]] = []
    calls = ("call_function", "call_method")
    for i, got, ref, _ in compiled_steps(model, ids, cache, 5, recording_backend(graphs, calls)):
        _check(f"step {i} logits", got, ref, 1e-5)
    torch._dynamo.reset()
    assert len(graphs) == 1, f"{len(graphs)} graphs: one over the 4 steps"
    assert sum(op in t for t in graphs[0]) == 2, graphs[0]
    routing = {"softmax", "max", "scatter"}  # the router's softmax and topk_by_max's passes (method calls)
    # "kernel": the routing is traced around the op; "fused": it is inside the op
    assert (routing <= set(graphs[0])) == (form == "kernel"), graphs[0]


# ---- moe_decode_step: the routing and the experts together ("fused") ----


def _step_inputs(N, D, F, E, top_k, dtype, bias=False, seed=0, device=DEV):
    """x, router_w, router_b (or None), gate_w, up_w, down_w: router logits of order 1, so the routing varies."""
    x, gate, up, down = _inputs(N, D, F, E, top_k, dtype, seed, device)[:4]
    g = torch.Generator().manual_seed(seed + 1)
    router_w = (torch.randn(E, D, generator=g) * (2 / D**0.5)).to(device, dtype)
    router_b = (0.5 * torch.randn(E, generator=g)).to(device, dtype) if bias else None
    return x, router_w, router_b, gate, up, down


STEP_CASES = [  # N, D, F, E, top_k, norm_topk_prob, bias, dtype
    (1, 40, 56, 4, 2, True, False, torch.float32),
    (1, 40, 56, 8, 1, True, False, torch.float32),
    (3, 24, 72, 8, 2, False, True, torch.float32),
    (3, 33, 40, 8, 1, False, False, torch.float32),
    (1, 40, 56, 8, 2, False, True, torch.float32),
    (3, 40, 56, 4, 1, True, True, torch.float32),
    (1, 40, 56, 4, 2, True, True, torch.bfloat16),
    (3, 33, 40, 8, 2, True, False, torch.bfloat16),
    (3, 24, 72, 8, 1, False, True, torch.bfloat16),
]


@pytest.mark.parametrize(
    "case", STEP_CASES, ids=lambda c: "N{}-D{}-F{}-E{}-k{}-norm{:d}-bias{:d}-{}".format(*c[:7], str(c[7])[6:])
)
def test_step_matches_reference(case):
    """Routing and experts in the two kernels against the layer's sequence (``naive_moe_decode_step``): the same
    experts, the routing weights to fp32 round-off, the output as ``moe_decode_experts``' against the fp64 truth (the
    experts in fp64 with the kernels' routing) and against the reference in the inputs' dtype."""
    N, D, F, E, k, norm, bias, dtype = case
    args = _step_inputs(N, D, F, E, k, dtype, bias)
    got, top_w, top_e = T.moe_decode_step_routing(*args, k, norm)
    assert got.shape == (N, D) and got.dtype == dtype
    assert top_w.dtype == torch.float32 and top_e.dtype == torch.int32
    ref_p, ref_e = naive_moe_route(*args[:3], k, norm)
    assert torch.equal(top_e.long(), ref_e), f"experts {top_e.tolist()} != {ref_e.tolist()}"
    _check("routing weights", top_w, ref_p, 1e-6)
    ref = naive_moe_decode_step(*args, k, norm)
    x, _, _, gate, up, down = args
    exact = naive_moe_decode_experts(*(a.double() for a in (x, gate, up, down)), ref_e, top_w.to(dtype).double())
    if dtype == torch.float32:
        _check("out vs fp64 experts", got.double(), exact, 2e-6)
        _check("out vs reference in its dtype", got, ref, 2e-6)
    else:
        _check("out vs fp64 experts", got.double(), exact, 8e-3)
        _check("out vs reference in its dtype", got, ref, 1e-2)
        assert rel_err(got.double(), exact) <= 1.25 * rel_err(ref.double(), exact) + 1e-3


@pytest.mark.parametrize(
    "N, D, E, top_k, dtype, residual, one_tile",
    [(1, 40, 4, 2, torch.float32, True, False), (3, 33, 8, 2, torch.float32, False, False),
     (3, 37, 8, 3, torch.float32, True, True), (1, 40, 8, 2, torch.bfloat16, True, True),
     (3, 33, 4, 1, torch.bfloat16, True, False)],
)  # fmt: skip
def test_step_with_the_blocks_norm_and_residual(N, D, E, top_k, dtype, residual, one_tile, monkeypatch):
    """``norm_weight`` / ``residual``: the block's RMSNorm of x computed in the first kernel and its residual add in
    the second equal ``residual + moe_decode_step(RMSNorm(x))`` (the reference's two extra kernels): the same
    experts chosen; fp32 to round-off, bf16 to its rounding (d_model off the tiles, several tokens, top-1/2/3). The
    rms from its own pass over x (several router tiles a row) and from the router's one tile (``one_tile``: the
    students' shapes on a GPU)."""
    from archzoo.kernels.decode_linear.naive import rms_norm

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setitem(T.CONFIG_OVERRIDE, "ROUTER_TILE", 1024 if one_tile else 64)
    assert (T.router_block(E, D, torch.device(DEV))[1] >= D) == one_tile
    args = _step_inputs(N, D, 48, E, top_k, dtype, bias=True)
    x = args[0] * 3.0  # a residual stream of larger scale than the normed input
    g = torch.Generator().manual_seed(7)
    nw = (1 + 0.2 * torch.randn(D, generator=g)).to(DEV, dtype)
    res = torch.randn(N, D, generator=g).to(DEV, dtype) if residual else None
    got, _, top_e = T.moe_decode_step_routing(x, *args[1:], top_k, True, nw, 1e-5, res)
    normed = rms_norm(x, nw, 1e-5)
    assert torch.equal(top_e.long(), naive_moe_route(normed, *args[1:3], top_k, True)[1])
    want = naive_moe_decode_step(normed, *args[1:], top_k, True)
    want = want if res is None else res + want
    _check("norm + residual fused vs outside", got, want, 2e-6 if dtype == torch.float32 else 1e-2)
    naive = naive_moe_decode_step(x, *args[1:], top_k, True, nw, 1e-5, res)
    _check("naive with norm + residual vs outside", naive, want, 0.0)
    assert torch.equal(K.moe_decode_step(x, *args[1:], top_k, True, nw, 1e-5, res), got)
    assert K.last_backend("moe_decode_step") == "triton"
    with pytest.raises(ValueError, match="norm_weight must be"):
        K.moe_decode_step(x, *args[1:], top_k, True, nw[:-1], 1e-5, res)
    with pytest.raises(ValueError, match="residual must be"):
        K.moe_decode_step(x, *args[1:], top_k, True, nw, 1e-5, x[:, :-1])
    with pytest.raises(ValueError, match="norm_weight must have x's dtype"):
        K.moe_decode_step(x, *args[1:], top_k, True, nw.double(), 1e-5, res)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_step_ties_go_to_the_lowest_index(dtype):
    """Equal router logits (equal router rows): each max pass takes the lowest index, as ``topk_by_max``. Experts 2
    and 5 tie for first and 1 and 6 for third; all-zero logits take experts 0, 1, 2 (uniform weights)."""
    N, D, F, E, k = 3, 24, 40, 8, 3
    x, router_w, _, gate, up, down = _step_inputs(N, D, F, E, k, torch.float32)
    router_w = 0.1 * router_w
    x[2] = 0.0  # token 2: every logit 0
    for hi, lo, boost in ((5, 2, 1.0), (6, 1, 0.5)):
        router_w[lo] = router_w[lo] + boost * x[0] / x[0].norm() ** 2
        router_w[hi] = router_w[lo]
    args = [a.to(dtype) for a in (x, router_w)]
    args = [*args, None, *(a.to(dtype) for a in (gate, up, down))]
    got, top_w, top_e = T.moe_decode_step_routing(*args, k, True)
    logits = torch.nn.functional.linear(args[0], args[1]).float()
    assert logits[0, 2] == logits[0, 5] and logits[0, 1] == logits[0, 6], "the test's ties"
    _, want = topk_by_max(logits.softmax(-1), k)
    assert top_e[0].tolist() == [2, 5, 1] and top_e[2].tolist() == [0, 1, 2]
    assert torch.equal(top_e.long(), want), f"{top_e.tolist()} != topk_by_max's {want.tolist()}"
    assert torch.equal(top_w[2], torch.full((k,), 1 / k)), top_w[2].tolist()
    _check("out with ties", got, naive_moe_decode_step(*args, k, True), 2e-6 if dtype == torch.float32 else 1e-2)


def test_step_strided_x_several_tiles(monkeypatch):
    """x a column slice of a wider tensor, a router wider than one tile (E = 8: 8 columns a tile of 64 elements)."""
    monkeypatch.setattr(T, "CONFIG_OVERRIDE", dict(BLOCK_D=8, DOWN_BLOCK_F=8))
    x, rw, rb, g, u, d = _step_inputs(2, 40, 56, 8, 2, torch.float32, bias=True)
    assert T.router_block(8, 40, torch.device("cpu")) == (8, 16)
    wide = torch.randn(2, 100, device=DEV)
    wide[:, 30:70] = x
    got = T.moe_decode_step(wide[:, 30:70], rw, rb, g, u, d, 2, True)
    _check("strided x", got, naive_moe_decode_step(x, rw, rb, g, u, d, 2, True), 2e-6)


def test_step_bad_input():
    x, rw, rb, g, u, d = _step_inputs(2, 16, 24, 4, 2, torch.float32, bias=True, device="cpu")
    with pytest.raises(ValueError, match="router_w must be"):
        K.moe_decode_step(x, rw.t(), rb, g, u, d, 2, True)
    with pytest.raises(ValueError, match="router_b must be"):
        K.moe_decode_step(x, rw, rb[:3], g, u, d, 2, True)
    with pytest.raises(ValueError, match="gate_w must be"):
        K.moe_decode_step(x, rw, rb, g[:3], u, d, 2, True)
    with pytest.raises(ValueError, match="down_w must be"):
        K.moe_decode_step(x, rw, rb, g, u, d.transpose(1, 2), 2, True)
    with pytest.raises(ValueError, match="top_k must be"):
        K.moe_decode_step(x, rw, rb, g, u, d, 5, True)
    with pytest.raises(ValueError, match="router_w must have x's dtype"):
        K.moe_decode_step(x, rw.double(), rb, g, u, d, 2, True)


@interpreter_only
def test_step_dispatch_and_the_custom_op(monkeypatch):
    """CPU tensors: the naive reference without the interpreter, the kernels with it; float64 and no tokens the
    reference; under torch.compile(fullgraph=True) the custom op (router bias None too), with the eager result."""
    args = _step_inputs(1, 40, 56, 4, 2, torch.float32, bias=True, device="cpu")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    ref = K.moe_decode_step(*args, 2, True)
    assert K.last_backend("moe_decode_step") == "naive"
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    got = K.moe_decode_step(*args, 2, True)
    assert K.last_backend("moe_decode_step") == "triton"
    _check("interpreted vs naive", got, ref, 2e-6)
    K.moe_decode_step(*[a.double() if a is not None else a for a in args], 2, True)
    assert K.last_backend("moe_decode_step") == "naive"
    assert K.moe_decode_step(args[0][:0], *args[1:], 2, True).shape == (0, 40)
    assert K.last_backend("moe_decode_step") == "naive"
    fn = lambda *a: K.moe_decode_step(*a, 2, True) * 2  # noqa: E731
    (traced, no_bias), targets = _traced((fn, args), (fn, (args[0], args[1], None, *args[3:])))
    assert sum("moe_decode_step" in t for t in targets) == 2, targets
    _check("traced", traced, 2 * got, 2e-6)
    _check("traced, no bias", no_bias, 2 * naive_moe_decode_step(args[0], args[1], None, *args[3:], 2, True), 2e-6)


@interpreter_only
@pytest.mark.parametrize(
    "n_experts, top_k, tokens, norm, shared", [(4, 2, 1, True, 0), (8, 2, 3, False, 1), (8, 1, 3, True, 0)]
)
def test_layer_decode_fused_matches_reductions(n_experts, top_k, tokens, norm, shared, monkeypatch):
    """An MoE layer's decode output (no gradients, few tokens) with ``DECODE_EXPERTS = "fused"`` equals "reductions"
    in fp32, the routing and experts in moe_decode_step (the kernels ran; shared experts added after); with
    N x top_k >= n_experts the static path's dense branch runs as before, not the kernels."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    cfg = moe_mod.MoEConfig(type="moe", n_experts=n_experts, top_k=top_k, d_ff=48, norm_topk_prob=norm,
                            n_shared_experts=shared)  # fmt: skip
    torch.manual_seed(0)
    layer = moe_mod.MoE.from_config(cfg, 40).eval()
    with torch.no_grad():
        layer.router.weight.mul_(8)  # logits of a few units: routing weights far from uniform
        x = torch.randn(tokens, 1, 40)
        ref = layer(x)
        monkeypatch.setattr(moe_mod, "DECODE_EXPERTS", "fused")
        _dispatch.record("moe_decode_step", "none")
        got = layer(x)
        assert K.last_backend("moe_decode_step") == "triton" and layer.last_dispatch == "static"
        assert layer.last_decode_experts == "fused"
        _check("layer, fused vs reductions", got, ref, 2e-6)
        _dispatch.record("moe_decode_step", "none")
        many = torch.randn(n_experts, 1, 40)  # N x top_k >= n_experts: every expert on every token
        monkeypatch.setattr(moe_mod, "DECODE_EXPERTS", "reductions")
        want = layer(many)
        monkeypatch.setattr(moe_mod, "DECODE_EXPERTS", "fused")
        _check("layer, dense branch", layer(many), want, 0.0)
        assert K.last_backend("moe_decode_step") == "none" and layer.last_decode_experts == "dense"


@pytest.mark.parametrize("shared, dtype", [(0, torch.float32), (1, torch.float32), (0, torch.bfloat16)])
def test_layer_takes_the_blocks_norm_and_residual(shared, dtype, monkeypatch, caplog):
    """``MoE(x, norm=, residual=)`` (what model.Block hands it on a fused decode step) equals ``residual +
    MoE(norm(x))``: inside moe_decode_step's kernels without shared experts, as modules with them (the shared
    experts' sum would change the additions' order); a training forward as modules, differentiable."""
    from archzoo.layers.norm import RMSNorm

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(moe_mod, "DECODE_EXPERTS", "fused")
    cfg = moe_mod.MoEConfig(type="moe", n_experts=8, top_k=2, d_ff=48, n_shared_experts=shared)
    torch.manual_seed(0)
    layer = moe_mod.MoE.from_config(cfg, 40).eval().to(dtype)
    norm = RMSNorm(40).to(dtype)
    with torch.no_grad():
        layer.router.weight.mul_(8)
        norm.weight.copy_(1 + 0.2 * torch.randn(40))
        x, res = 3 * torch.randn(1, 1, 40, dtype=dtype), torch.randn(1, 1, 40, dtype=dtype)
        want = res + layer(norm(x))
        _dispatch.record("moe_decode_step", "none")
        with caplog.at_level("WARNING", logger="archzoo.kernels"):
            got = layer(x, norm=norm, residual=res)
        assert K.last_backend("moe_decode_step") == "triton" and layer.last_decode_experts == "fused"
        outside = "the block's norm and add run outside its kernels: its shared experts' sum" in caplog.text
        assert outside == bool(shared), caplog.text  # the fallback says why
        _check("norm + residual in the layer", got, want, 2e-6 if dtype == torch.float32 else 1e-2)
        _check("residual alone", layer(x, residual=res), res + layer(x), 2e-6 if dtype == torch.float32 else 1e-2)
        with pytest.raises(ValueError, match="residual must have x's shape"):
            layer(x, norm=norm, residual=res[..., :-1])
    xg = x.clone().requires_grad_()  # a training forward: modules, differentiable
    out = layer(xg, norm=norm, residual=res)
    out.sum().backward()
    assert xg.grad is not None and layer.last_decode_experts is None


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("n_experts, tokens", [(4, 1), (8, 1), (8, 3)])
def test_cuda_step_student_shapes_bf16(n_experts, tokens, monkeypatch):
    """``moe_decode_step`` in bf16 at the Jamba / MoE students' shapes (d_model 576, d_ff 1,536, top-2, weights
    renormalised): the layer's experts and weights, the output against the fp64 experts and the layer's bf16 form;
    two calls agree to the bit, a CUDA-graph replay gives the eager result, and so does a launch without PDL."""
    from archzoo.kernels import _pdl

    args = _step_inputs(tokens, 576, 1536, n_experts, 2, torch.bfloat16, device="cuda")
    got = K.moe_decode_step(*args, 2, True)
    assert K.last_backend("moe_decode_step") == "triton"
    out, top_w, top_e = T.moe_decode_step_routing(*args, 2, True)
    ref_p, ref_e = naive_moe_route(*args[:3], 2, True)
    assert torch.equal(top_e.long(), ref_e), f"experts {top_e.tolist()} != {ref_e.tolist()}"
    _check("routing weights", top_w, ref_p, 1e-5)
    x, _, _, gate, up, down = args
    exact = naive_moe_decode_experts(*(a.double() for a in (x, gate, up, down)), ref_e, top_w.to(x.dtype).double())
    _check("vs fp64", got.double(), exact, 1e-2)
    _check("vs the layer's bf16 form", got, naive_moe_decode_step(*args, 2, True), 1e-2)
    assert torch.equal(got, out) and torch.equal(got, K.moe_decode_step(*args, 2, True)), "calls must agree to the bit"
    replayed, _graph = graph_replayed(lambda: K.moe_decode_step(*args, 2, True))
    assert torch.equal(replayed, got), "a CUDA-graph replay must give the eager result"
    monkeypatch.setattr(_pdl, "ENABLED", False)
    assert torch.equal(K.moe_decode_step(*args, 2, True), got), "without PDL: the same bits"
    monkeypatch.setattr(_pdl, "ENABLED", True)
    # the block's RMSNorm and residual add inside the two kernels: residual + step(RMSNorm(x)), graph-replayable
    from archzoo.kernels.decode_linear.naive import rms_norm

    g = torch.Generator().manual_seed(3)
    xs = 3 * x
    nw = (1 + 0.2 * torch.randn(576, generator=g)).to("cuda", torch.bfloat16)
    res = torch.randn(tokens, 576, generator=g).to("cuda", torch.bfloat16)
    fused = K.moe_decode_step(xs, *args[1:], 2, True, nw, 1e-5, res)
    _check(
        "norm + residual inside", fused, res + naive_moe_decode_step(rms_norm(xs, nw, 1e-5), *args[1:], 2, True), 1e-2
    )
    replayed, _graph = graph_replayed(lambda: K.moe_decode_step(xs, *args[1:], 2, True, nw, 1e-5, res))
    assert torch.equal(replayed, fused), "norm + residual: a CUDA-graph replay must give the eager result"


def _tiny_moe_model(seed: int):
    """Two attention layers with MoE feed-forwards (4 experts, top-2): a batch-1 step takes the gather branch."""
    import archzoo

    cfg = dict(vocab_size=64, d_model=40, n_layers=2, tie_embeddings=True,
               mixer=dict(type="attention", n_heads=2, n_kv_heads=1, head_dim=16),
               ffn=dict(type="moe", n_experts=4, top_k=2, d_ff=48))  # fmt: skip
    torch.manual_seed(seed)
    return archzoo.build_model(cfg).eval()
