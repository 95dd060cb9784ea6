"""The shared launch cache (archzoo/kernels/_launch.py), on CPU: Triton's launcher is replaced by a recorder.

``launch`` keys a compiled kernel on everything Triton specialises on; these tests check that a
change in any of those is a miss, that an identical call is a hit that calls the compiled kernel
directly with every argument in signature order, that FAST_LAUNCH = False and the interpreter
(Triton returns None) leave the cache alone, and that bad arguments raise ValueError naming the
parameter. The compiled launch itself is checked on a GPU in test_kernels_causal_conv1d.py.
"""

from __future__ import annotations

import pytest
import torch

triton = pytest.importorskip("triton")
import triton.language as tl  # noqa: E402
from triton import knobs  # noqa: E402
from triton.runtime.interpreter import InterpretedFunction  # noqa: E402

from archzoo.kernels import _launch  # noqa: E402


@triton.jit
def _scale(x_ptr, y_ptr, n, m, BLOCK: tl.constexpr, DOUBLE: tl.constexpr):
    """y[:n] = x[:n] * (2 if DOUBLE else 1) + m."""
    o = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    v = tl.load(x_ptr + o, mask=o < n)
    if DOUBLE:
        v = v * 2
    tl.store(y_ptr + o, v + m, mask=o < n)


@triton.jit
def _misordered(x_ptr, BLOCK: tl.constexpr, n):
    tl.store(x_ptr + tl.arange(0, BLOCK), tl.zeros((BLOCK,), dtype=tl.float32), mask=tl.arange(0, BLOCK) < n)


class _Compiled:
    """Stands in for a CompiledKernel: records the direct launches, through ``run`` (no launch hook set) or
    through ``[grid]`` (a hook set)."""

    function, packed_metadata = "function", "packed_metadata"

    def __init__(self, log: list):
        self.log = log

    def run(self, gx, gy, gz, stream, function, packed_metadata, launch_metadata, enter_hook, exit_hook, *args):
        assert (stream, function, packed_metadata) == ("stream", "function", "packed_metadata")
        assert launch_metadata is None and enter_hook is None and exit_hook is None, "no metadata, no hooks"
        self.log.append(("direct", (gx, gy, gz), args))

    def __getitem__(self, grid):
        return lambda *args: self.log.append(("grid", grid, args))


@pytest.fixture
def rec(monkeypatch):
    """Fresh cache, FAST_LAUNCH on, and _scale's Triton launcher replaced by a recorder returning a _Compiled
    (or None once ``rec.compiled_none`` is set, as under the interpreter)."""
    monkeypatch.setattr(_launch, "_LAUNCH_CACHE", {})
    monkeypatch.setattr(_launch, "FAST_LAUNCH", True)
    monkeypatch.setattr(_launch, "_stream", lambda: "stream")  # no CUDA driver here

    class Rec:
        def __init__(self):
            self.log, self.compiled_none = [], False

        def triton_calls(self):
            return [e for e in self.log if e[0] == "triton"]

        def direct_calls(self):
            return [e for e in self.log if e[0] != "triton"]

    r = Rec()

    def run(*args, grid, warmup, **kwargs):
        r.log.append(("triton", grid, args, kwargs))
        return None if r.compiled_none else _Compiled(r.log)

    monkeypatch.setattr(_scale, "run", run)  # JITFunction[grid](...) calls self.run
    return r


def _args(dtype=torch.float32, offset=0, n=32, m=0, block=16, double=True, num_warps=1, device=-1):
    x = torch.zeros(64, dtype=dtype)[offset:]
    y = torch.zeros(64, dtype=dtype)
    return dict(kernel=_scale, grid=(2,), ptrs=(x, y), ints=(n, m), consts=(block, double), num_warps=num_warps,
                device=device)  # fmt: skip


def test_miss_goes_through_triton_then_hit_launches_compiled(rec):
    a = _args()
    first = _launch.launch(**a)
    assert len(rec.triton_calls()) == 1 and not rec.direct_calls(), "first call: a miss"
    _, grid, args, kwargs = rec.triton_calls()[0]
    assert args == (*a["ptrs"], *a["ints"]), "pointers then ints, positional"
    assert kwargs == {"BLOCK": 16, "DOUBLE": True, "num_warps": 1}, "constexprs by name, and num_warps"
    second = _launch.launch(**_args())  # new tensors, same dtypes / alignment / values
    assert second is first, "the cached compiled kernel"
    assert len(rec.triton_calls()) == 1, "second call: a hit"
    (how, grid, args), = rec.direct_calls()  # fmt: skip
    assert how == "direct", "no launch hook set: the binary launcher, without metadata"
    assert grid == (2, 1, 1), "grid padded to 3 entries"
    assert len(args) == 6 and args[2:] == (32, 0, 16, True), "every argument in signature order"
    assert len(_launch._LAUNCH_CACHE) == 1


def test_hit_with_a_launch_hook_goes_through_compiled_grid(rec, monkeypatch):
    """A launch hook (a profiler) is honoured: the hit goes through CompiledKernel[grid], which calls it."""
    monkeypatch.setattr(knobs.runtime, "launch_enter_hook", lambda metadata: None)
    _launch.launch(**_args())
    _launch.launch(**_args())
    (how, grid, args), = rec.direct_calls()  # fmt: skip
    assert how == "grid" and grid == (2, 1, 1) and len(args) == 6


@pytest.mark.parametrize(
    "change",
    [
        dict(dtype=torch.float16), dict(offset=1), dict(n=33), dict(m=1), dict(block=32),
        dict(double=False), dict(num_warps=2), dict(device=0),
    ],
    ids=["dtype", "misaligned", "int_value", "int_one", "constexpr", "constexpr_bool",
         "num_warps", "device"],
)  # fmt: skip
def test_key_changes_with_every_specialisation(rec, change):
    _launch.launch(**_args())
    _launch.launch(**_args(**change))
    assert len(rec.triton_calls()) == 2, f"{change}: must be a miss"
    assert len(_launch._LAUNCH_CACHE) == 2, f"{change}: two entries"


def test_key_holds_alignment_not_address(rec):
    """Another 16-byte aligned offset is a hit; 4 bytes off is a miss."""
    _launch.launch(**_args(offset=0))
    _launch.launch(**_args(offset=4))  # 16 bytes into fp32 storage
    assert len(rec.triton_calls()) == 1, "aligned offset: a hit"
    _launch.launch(**_args(offset=1))
    assert len(rec.triton_calls()) == 2, "4-byte offset: a miss"


def test_fast_launch_off_bypasses_the_cache(rec, monkeypatch):
    monkeypatch.setattr(_launch, "FAST_LAUNCH", False)
    for _ in range(3):
        _launch.launch(**_args())
    assert len(rec.triton_calls()) == 3 and not rec.direct_calls(), "every call through Triton"
    assert not _launch._LAUNCH_CACHE, "nothing cached"


def test_no_compiled_kernel_is_not_cached(rec):
    """Under the interpreter Triton returns None: every call goes through it and nothing is kept."""
    rec.compiled_none = True
    assert _launch.launch(**_args()) is None
    assert _launch.launch(**_args()) is None
    assert len(rec.triton_calls()) == 2 and not _launch._LAUNCH_CACHE


def test_interpreter_runs_and_caches_nothing(monkeypatch):
    """The same kernel through Triton's interpreter: right values, nothing cached."""
    monkeypatch.setattr(_launch, "_LAUNCH_CACHE", {})
    kernel = InterpretedFunction(_scale.fn)
    x, y = torch.arange(20.0), torch.zeros(20)
    for m in (3, 5):
        got = _launch.launch(kernel, (2,), (x, y), (20, m), (16, True), 1, -1)
        assert got is None, "the interpreter compiles nothing"
        assert torch.equal(y, 2 * x + m), f"y (m={m})"
    assert not _launch._LAUNCH_CACHE


def test_cache_cleared_when_full(rec, monkeypatch):
    monkeypatch.setattr(_launch, "_LAUNCH_CACHE_MAX", 2)
    for n in (20, 21, 22):
        _launch.launch(**_args(n=n))
    assert len(_launch._LAUNCH_CACHE) == 1, "cleared at the third key, which is then stored"


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "slow"])
def test_none_pointer_is_refused(rec, monkeypatch, fast):
    monkeypatch.setattr(_launch, "FAST_LAUNCH", fast)
    a = _args()
    a["ptrs"] = (a["ptrs"][0], None)
    with pytest.raises(ValueError, match="'y_ptr' must be a tensor.*not None"):
        _launch.launch(**a)
    assert not rec.triton_calls()


def test_bad_ints_and_layout_are_refused(rec):
    with pytest.raises(ValueError, match="'m' must be a Python int"):
        _launch.launch(**_args(m=True))
    a = _args()
    a["consts"] = (16,)
    with pytest.raises(ValueError, match="takes 6 arguments"):
        _launch.launch(**a)
    x = torch.zeros(8)
    with pytest.raises(ValueError, match="'BLOCK' is out of place"):
        _launch.launch(_misordered, (1,), (x,), (8,), (8,), 1, -1)
    assert not rec.triton_calls()


def _site(checked=None, **kw):
    a = _args(**kw)
    site = _launch.Site(a["kernel"], a["grid"], a["ints"], a["consts"], a["num_warps"], a["device"], checked)
    return site, a["ptrs"]


def test_site_keeps_the_compiled_kernel_and_calls_it_with_no_key(rec):
    """A Site's first launch goes through launch (a miss: Triton); later ones call the kept kernel directly,
    with every argument in signature order, and never consult launch's cache."""
    site, ptrs = _site()
    first = _launch.launch_site(site, ptrs)
    assert site.compiled is first and len(rec.triton_calls()) == 1
    _launch._LAUNCH_CACHE.clear()  # a direct site launch does not need it
    _, new_ptrs = _site()
    assert _launch.launch_site(site, new_ptrs) is first
    assert len(rec.triton_calls()) == 1, "second call: no Triton"
    (how, grid, args), = rec.direct_calls()  # fmt: skip
    assert how == "direct" and grid == (2, 1, 1)
    assert args == (*new_ptrs, 32, 0, 16, True), "the new tensors, then the site's ints and constexprs"


def test_site_unaligned_pointer_goes_through_launch_and_keeps_the_aligned_kernel(rec, monkeypatch, caplog):
    """A pointer 4 bytes off is specialised differently by Triton: it goes through launch (its own key),
    said once, naming the argument; the kernel kept for aligned pointers stays, and is used again for
    the next aligned call."""
    from archzoo.kernels import _dispatch

    monkeypatch.setattr(_dispatch, "_LOGGED", set())
    site, ptrs = _site()
    kept = _launch.launch_site(site, ptrs)
    _, odd = _site(offset=1)
    with caplog.at_level("WARNING", logger="archzoo.kernels"):
        _launch.launch_site(site, odd)
        _launch.launch_site(site, odd)
    msgs = [r.getMessage() for r in caplog.records if "not 16-byte aligned" in r.getMessage()]
    assert len(msgs) == 1 and "['x_ptr']" in msgs[0], msgs
    assert len(rec.triton_calls()) == 2, "misaligned: a miss in launch's cache, through Triton, then a hit"
    assert site.compiled is kept
    _launch.launch_site(site, _site()[1])
    assert len(rec.triton_calls()) == 2 and rec.direct_calls()[-1][0] == "direct"


def test_site_checks_only_the_leading_pointers_it_is_told_to(rec):
    """``checked=1``: the caller vouches for the rest (its own allocations); only x's alignment is read."""
    site, ptrs = _site(checked=1)
    _launch.launch_site(site, ptrs)
    y_odd = torch.zeros(65)[1:]
    _launch.launch_site(site, (ptrs[0], y_odd))
    assert len(rec.triton_calls()) == 1, "y is not checked: the kept kernel"
    x_odd = torch.zeros(65)[1:]
    _launch.launch_site(site, (x_odd, ptrs[1]))
    assert len(rec.triton_calls()) == 2, "x is checked: through launch"


def test_site_through_a_patched_launch_and_with_fast_launch_off(rec, monkeypatch):
    """``via`` sees the launches a site does not do itself: every one with FAST_LAUNCH off or no compiled
    kernel (the interpreter)."""
    seen = []

    def via(*args):
        seen.append(args)
        return _launch.launch(*args)

    monkeypatch.setattr(_launch, "FAST_LAUNCH", False)
    site, ptrs = _site()
    for _ in range(2):
        _launch.launch_site(site, ptrs, via)
    assert len(seen) == 2 and site.compiled is None and len(rec.triton_calls()) == 2
    monkeypatch.setattr(_launch, "FAST_LAUNCH", True)
    rec.compiled_none = True
    for _ in range(2):
        assert _launch.launch_site(site, ptrs, via) is None
    assert len(seen) == 4 and site.compiled is None


def test_backend_choice_traces_inside_a_compiled_region():
    """A speculative verify forward compiles each block whole, and the block's kernel wrapper asks
    ``triton_available``: it must be traceable (a module constant), not ``importlib.util.find_spec``, which dynamo
    refuses (it failed so on the H200, 2026-12-05)."""
    from archzoo.kernels import _dispatch

    def step(x):
        return x * 2 if _dispatch.triton_available() else x - 1

    compiled = torch.compile(step, fullgraph=True, backend="eager")
    x = torch.ones(3)
    assert torch.equal(compiled(x), step(x))


def test_use_triton_traces_inside_a_compiled_region(monkeypatch):
    """The whole backend choice (device test, installed check; the mode check is skipped while compiling) traces
    without a graph break, in interpreter mode as on CUDA."""
    from archzoo.kernels import _dispatch

    monkeypatch.setenv("TRITON_INTERPRET", "0")

    def step(x):
        return x * 2 if _dispatch.use_triton(x) else x - 1

    x = torch.ones(3)
    assert torch.equal(torch.compile(step, fullgraph=True, backend="eager")(x), step(x))


def test_pdl_launch_passes_the_option_and_is_its_own_key(rec):
    """launch(..., pdl=True) compiles with launch_pdl=True (the launcher then sets the attribute on every call)
    and caches under its own key, so a PDL and a plain launch of one kernel never share a compiled kernel."""
    plain = _launch.launch(**_args())
    pdl = _launch.launch(**_args(), pdl=True)
    assert pdl is not plain and len(rec.triton_calls()) == 2
    assert "launch_pdl" not in rec.triton_calls()[0][3] and rec.triton_calls()[1][3]["launch_pdl"] is True
    assert _launch.launch(**_args(), pdl=True) is pdl and len(rec.triton_calls()) == 2, "a hit"


def test_pdl_where_it_can_run_by_default_never_on_cpu(monkeypatch):
    """PDL by default wherever it can run (ENABLED None); never on the CPU (the interpreter), even when asked for;
    on a GPU where it cannot run it says why, by default or asked for; the decode kernels' plans carry the flag (a
    plan made with it off is not reused with it on)."""
    from archzoo.kernels import _pdl
    from archzoo.kernels.decode_linear import triton as gt

    assert _pdl.ENABLED is None and not _pdl.pdl_enabled(torch.device("cpu"))
    warned = []
    monkeypatch.setattr(_pdl, "once", lambda key, msg: warned.append(msg))
    monkeypatch.setattr(_pdl, "_MAJOR", {0: 8})
    assert not _pdl.pdl_enabled(torch.device("cuda", 0)) and "compute capability 8.x" in warned[-1], (
        "by default too, a GPU without PDL says so"
    )
    assert "ENABLED" not in warned[-1], "not asked for: the message does not say it was"
    monkeypatch.setattr(_pdl, "_MAJOR", {0: 9})
    if _pdl.HAS_PDL and torch.version.hip is None:
        assert _pdl.pdl_enabled(torch.device("cuda", 0)), "the default launches with PDL where it can"
    monkeypatch.setattr(_pdl, "ENABLED", False)
    assert not _pdl.pdl_enabled(torch.device("cuda", 0)), "False: never"
    monkeypatch.setattr(_pdl, "ENABLED", True)
    assert not _pdl.pdl_enabled(torch.device("cpu")), "never on the CPU"
    # asked for where it cannot run: said, not silent
    monkeypatch.setattr(_pdl, "_MAJOR", {0: 8})
    assert not _pdl.pdl_enabled(torch.device("cuda", 0)) and "compute capability 8.x" in warned[-1]
    assert "ENABLED, but" in warned[-1], "asked for: the message says so"
    monkeypatch.setattr(_pdl, "HAS_PDL", False)
    assert not _pdl.pdl_enabled(torch.device("cuda", 0)) and "gdc_wait" in warned[-1]
    monkeypatch.setattr(gt, "pdl_enabled", lambda device: True)
    x, w = torch.randn(1, 32), torch.randn(8, 32)
    gt._PLANS.clear()
    assert gt._plan(x, w, None, 1e-5).pdl is True
    monkeypatch.setattr(gt, "pdl_enabled", lambda device: False)
    assert gt._plan(x, w, None, 1e-5).pdl is False, "the flag is in the plan's key"
