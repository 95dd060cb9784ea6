"""Ops a training step dispatches: the teacher's forward, the student's forward and its backward, counted by a
``TorchDispatchMode`` on the CPU (the same ops a GPU launches eagerly, each with its host cost).

    python tools/count_step_ops.py [--student configs/students/mla.yaml] [--tokens 8]

The teacher has ``configs/students/teacher.yaml``'s shape with random weights; the student is converted from
it (data-free). Prints each count and its most frequent ops (docs/distillation.md, "Trainer throughput").
"""

from __future__ import annotations

import argparse

import torch

from archzoo.bench.common import OpCounter


def count(fn) -> tuple[int, list]:
    with OpCounter() as c:
        fn()
    return c.n, c.ops.most_common(6)


def main() -> None:
    import archzoo
    from archzoo import build_model, load_config
    from archzoo.train.forward import final_hidden

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--student", default="configs/students/mla.yaml")
    p.add_argument("--tokens", type=int, default=8)
    args = p.parse_args()
    torch.manual_seed(0)
    teacher = build_model(load_config("configs/students/teacher.yaml")).eval()
    student = archzoo.convert(teacher, load_config(args.student))
    ids = torch.randint(0, teacher.cfg.vocab_size, (1, args.tokens))
    with torch.no_grad():
        print("teacher forward", *count(lambda: final_hidden(teacher, ids)))
    out = {}
    print("student forward", *count(lambda: out.setdefault("h", final_hidden(student, ids))))
    print("student backward", *count(lambda: out["h"].float().pow(2).mean().backward()))


if __name__ == "__main__":
    main()
