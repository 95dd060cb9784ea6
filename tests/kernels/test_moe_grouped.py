"""The fused MoE experts for many tokens (``moe_grouped_experts``), forward and backward, against the naive reference
(its output, and its gradients by autograd) in fp64 and in the inputs' dtype, on awkward shapes (one token, token
counts and d_model / d_ff not multiples of the blocks, one expert, top-1 / 2 / 3, an expert with no tokens, every
token on one expert); dropped assignments (weight 0) adding exactly 0 and taking no gradient; the plan (sorted rows
padded per expert, the block experts, each expert's block range) against a plain sort; the naive reference against
the decode step's; bad inputs; the dispatch; the custom ops under ``torch.compile``, forward and backward. Without a
GPU the kernels run in Triton's interpreter on CPU tensors, with tiny blocks (4 rows, 16 columns); the GPU tests take
the students' shape (4,096 tokens, d_model 576, d_ff 1,536, 8 experts, top-2, bf16).
"""

from __future__ import annotations

import pytest
import torch

import archzoo.kernels as K
from archzoo.kernels._testing import import_triton_kernels, rel_err
from archzoo.kernels.moe_grouped import naive_moe_grouped_experts
from archzoo.kernels.moe_step import naive_moe_decode_experts

from conftest import graph_replayed, interpreter_only, recording_backend, requires_cuda

# backward.py too: imported here, in the interpreter's mode without a GPU (a kernel module imported later, outside
# it, would be compiled and could not call the interpreted kernels it imports)
_mods, _skip = import_triton_kernels("archzoo.kernels.moe_grouped.triton", "archzoo.kernels.moe_grouped.backward")
pytestmark = pytest.mark.skipif(_skip is not None, reason=_skip or "")
T = _mods[0] if _mods else None
DEV = "cuda" if torch.cuda.is_available() else "cpu"


def _inputs(N, D, F, E, top_k, dtype, seed=0, device=DEV, top_e=None):
    """x, gate_w, up_w, down_w, top_e (distinct experts a token unless given), top_w (softmax: sums to 1)."""
    g = torch.Generator().manual_seed(seed)
    rn = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    x = rn(N, D)
    gate, up, down = rn(E, F, D) / D**0.5, rn(E, F, D) / D**0.5, rn(E, D, F) / F**0.5
    if top_e is None:
        top_e = torch.stack([torch.randperm(E, generator=g)[:top_k] for _ in range(N)])
    top_w = torch.rand(N, top_k, generator=g).softmax(-1)
    return [v.to(device, dtype) for v in (x, gate, up, down)] + [top_e.to(device), top_w.to(device, dtype)]


def _check(name, got, want, tol):
    assert got.shape == want.shape, f"{name}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    err = rel_err(got, want)
    assert err <= tol, f"{name}: relative error {err:.2e} > {tol:.0e}"


def _against_reference(args, dtype, name=""):
    """The kernels' output against the reference in fp64 (the truth) and in the inputs' dtype (the roundings)."""
    got = T.moe_grouped_experts(*args)
    assert got.dtype == dtype
    exact = naive_moe_grouped_experts(*[a.double() if a.is_floating_point() else a for a in args])
    ref = naive_moe_grouped_experts(*args)
    if dtype == torch.float32:
        _check(f"{name}out vs fp64 reference", got.double(), exact, 2e-6)
        _check(f"{name}out vs reference in its dtype", got, ref, 2e-6)
    else:  # bf16 roundings between the projections: as close to the truth as the reference's own
        _check(f"{name}out vs fp64 reference", got.double(), exact, 8e-3)
        _check(f"{name}out vs reference in its dtype", got, ref, 1e-2)
        assert rel_err(got.double(), exact) <= 1.25 * rel_err(ref.double(), exact) + 1e-3
    return got


CASES = [  # N, D, F, E, top_k, dtype
    (1, 40, 56, 4, 2, torch.float32),  # one token: most blocks unused
    (13, 20, 36, 4, 2, torch.float32),  # N, D, F not multiples of the blocks
    (9, 24, 40, 5, 3, torch.float32),  # top-3, experts not a power of 2
    (7, 16, 24, 1, 1, torch.float32),  # one expert, top-1
    (13, 20, 36, 4, 2, torch.bfloat16),
    (6, 24, 40, 5, 3, torch.bfloat16),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "N{}-D{}-F{}-E{}-k{}-{}".format(*c[:5], str(c[5])[6:]))
def test_matches_reference(case):
    *shape, dtype = case
    _against_reference(_inputs(*shape, dtype), dtype)


_DEFAULTS: dict = {}  # what the default configuration gives, made once a worker: the switch tests compare to it


def _default_forward(key, args):
    """The default configuration's (out, out and saved tensors with save=True) for these inputs, computed once per
    key and worker (call it before a switch is set)."""
    if key not in _DEFAULTS:
        _DEFAULTS[key] = (T.moe_grouped_experts(*args), T.moe_grouped_experts(*args, save=True))
    return _DEFAULTS[key]


def _default_backward(i, args, dout):
    """The default configuration's gradients for CASES[i] with that case's dout, computed once per worker."""
    from archzoo.kernels.moe_grouped import backward as B

    key = ("backward", i)
    if key not in _DEFAULTS:
        _out, *saved = _default_forward(("case", i), args)[1]
        _DEFAULTS[key] = B.moe_grouped_experts_backward(dout, *args[:4], args[5], *saved)
    return _DEFAULTS[key]


@pytest.mark.parametrize("flatten", [1, 0], ids=["flatten", "nested"])
@pytest.mark.parametrize("per_sm", [1, 2])
def test_persistent_gate_up_gives_the_same_bits(monkeypatch, per_sm, flatten):
    """PERSISTENT (a fixed grid walking the used blocks' tiles, their count read on the device; saving, then zeroing
    the unused blocks' tiles): the same bits as a program a tile, out and every saved tensor, on the cases above and
    with an idle expert and every token on one (3 or 6 programs on the interpreter's 3 "SMs", several tiles each,
    fewer used tiles than programs for one token)."""
    cases = [_inputs(*c[:5], c[5]) for c in CASES]
    first = torch.tensor([0, 2, 3, 0, 2, 3, 3, 0, 2, 0])
    idle = torch.stack([first, torch.tensor([2, 3, 0, 0])[first]], 1)
    one = torch.stack([torch.full((10,), 2), torch.arange(10) % 2 * 3], 1)
    cases += [
        _inputs(10, 20, 36, 4, 2, torch.float32, top_e=idle),
        _inputs(10, 20, 36, 4, 2, torch.bfloat16, top_e=one),
    ]
    want = [_default_forward(("case" if i < len(CASES) else "persistent", i), a) for i, a in enumerate(cases)]
    launched = []
    real = T.launch
    monkeypatch.setattr(T, "launch", lambda fn, *a, **k: (launched.append(fn.fn.__name__), real(fn, *a, **k))[1])
    monkeypatch.setitem(T.CONFIG_OVERRIDE, "PERSISTENT", per_sm)
    monkeypatch.setitem(T.CONFIG_OVERRIDE, "FLATTEN", flatten)
    for i, (args, (out, saved)) in enumerate(zip(cases, want, strict=True)):
        assert torch.equal(T.moe_grouped_experts(*args), out), f"case {i}"
        for name, got, ref in zip(("out", "h", "g", "u", "slots", "blocks", "expert blocks"),
                                  T.moe_grouped_experts(*args, save=True), saved, strict=True):  # fmt: skip
            assert torch.equal(got, ref), f"case {i}, saved {name}"
    assert "_gate_up_persistent_kernel" in launched and "_gate_up_kernel" not in launched


@pytest.mark.parametrize("persistent", [0, 1], ids=["a-program-a-tile", "persistent"])
def test_one_dot_gate_up_gives_the_same_values(monkeypatch, caplog, persistent):
    """ONE_DOT (the gate and up tiles as one operand, one tl.dot a K step, split after the loop): out and every
    saved tensor as the two dots give them, on the cases above (d_ff not a multiple of the tile: the masked columns
    of both halves), in either gate|up kernel; weights whose d_model is strided take the two dots (the one operand's
    loads assume it contiguous) and still agree."""
    import logging

    cases = [_inputs(*c[:5], c[5]) for c in CASES]
    want = [_default_forward(("case", i), args) for i, args in enumerate(cases)]
    taken = []  # the gate|up launches' ONE_DOT, before HW_ROUND and PDL in either kernel
    real = T.launch
    gate_up = ("_gate_up_kernel", "_gate_up_persistent_kernel")

    def launch(fn, grid, ptrs, ints, consts, *a, **k):
        if fn.fn.__name__ in gate_up:
            taken.append(consts[-3])
        return real(fn, grid, ptrs, ints, consts, *a, **k)

    monkeypatch.setattr(T, "launch", launch)
    monkeypatch.setitem(T.CONFIG_OVERRIDE, "ONE_DOT", 1)
    monkeypatch.setitem(T.CONFIG_OVERRIDE, "PERSISTENT", persistent)
    monkeypatch.setattr(K._dispatch, "_LOGGED", set())
    for i, (args, (out, saved)) in enumerate(zip(cases, want, strict=True)):
        tol = 1e-6 if args[0].dtype == torch.float32 else 0.0  # the interpreter's fp32 products may sum otherwise
        _check(f"case {i} out", T.moe_grouped_experts(*args), out, tol)
        for name, got, ref in zip(("out", "h", "g", "u"), T.moe_grouped_experts(*args, save=True)[:4], saved[:4],
                                  strict=True):  # fmt: skip
            _check(f"case {i} saved {name}", got, ref, tol)
    assert taken and all(t is True for t in taken), taken  # every call above ran the one dot
    x, gate, up, down, top_e, top_w = cases[1]
    strided = [torch.stack([w, w], -1).flatten(-2)[..., ::2] for w in (gate, up)]  # the same, stride 2
    assert strided[0].stride(2) == 2 and torch.equal(strided[0], gate)
    taken.clear()
    with caplog.at_level(logging.WARNING, logger="archzoo.kernels"):
        _check("strided weights", T.moe_grouped_experts(x, *strided, down, top_e, top_w), want[1][0], 1e-6)
    assert taken == [False], taken  # the two dots, and it says why
    said = [r.getMessage() for r in caplog.records]
    assert any("ONE_DOT asked" in m and "strided" in m for m in said), said


@interpreter_only
@pytest.mark.parametrize(
    "switch",
    [{"SORTED_DW": 1}, {"DH_PREFETCH": 1}, {"DH_SPLIT": 2, "DH_PREFETCH": 1}, {"DH_SPLIT": 4}],
    ids=["sorted_dw", "dh_prefetch", "dh_split2", "dh_split4"],
)
def test_backward_switches_give_the_same_bits(monkeypatch, kernels_env, switch):
    """SORTED_DW (x's and dout's rows copied in sorted order, zeros on padding rows, then the weight gradients
    reading plain rows), DH_PREFETCH (dh's epilogue loads before its K loop) and DH_SPLIT (dh's programs on a part
    of a plan block's rows): every gradient bit for bit as the default gives it, on the awkward cases (idle
    experts' blocks, d_model off the copy's column tile, d_ff off dh's tile, one expert, top-3); DH_SPLIT to fp32's
    rounding (below). The interpreter's plan blocks are 4 rows: DH_SPLIT 4 runs programs of one row."""
    from archzoo.kernels.moe_grouped import backward as B

    for i, c in enumerate(CASES):
        args = _inputs(*c[:5], c[5])
        out, *saved = _default_forward(("case", i), args)[1]
        dout = torch.randn(args[0].shape, generator=torch.Generator().manual_seed(i)).to(args[0].dtype)
        want = _default_backward(i, args, dout)
        monkeypatch.setattr(B, "CONFIG_OVERRIDE", switch)
        got = B.moe_grouped_experts_backward(dout, *args[:4], args[5], *saved)
        monkeypatch.setattr(B, "CONFIG_OVERRIDE", {})
        for name, a, b in zip(("dx", "dgate", "dup", "ddown", "dtop_w"), got, want, strict=True):
            if "DH_SPLIT" in switch:
                # The interpreter's tl.dot is numpy's matmul, whose order of sums may change with the tile's rows
                # (BLAS blocking and threads: bit for bit on one machine, an fp32 ulp apart on another, the
                # twenty-sixth session's); so here to fp32's rounding, and bit for bit on the GPU
                # (test_cuda_backward_switches_give_the_same_bits).
                tol = dict(rtol=1e-5, atol=1e-6) if a.dtype == torch.float32 else {}  # bf16: a rounding may flip
                torch.testing.assert_close(a, b, **tol, msg=f"case {i}: {name} differs with {switch}")
                continue
            assert torch.equal(a, b), f"case {i}: {name} differs with {switch}"


@interpreter_only
def test_dh_split_that_does_not_divide_the_block_is_refused(monkeypatch, kernels_env):
    """DH_SPLIT must cut a plan block into whole row tiles: 3 of the interpreter's 4-row blocks is a ValueError that
    names the setting, raised before any launch."""
    from archzoo.kernels.moe_grouped import backward as B

    args = _inputs(*CASES[0][:5], CASES[0][5])
    out, *saved = T.moe_grouped_experts(*args, save=True)
    monkeypatch.setattr(B, "CONFIG_OVERRIDE", {"DH_SPLIT": 3})
    launched = []
    monkeypatch.setattr(B, "launch", lambda *a, **k: launched.append(a))
    with pytest.raises(ValueError, match="DH_SPLIT 3"):
        B.moe_grouped_experts_backward(torch.ones_like(out), *args[:4], args[5], *saved)
    assert not launched, "nothing may run before the setting is refused"


def test_config_env_is_checked(kernels_env):
    """ARCHZOO_MOE_GROUPED_CONFIG: settings of either CUDA_CONFIG with integer values; anything else is a
    ValueError that names the variable and what is wrong."""
    assert T.config_from_env(None) == {} and T.config_from_env(" ") == {}
    want = {"PDL": 1, "SORTED_DW": 1, "BLOCK_N": 128}  # a forward key, a backward key, a tile
    assert T.config_from_env('{"PDL": 1, "SORTED_DW": 1, "BLOCK_N": 128}') == want
    bad = [('{"PDX": 1}', "unknown keys ['PDX']"), ("[1]", "JSON object"), ('{"PDL": true}', "integers"),
           ("PDL=1", "JSON object"), ('{"PDL": -1}', "integers")]  # fmt: skip
    for text, said in bad:
        with pytest.raises(ValueError, match=T.CONFIG_ENV) as e:
            T.config_from_env(text)
        assert said in str(e.value), (text, str(e.value))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_empty_expert_and_one_expert_for_all(dtype):
    """Expert 1 of 4 with no tokens (its segment empty: no block), then every token's first choice on expert 2
    (ten tokens: three blocks of it, the last part padding)."""
    N, E = 10, 4
    first = torch.tensor([0, 2, 3, 0, 2, 3, 3, 0, 2, 0])
    top_e = torch.stack([first, torch.tensor([2, 3, 0, 0])[first]], 1)  # 0 -> 2, 2 -> 3, 3 -> 0: never 1
    _against_reference(_inputs(N, 20, 36, E, 2, dtype, top_e=top_e), dtype, "no tokens on expert 1: ")
    all_on_2 = torch.stack([torch.full((N,), 2), torch.arange(N) % 2 * 3], 1)  # second choices on 0 and 3
    _against_reference(_inputs(N, 20, 36, E, 2, dtype, top_e=all_on_2), dtype, "all on expert 2: ")


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning", "ignore:invalid value:RuntimeWarning")
def test_dropped_assignments_add_exactly_zero():
    """Every second choice on expert 3 with weight 0 (dropped), and expert 3's weights so large that its outputs
    overflow to inf: the output is the same bits as with expert 3's weights ordinary, and the reference's."""
    N, D, F, E = 9, 20, 36, 4
    top_e = torch.stack([torch.arange(N) % 3, torch.full((N,), 3)], 1)
    x, g, u, d, e, w = _inputs(N, D, F, E, 2, torch.float32, top_e=top_e)
    w[:, 1] = 0
    w[:, 0] = torch.rand(N, device=DEV) + 0.5
    plain = T.moe_grouped_experts(x, g, u, d, e, w)
    g, u, d = (t.clone() for t in (g, u, d))
    for t in (g, u, d):
        t[3] *= 1e30
    huge = T.moe_grouped_experts(x, g, u, d, e, w)
    assert torch.isfinite(huge).all() and torch.equal(huge, plain), "a dropped assignment must add exactly 0"
    _check("dropped vs reference", huge, naive_moe_grouped_experts(x, g, u, d, e, w), 2e-6)


def test_strided_x_int32_experts_strided_weights(monkeypatch):
    """x a column slice of a wider tensor, int32 expert ids, top_w a strided view; BLOCK_K dividing d_model / d_ff
    (the unmasked loads), then one masked K tile a GEMM (a wider BLOCK_K) with other blocks of rows."""
    x, g, u, d, e, w = _inputs(11, 24, 40, 4, 2, torch.float32)
    wide = torch.randn(11, 100, device=DEV)
    wide[:, 30:54] = x
    w_wide = torch.zeros(11, 4, device=DEV)
    w_wide[:, ::2] = w
    want = naive_moe_grouped_experts(x, g, u, d, e, w)
    got = T.moe_grouped_experts(wide[:, 30:54], g, u, d, e.int(), w_wide[:, ::2])
    _check("strided x, int32 ids", got, want, 2e-6)
    monkeypatch.setattr(T, "CONFIG_OVERRIDE", dict(BLOCK_K=32, DOWN_BLOCK_K=64, BLOCK_M=8 if DEV == "cpu" else 128))
    _check("wide K tiles", T.moe_grouped_experts(x, g, u, d, e, w), want, 2e-6)


def _plan_ref(top_e, E, bm):
    """The plan by a stable sort: (slot_assignment, block_expert) as lists, padding -1."""
    N, Kc = top_e.shape
    ea = top_e.t().reshape(-1).tolist()  # a = k * N + n
    slots, blocks = [], []
    for e in range(E):
        seg = [a for a, ee in enumerate(ea) if ee == e]
        seg += [-1] * (-len(seg) % bm)
        slots += seg
        blocks += [e] * (len(seg) // bm)
    rows = -(-(N * Kc + E * (bm - 1)) // bm) * bm
    return slots + [-1] * (rows - len(slots)), blocks + [-1] * (rows // bm - len(blocks))


@pytest.mark.parametrize("N, E, top_k, block", [(1, 4, 2, 8), (13, 5, 3, 8), (40, 4, 2, 4), (20, 9, 1, 16)])
def test_plan_sorts_and_pads_by_expert(N, E, top_k, block, monkeypatch):
    """slot_assignment, block_expert and expert_block against a stable sort in Python: each expert's assignments in
    priority order (a = k * N + n), padded to whole blocks, unused rows and blocks -1, each expert's block range
    (empty for an idle one); over several plan chunks (``block`` assignments a program), the counts summed over
    several tiles of chunks (80 assignments in 20 chunks), 9 experts (a padded tile of experts)."""
    monkeypatch.setattr(T, "CONFIG_OVERRIDE", dict(PLAN_BLOCK=block))
    g = torch.Generator().manual_seed(N)
    top_e = torch.stack([torch.randperm(E, generator=g)[:top_k] for _ in range(N)])
    top_e[: N // 2, 0] = E - 1  # unbalanced
    slots, blocks, expert_block = T.plan(top_e.to(DEV), E)
    bm = T._config(torch.device(DEV))["BLOCK_M"]
    want_slots, want_blocks = _plan_ref(top_e, E, bm)
    assert slots.tolist() == want_slots
    assert blocks.tolist() == want_blocks
    used = [b for b in want_blocks if b >= 0]
    want_range = [sum(b < e for b in used) for e in range(E)] + [len(used)]  # each expert's first block, the end
    assert expert_block.tolist() == want_range


@pytest.mark.parametrize("N, top_k, dtype", [(3, 2, torch.float32), (2, 1, torch.bfloat16), (3, 2, torch.bfloat16)])
def test_reference_agrees_with_the_decode_reference(N, top_k, dtype):
    """For a few tokens the loop over the experts computes what ``naive_moe_decode_experts`` does (its bf16 products
    rounded one by one: the bf16 results differ by that)."""
    args = _inputs(N, 40, 56, 8, top_k, dtype, device="cpu")
    _check("grouped vs decode reference", naive_moe_grouped_experts(*args), naive_moe_decode_experts(*args),
           1e-6 if dtype == torch.float32 else 1e-2)  # fmt: skip


def test_bad_input():
    x, g, u, d, e, w = _inputs(2, 16, 24, 4, 2, torch.float32, device="cpu")
    with pytest.raises(ValueError, match="x must be"):
        K.moe_grouped_experts(x[None], g, u, d, e, w)
    with pytest.raises(ValueError, match="gate_w must be"):
        K.moe_grouped_experts(x, g[..., :8], u, d, e, w)
    with pytest.raises(ValueError, match="up_w must be"):
        K.moe_grouped_experts(x, g, u[:3], d, e, w)
    with pytest.raises(ValueError, match="down_w must be"):
        K.moe_grouped_experts(x, g, u, d.transpose(1, 2), e, w)
    with pytest.raises(ValueError, match="top_e must be"):
        K.moe_grouped_experts(x, g, u, d, e.float(), w)
    with pytest.raises(ValueError, match="top_w must be"):
        K.moe_grouped_experts(x, g, u, d, e, w[:, :1])
    with pytest.raises(ValueError, match="gate_w must have x's dtype"):
        K.moe_grouped_experts(x, g.double(), u, d, e, w)
    with pytest.raises(ValueError, match="gate_w must hold at least one expert"):
        K.moe_grouped_experts(x, g[:0], u[:0], d[:0], e, w)


@interpreter_only
def test_dispatch_and_the_custom_op(monkeypatch):
    """CPU tensors: the naive reference without the interpreter, the kernels with it; float64 and no tokens the
    reference; under torch.compile(fullgraph=True) one graph with the custom op, giving the eager result."""
    args = _inputs(5, 20, 36, 4, 2, torch.float32, device="cpu")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    ref = K.moe_grouped_experts(*args)
    assert K.last_backend("moe_grouped_experts") == "naive"
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    got = K.moe_grouped_experts(*args)
    assert K.last_backend("moe_grouped_experts") == "triton"
    _check("interpreted vs naive", got, ref, 2e-6)
    K.moe_grouped_experts(*[a.double() if a.is_floating_point() else a for a in args])
    assert K.last_backend("moe_grouped_experts") == "naive"
    assert K.moe_grouped_experts(*[a[:0] if a.shape[0] == 5 else a for a in args]).shape == (0, 20)
    assert K.last_backend("moe_grouped_experts") == "naive"
    graphs: list[list[str]] = []
    torch._dynamo.reset()
    traced = torch.compile(lambda *a: K.moe_grouped_experts(*a) * 2, backend=recording_backend(graphs),
                           fullgraph=True)(*args)  # fmt: skip
    torch._dynamo.reset()
    assert len(graphs) == 1 and sum("moe_grouped_experts" in t for t in graphs[0]) == 1, graphs
    assert K.last_backend("moe_grouped_experts") == "triton"
    _check("traced", traced, 2 * got, 2e-6)


GRADS = {0: "x", 1: "gate_w", 2: "up_w", 3: "down_w", 5: "top_w"}  # argument -> name; top_e takes none


@pytest.fixture
def kernels_env(monkeypatch):
    """``moe_grouped_experts`` dispatches to the kernels here: on CPU tensors under Triton's interpreter."""
    if DEV == "cpu":
        monkeypatch.setenv("TRITON_INTERPRET", "1")


def _grads(fn, args, dout, strided=False):
    """-> (out, {name: gradient}) of fn(*args) against dout. ``strided``: x a column slice and top_w every second
    column of wider leaves, top_e int32 (their gradients read back through the views)."""
    leaves = {i: a.detach().clone().requires_grad_() for i, a in enumerate(args) if i in GRADS}
    views = dict(leaves)
    if strided:
        (N, D), K = args[0].shape, args[5].shape[1]
        wide = torch.zeros(N, D + 9, dtype=args[0].dtype, device=args[0].device)
        wide[:, 5 : 5 + D] = args[0]
        w_wide = torch.zeros(N, 2 * K, dtype=args[5].dtype, device=args[5].device)
        w_wide[:, ::2] = args[5]
        leaves[0], leaves[5] = wide.requires_grad_(), w_wide.requires_grad_()
        views[0], views[5] = wide[:, 5 : 5 + D], w_wide[:, ::2]
    call = [views.get(i, a) for i, a in enumerate(args)]
    if strided:
        call[4] = call[4].int()
    out = fn(*call)
    out.backward(dout)
    grads = {name: leaves[i].grad for i, name in GRADS.items()}
    if strided:
        grads["x"], grads["top_w"] = grads["x"][:, 5 : 5 + D], grads["top_w"][:, ::2]
    return out, grads


def _grads_against_reference(args, dtype, name="", strided=False, seed=1):
    """Every gradient of the kernels (through ``moe_grouped_experts``: the training op, its autograd formula, the
    backward op) against the reference's by autograd in fp64 (the truth) and in the inputs' dtype; -> the kernels'
    (out, gradients), each gradient in its input's dtype."""
    g = torch.Generator().manual_seed(seed)
    dout = torch.randn(args[0].shape, generator=g).to(DEV, dtype)
    out, got = _grads(K.moe_grouped_experts, args, dout, strided)
    assert K.last_backend("moe_grouped_experts") == "triton"
    assert K.last_backend("moe_grouped_experts_backward") == "triton"
    _, exact = _grads(naive_moe_grouped_experts, [a.double() if a.is_floating_point() else a for a in args],
                      dout.double())  # fmt: skip
    _, ref = _grads(naive_moe_grouped_experts, args, dout)
    for i, key in GRADS.items():
        assert got[key].dtype == args[i].dtype, f"{name}d{key}: dtype {got[key].dtype}"
        if dtype == torch.float32:
            _check(f"{name}d{key} vs fp64 reference", got[key].double(), exact[key], 2e-6)
            _check(f"{name}d{key} vs reference in its dtype", got[key], ref[key], 2e-6)
        else:  # fp32 sums, roundings to bf16 where autograd in bf16 rounds: as close to the truth as the reference
            _check(f"{name}d{key} vs fp64 reference", got[key].double(), exact[key], 8e-3)
            _check(f"{name}d{key} vs reference in its dtype", got[key], ref[key], 1e-2)
            err, ref_err = rel_err(got[key].double(), exact[key]), rel_err(ref[key].double(), exact[key])
            assert err <= 1.25 * ref_err + 1e-3, f"{name}d{key}: error {err:.2e} vs the reference's {ref_err:.2e}"
    return out, got


@pytest.mark.parametrize("case", CASES, ids=lambda c: "N{}-D{}-F{}-E{}-k{}-{}".format(*c[:5], str(c[5])[6:]))
def test_gradients_match_reference(case, kernels_env):
    """dx, dgate_w, dup_w, ddown_w and dtop_w on the awkward shapes (one token, N / D / F not multiples of the
    blocks and tiles, top-1 / 2 / 3, one expert, fp32 and bf16); the second case with x and top_w strided views."""
    *shape, dtype = case
    _grads_against_reference(_inputs(*shape, dtype), dtype, strided=shape[0] == 13 and dtype == torch.float32)


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning", "ignore:invalid value:RuntimeWarning")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gradients_idle_expert_one_expert_for_all_and_dropped(dtype, kernels_env):
    """Every first choice on expert 2 (three blocks of it), expert 1 idle, the second choices on expert 0 (even
    tokens) and 3 (odd tokens, all dropped: weight 0). Against the reference; an idle or only-dropped expert's weights
    get exactly zero gradient, and a dropped assignment's routing weight exactly 0 (the reference's ``torch.where``
    passes it none) while the others' match. fp32: expert 3's weights so large that its gate and up overflow leave
    every gradient the same bits."""
    N, E = 10, 4
    top_e = torch.stack([torch.full((N,), 2), torch.arange(N) % 2 * 3], 1)
    args = _inputs(N, 20, 36, E, 2, dtype, top_e=top_e)
    dropped = (top_e[:, 1] == 3).to(DEV)
    args[5][:, 1] = torch.where(dropped, 0, args[5][:, 1])
    _, got = _grads_against_reference(args, dtype, "idle / one expert / dropped: ")
    for key in ("gate_w", "up_w", "down_w"):
        assert not got[key][[1, 3]].any(), f"d{key}: an idle or only-dropped expert's gradient must be exactly 0"
        assert got[key][[0, 2]].abs().amin(dim=(1, 2)).gt(0).any(), f"d{key}: the busy experts' gradients vanished"
    assert not got["top_w"][:, 1][dropped].any() and got["top_w"][:, 1][~dropped].ne(0).all()
    if dtype == torch.float32:
        huge = [a.clone() for a in args]
        for i in (1, 2, 3):
            huge[i][3] *= 1e30
        dout = torch.randn(args[0].shape, generator=torch.Generator().manual_seed(1)).to(DEV, dtype)
        _, got_huge = _grads(K.moe_grouped_experts, huge, dout)
        for key, value in got.items():
            assert torch.equal(got_huge[key], value), f"d{key}: a dropped assignment's overflow must not leak"


@interpreter_only
def test_the_layer_with_the_kernels_matches_its_loop(kernels_env, monkeypatch):
    """MoE with DISPATCH="fused" through the kernels (forward and backward, the interpreter here): output and every
    gradient, the router's included, as the per-expert loop gives them, with the capacity's drops."""
    import archzoo.layers.moe as moe_mod

    torch.manual_seed(0)
    layer = moe_mod.MoE.from_config(moe_mod.MoEConfig(n_experts=4, top_k=2, d_ff=24, capacity_factor=1.0), 16).train()
    x, g = torch.randn(37, 16), torch.randn(37, 16)
    res = {}
    for dispatch in ("loop", "fused"):
        monkeypatch.setattr(moe_mod, "DISPATCH", dispatch)
        layer.zero_grad()
        xx = x.clone().requires_grad_()
        out = layer(xx)
        ((out * g).sum() + layer.aux_loss).backward()
        assert layer.last_dispatch == dispatch and layer.last_stats["tokens_dropped"] > 0
        res[dispatch] = {"out": out.detach(), "dx": xx.grad} | {n: p.grad for n, p in layer.named_parameters()}
    assert K.last_backend("moe_grouped_experts") == "triton"
    for name, want in res["loop"].items():
        _check(f"layer {name}", res["fused"][name], want, 2e-6)


@interpreter_only
def test_forward_and_backward_compile_whole(monkeypatch):
    """torch.compile(fullgraph=True) of a function calling ``moe_grouped_experts`` on tensors requiring grad traces
    one forward graph with the training op and one backward graph with the backward op (AOTAutograd, no
    inductor), with the eager output and gradients; where the kernels do not run (CPU, no interpreter) the
    reference is traced into the graphs, also with the eager gradients."""
    from torch._dynamo.backends.common import aot_autograd
    from torch._functorch.aot_autograd import make_boxed_func

    def recording(graphs: list[str]):  # an AOTAutograd compiler that keeps each graph's node targets
        def compiler(gm, example_inputs):
            graphs.append(" ".join(str(n.target) for n in gm.graph.nodes))
            return make_boxed_func(gm.forward)

        return compiler

    args = _inputs(5, 12, 20, 3, 2, torch.float32, device="cpu")
    fn = lambda *a: K.moe_grouped_experts(*a) * 2  # noqa: E731
    dout = torch.randn(5, 12, generator=torch.Generator().manual_seed(1))
    for interpret, ops in (("1", ("moe_grouped_experts_train", "moe_grouped_experts_backward")), ("0", ("mm", "mm"))):
        monkeypatch.setenv("TRITON_INTERPRET", interpret)
        graphs: dict[str, list[str]] = {"fw": [], "bw": []}
        backend = aot_autograd(fw_compiler=recording(graphs["fw"]), bw_compiler=recording(graphs["bw"]))
        torch._dynamo.reset()
        try:
            out, got = _grads(torch.compile(fn, backend=backend, fullgraph=True), args, dout)
        finally:
            torch._dynamo.reset()
        assert len(graphs["fw"]) == 1 and len(graphs["bw"]) == 1, graphs
        assert ops[0] in graphs["fw"][0] and ops[1] in graphs["bw"][0], graphs
        want_out, want = _grads(fn, args, dout)
        _check(f"interpret={interpret}: compiled out", out, want_out, 0)
        for key in got:
            _check(f"interpret={interpret}: compiled d{key}", got[key], want[key], 0)


@interpreter_only
def test_training_and_backward_ops_pass_opcheck(monkeypatch):
    """``torch.library.opcheck`` of the training op (with inputs requiring grad: its autograd formula) and the
    backward op: schema, fake tensors (the saved outputs' shapes, also with dynamic shapes), autograd registration,
    AOTAutograd's trace against eager (every element of every output defined)."""
    import archzoo.kernels.moe_grouped as mg

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    args = _inputs(5, 8, 8, 3, 2, torch.float32, device="cpu")
    leaves = [a.clone().requires_grad_() if a.is_floating_point() else a for a in args]
    torch.library.opcheck(mg._train_op, (*leaves, None))
    saved = mg._train_op(*args, None)[1:]
    torch.library.opcheck(mg._backward_op, (torch.randn(5, 8), *args[:4], args[5], *saved))


def _students(routing: str, seed: int = 0):
    """bf16 inputs at the students' shape; routing "random" (distinct experts a token) or "skewed" (every first
    choice on expert 5, expert 0 unused, a tenth of the second choices dropped)."""
    N, D, F, E = 4096, 576, 1536, 8
    top_e = None
    if routing == "skewed":
        g = torch.Generator().manual_seed(seed)
        top_e = torch.stack([torch.full((N,), 5), torch.randint(1, 5, (N,), generator=g)], 1)
    args = _inputs(N, D, F, E, 2, torch.bfloat16, seed, device="cuda", top_e=top_e)
    if routing == "skewed":
        args[5][::10, 1] = 0
    return args


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("routing", ["random", "skewed"])
def test_cuda_students_shape_bf16(routing):
    """At the students' shape: against the fp64 reference and the reference in bf16; two calls agree to the bit, and
    a CUDA-graph replay gives the eager result (no host synchronisation in the call)."""
    args = _students(routing)
    got = K.moe_grouped_experts(*args)
    assert K.last_backend("moe_grouped_experts") == "triton"
    exact = naive_moe_grouped_experts(*[a.double() if a.is_floating_point() else a for a in args])
    _check("vs fp64", got.double(), exact, 1e-2)
    _check("vs the reference in bf16", got, naive_moe_grouped_experts(*args), 1e-2)
    assert torch.equal(got, K.moe_grouped_experts(*args)), "two calls must agree to the bit"
    out, _graph = graph_replayed(lambda: K.moe_grouped_experts(*args))
    assert torch.equal(out, got), "a CUDA-graph replay must give the eager result"


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("flatten", [1, 0], ids=["flatten", "nested"])
def test_cuda_persistent_gate_up_gives_the_same_bits(monkeypatch, flatten):
    """PERSISTENT at the students' shape in bf16, skewed routing: the same bits as a program a tile (the saving
    forward's too), and a CUDA-graph replay gives them (the tile count is read on the device)."""
    args = _students("skewed")
    want, saved = T.moe_grouped_experts(*args), T.moe_grouped_experts(*args, save=True)
    monkeypatch.setitem(T.CONFIG_OVERRIDE, "PERSISTENT", 1)
    monkeypatch.setitem(T.CONFIG_OVERRIDE, "FLATTEN", flatten)
    assert torch.equal(T.moe_grouped_experts(*args), want)
    assert all(torch.equal(a, b) for a, b in zip(T.moe_grouped_experts(*args, save=True), saved, strict=True))
    out, _graph = graph_replayed(lambda: T.moe_grouped_experts(*args))
    assert torch.equal(out, want)


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize(
    "switch",
    [{"SORTED_DW": 1}, {"DH_PREFETCH": 1}, {"DH_SPLIT": 2, "DH_PREFETCH": 1}, {"DH_SPLIT": 2, "DH_WARPS": 4},
     {"BWD_STREAMS": 1}, {"BWD_STREAMS": 2}, {"BWD_STREAMS": 2, "SORTED_DW": 1}],
    ids=["sorted_dw", "dh_prefetch", "dh_split", "dh_split_4warps", "streams1", "streams2", "streams2_sorted"],
)  # fmt: skip
def test_cuda_backward_switches_give_the_same_bits(monkeypatch, switch):
    """SORTED_DW, DH_PREFETCH, DH_SPLIT and BWD_STREAMS at the students' shape in bf16, skewed routing: every
    gradient bit for bit as the default gives it; with BWD_STREAMS, a CUDA graph's replay too (the second stream's
    work a branch of the graph)."""
    from archzoo.kernels.moe_grouped import backward as B

    args = _students("skewed")
    dout = torch.randn(args[0].shape, generator=torch.Generator().manual_seed(1)).to("cuda", torch.bfloat16)
    out, *saved = T.moe_grouped_experts(*args, save=True)
    want = B.moe_grouped_experts_backward(dout, *args[:4], args[5], *saved)
    monkeypatch.setattr(B, "CONFIG_OVERRIDE", switch)
    got = B.moe_grouped_experts_backward(dout, *args[:4], args[5], *saved)
    for name, a, b in zip(("dx", "dgate", "dup", "ddown", "dtop_w"), got, want, strict=True):
        if name == "dtop_w" and switch == {"DH_PREFETCH": 1}:
            # on sm_90 (H100, twenty-sixth session) dtop_w's per-row sums came out in other bits with the loads moved
            # (the compiler's contraction of the epilogue's products, not the order of the sums): within bf16's rounding
            torch.testing.assert_close(a, b, msg=f"{name} differs with {switch}")
            continue
        assert torch.equal(a, b), f"{name} differs with {switch}"
    if "BWD_STREAMS" in switch:
        graphed, _graph = graph_replayed(lambda: B.moe_grouped_experts_backward(dout, *args[:4], args[5], *saved))
        for name, a, b in zip(("dx", "dgate", "dup", "ddown", "dtop_w"), graphed, want, strict=True):
            assert torch.equal(a, b), f"{name}: a CUDA-graph replay with {switch} differs"


@pytest.mark.gpu
@requires_cuda
def test_cuda_hw_round_gives_the_same_bits(monkeypatch):
    """HW_ROUND / DH_HW_ROUND (the gate|up's and dh's epilogue roundings by conversion to bf16, round to nearest
    even, instead of by bits): out, the saved tensors and every gradient bit for bit as the default gives them."""
    from archzoo.kernels.moe_grouped import backward as B

    args = _students("skewed")
    dout = torch.randn(args[0].shape, generator=torch.Generator().manual_seed(1)).to("cuda", torch.bfloat16)
    results = []
    for on in (0, 1):
        monkeypatch.setitem(T.CONFIG_OVERRIDE, "HW_ROUND", on)
        monkeypatch.setitem(B.CONFIG_OVERRIDE, "DH_HW_ROUND", on)
        out, *saved = T.moe_grouped_experts(*args, save=True)
        results.append((out, *saved[:3], *B.moe_grouped_experts_backward(dout, *args[:4], args[5], *saved)))
    names = ("out", "h", "g", "u", "dx", "dgate", "dup", "ddown", "dtop_w")
    for name, got, want in zip(names, results[1], results[0], strict=True):
        assert torch.equal(got, want), f"{name} differs with HW_ROUND"


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("routing", ["random", "skewed"])
def test_cuda_students_shape_bf16_gradients(routing):
    """At the students' shape: every gradient against the reference's in fp64 and in bf16 (skewed: expert 5 holding
    half the assignments, expert 0 idle, a tenth of the second choices dropped); a second forward + backward gives
    the same bits, and a CUDA graph of forward + backward replays the eager output and gradients (no host
    synchronisation in either)."""
    args = _students(routing)
    out, got = _grads_against_reference(args, torch.bfloat16)
    dout = torch.randn(args[0].shape, generator=torch.Generator().manual_seed(1)).to("cuda", torch.bfloat16)
    again_out, again = _grads(K.moe_grouped_experts, args, dout)
    assert torch.equal(again_out, out) and all(torch.equal(again[k], got[k]) for k in got), "runs must agree"
    leaves = [a.detach().clone().requires_grad_() if i in GRADS else a for i, a in enumerate(args)]
    params = [leaves[i] for i in GRADS]
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up off the capture (autograd's first backward)
        torch.autograd.grad(K.moe_grouped_experts(*leaves), params, dout)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        graph_out = K.moe_grouped_experts(*leaves)
        graph_grads = torch.autograd.grad(graph_out, params, dout)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(graph_out, out), "a CUDA-graph replay must give the eager output"
    for key, value in zip(GRADS.values(), graph_grads, strict=True):
        assert torch.equal(value, got[key]), f"d{key}: a CUDA-graph replay must give the eager gradient"
