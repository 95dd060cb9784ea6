"""What a compiled decode step launches, read from Inductor's generated code on the CPU: the kernels Inductor
generates (on a GPU each is one Triton kernel) and the calls it leaves to others (archzoo's custom ops, each one
launch of its Triton kernel but decode attention with several splits (split and combine: two) and the GEMV with
split-K (two), one each with their ``FIXUP`` on; extern GEMMs).

    python tools/step_kernels_cpu.py [configs/models/gqa.yaml] [--decode-linear cublas,kernel] [--batch 2]
    python tools/step_kernels_cpu.py configs/models/moe.yaml --batch 1 --moe-experts reductions,kernel,fused

The model is built with random weights in fp32; a prompt fills the cache, then one decode step is compiled with
``torch.compile(backend="inductor", fullgraph=True)`` and its generated code is read. Triton's interpreter runs
the custom ops (``TRITON_INTERPRET=1`` is set here). Inductor's graph is the GPU's up to code generation, so the
counts are the GPU's, less what cuBLAS does inside ``extern_kernels.mm``. Docs: docs/kernels.md, "Q|K|V with
RoPE and the cache write".
"""

from __future__ import annotations

import argparse
import collections
import itertools
import os
import re

os.environ.setdefault("TRITON_INTERPRET", "1")  # before Triton is imported

import torch  # noqa: E402


def step_code(config: str, linear: str, batch: int, experts: str | None = None) -> str:
    from torch._inductor.utils import run_and_get_code

    import archzoo
    from archzoo.layers import fused, moe

    torch.manual_seed(0)
    if experts is not None:
        moe.DECODE_EXPERTS = experts  # a few tokens' MoE: compiled reductions, two kernels, or fused with the routing
    model = archzoo.build_model(config).float().eval()
    fused.DECODE_LINEAR = linear
    model.refresh_fused()
    cache = model.new_cache(batch, 64, dtype=torch.float32)
    cache.fused_weights = True
    ids = torch.randint(0, model.cfg.vocab_size, (batch, 6))
    torch._dynamo.reset()
    with torch.no_grad():
        model(ids[:, :5], cache=cache)
        step = torch.compile(lambda t: model(t, cache=cache), backend="inductor", fullgraph=True)
        _, codes = run_and_get_code(step, ids[:, 5:6])
    torch._dynamo.reset()
    return "\n".join(codes)


def launches(code: str) -> dict[str, int]:
    """Calls in the step's ``call`` function: generated kernels by name, custom ops, extern kernels."""
    body = code.split("def call(", 1)[1]
    out: collections.Counter[str] = collections.Counter()
    generated = re.findall(r"^\s+(?:buf\w+ = )?(cpp_fused_\w+|triton_\w+)(?:\.run)?\(", body, flags=re.M)
    out["generated kernel"] = len(generated)
    for op in re.findall(r"torch\.ops\.archzoo\.(\w+)\.default\(", body):
        out[f"archzoo::{op}"] += 1
    for ext in re.findall(r"extern_kernels\.(\w+)\(", body):
        out[f"extern {ext}"] += 1
    for ext in re.findall(r"torch\.ops\.aten\.(\w+)\.\w+\(", body):
        out[f"aten {ext}"] += 1
    return dict(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("configs", nargs="*", default=["configs/models/gqa.yaml"])
    p.add_argument("--decode-linear", default="cublas,kernel")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--moe-experts", default=None, help="forms of layers.moe.DECODE_EXPERTS, comma-separated")
    args = p.parse_args()
    import archzoo

    for config in args.configs:
        n_layers = archzoo.load_config(config).n_layers
        for linear, experts in itertools.product(args.decode_linear.split(","), (args.moe_experts or "-").split(",")):
            experts = None if experts == "-" else experts
            got = launches(step_code(config, linear, args.batch, experts))
            two = ("archzoo::decode_attention", "archzoo::moe_decode_experts", "archzoo::moe_decode_step")
            total = sum(v * (2 if k in two else 1) for k, v in got.items())
            form = f" DECODE_EXPERTS={experts}" if experts else ""
            print(f"{config} DECODE_LINEAR={linear}{form}: {total} launches a step ({n_layers} layers; decode "
                  "attention and the MoE ops counted as their two kernels)")  # fmt: skip
            for k, v in sorted(got.items(), key=lambda kv: -kv[1]):
                print(f"  {v:4d}  {k}")


if __name__ == "__main__":
    main()
