"""How many graphs dynamo compiles for one training step of each student, every block compiled as the trainer's
``speed.compile`` does (``Module.compile`` per block), under bf16 autocast on the CPU.

    python tools/count_compiled_graphs.py mqa mla cla2          # names in configs/students/

Blocks of one kind share a graph; a count that grows with the depth (8, dynamo's recompile limit, for a
30-layer student) means a block recompiles per layer and the blocks past the limit train eagerly (docs/
distillation.md, trainer throughput). The eager backend: tracing only, no code generation, seconds a student.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch._dynamo.utils import counters

import archzoo

ROOT = Path(__file__).resolve().parents[1]


def count(name: str, tokens: int = 64) -> tuple[int, int]:
    """-> (layers, frames compiled) for configs/students/<name>.yaml."""
    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    model = archzoo.build_model(archzoo.load_config(ROOT / "configs" / "students" / f"{name}.yaml")).train()
    for block in model.blocks:
        block.compile(backend="eager")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.randint(0, model.cfg.vocab_size, (1, tokens)))
    out.float().sum().backward()
    return len(model.blocks), counters["frames"]["total"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("students", nargs="+", help="names in configs/students/ (without .yaml)")
    for name in p.parse_args().students:
        layers, frames = count(name)
        print(f"{name}: {layers} layers, {frames} graphs compiled")


if __name__ == "__main__":
    main()
