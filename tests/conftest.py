from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

# Triton fixes interpreted vs compiled mode when it is first imported. Import the kernel modules
# now, before any test module, so that on a CPU-only machine they run in the interpreter
# (TRITON_INTERPRET=1 is set only for that import; the other tests keep the naive CPU path).
from archzoo.kernels._testing import import_triton_kernels  # noqa: E402

TRITON_KERNELS, TRITON_SKIP = import_triton_kernels(
    "archzoo.kernels.based_attention.triton",
    "archzoo.kernels.selective_scan.triton",
    "archzoo.kernels.causal_conv1d.triton",
    "archzoo.kernels.decode_attention.triton",
    "archzoo.kernels.decode_linear.triton",
    "archzoo.kernels.kd_loss.triton",
    "archzoo.kernels.linear_attention.triton",
    "archzoo.kernels.mamba_step.triton",
    "archzoo.kernels.s4_step.triton",
)

ROOT = Path(__file__).resolve().parents[1]
MODEL_CONFIGS = sorted((ROOT / "configs" / "models").glob("*.yaml"))


def graph_replayed(fn):
    """``fn()`` (already run eagerly, so its kernels are compiled) captured in a CUDA graph and replayed once ->
    (its output, the graph: keep the graph while the output is read, its memory is the graph's pool)."""
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()
    graph.replay()
    torch.cuda.synchronize()
    return out, graph


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """RMS of the difference over RMS of the reference."""
    out, ref = out.double(), ref.double()
    return ((out - ref).pow(2).mean().sqrt() / ref.pow(2).mean().sqrt().clamp_min(1e-30)).item()


def assert_close(name: str, out: torch.Tensor, ref: torch.Tensor, tol: float) -> None:
    assert out.shape == ref.shape, f"{name}: shape {tuple(out.shape)} != {tuple(ref.shape)}"
    err = rel_err(out, ref)
    assert err <= tol, f"{name}: relative error {err:.3e} > {tol:.1e}"


def recording_backend(graphs: list, ops: tuple[str, ...] = ("call_function",)):
    """A torch.compile backend that appends each graph dynamo compiles, as the targets of its ``ops`` nodes, to
    ``graphs`` and runs it as traced (what was traced, and how often, without compiling anything)."""

    def backend(gm, example_inputs):
        graphs.append([str(node.target) for node in gm.graph.nodes if node.op in ops])
        return gm.forward

    return backend


def generates_alike(model, prompts: torch.Tensor, monkeypatch, module, switch: str, op: str, new: int = 6) -> None:
    """``model.generate(prompts, new)`` with ``module.<switch>`` on (``op``'s Triton kernel must run) and off (``op``
    must not run): the same greedy tokens."""
    from archzoo.kernels import _dispatch, last_backend

    out = {}
    for on in (True, False):
        monkeypatch.setattr(module, switch, on)
        _dispatch.record(op, "none")
        out[on] = model.generate(prompts, new)
        assert last_backend(op) == ("triton" if on else "none"), f"{switch}={on}: {op} ran {last_backend(op)}"
    assert torch.equal(out[True], out[False]), f"{switch} on {out[True].tolist()} != off {out[False].tolist()}"


def compiled_steps(model, ids: torch.Tensor, cache, prompt: int, backend, before_step=None):
    """Prefill ``ids[:, :prompt]`` into ``cache``, then each later token as a decode step twice: through
    ``torch.compile(fullgraph=True)`` of the model on ``cache`` (with ``backend``) and eagerly on a copy of the cache.
    Yields (i, compiled logits, eager logits, the eager cache) a step, without gradients; ``before_step(i)`` first."""
    import copy

    with torch.no_grad():
        model(ids[:, :prompt], cache=cache)
        ref_cache = copy.deepcopy(cache)
        step = torch.compile(lambda t: model(t, cache=cache), backend=backend, fullgraph=True)
        for i in range(prompt, ids.shape[1]):
            if before_step is not None:
                before_step(i)
            got = step(ids[:, i : i + 1])
            yield i, got, model(ids[:, i : i + 1], cache=ref_cache), ref_cache


def load_tool(name: str):
    """tools/<name>.py as a module (tools are scripts, not a package); the tools folder is on sys.path while it
    loads, as when the script runs, so that a tool can import its siblings."""
    import importlib.util
    import sys

    tools = Path(__file__).resolve().parents[1] / "tools"
    sys.path.insert(0, str(tools))
    try:
        spec = importlib.util.spec_from_file_location(name, tools / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    finally:
        sys.path.remove(str(tools))
    return mod


def assert_stack_matches(prep: dict, out, want, kc_ref, vc_ref, tol: float) -> None:
    """A persistent stack kernel's x and the caches it wrote (``persistent_step_bench.prepare``'s, K back in head
    order) against the reference's, each by its largest error relative to the reference's largest value."""
    for name, got, ref in (
        ("x", out, want),
        ("K cache", prep["kc"][..., prep["inv"]], kc_ref),
        ("V cache", prep["vc"], vc_ref),
    ):
        err = ((got.float() - ref.float()).abs().max() / ref.float().abs().max()).item()
        assert err < tol, f"{name}: relative error {err:.3g}"


def load_yaml(path: Path | str) -> dict:
    return yaml.safe_load(Path(path).read_text())


def f64_model(src, init_std: float = 0.2, seed: int = 0):
    """A model in float64 with weights large enough that every layer visibly changes the logits."""
    import archzoo

    data = load_yaml(src) if isinstance(src, str | Path) else dict(src)
    data["init_std"] = init_std
    torch.manual_seed(seed)
    return archzoo.build_model(data).double().eval()


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """The tests run tiny float64 ops, where torch's intra-op threads cost more than they give
    (over 10x slower on a busy 2-core CI machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
# Tests that run a kernel on CPU tensors through Triton's interpreter: on a GPU machine Triton was imported
# compiled, so they cannot run there (the GPU tests cover the same kernels on CUDA tensors).
interpreter_only = pytest.mark.skipif(
    torch.cuda.is_available(), reason="runs Triton's interpreter on CPU tensors; a CUDA machine imports Triton compiled"
)
