"""Passkey retrieval (``archzoo.data.passkey``) for the teacher and distilled students, by prompt length: the
recall test the teacher passes, where MQAR at 256 tokens does not tell the students apart. Not yet a column of
the Pareto report; the GPU queue's ``passkey`` job runs this over the students of its lease.

    python tools/eval_passkey.py smollm2-135m runs/smollm2-swa/student runs/smollm2-mamba/student \
        --lengths 1024,2048,4096 --examples 32 --out passkey.json

Every model reads the same examples, tokenized by the first MODEL's tokenizer (the teacher's). Writes the JSON
(atomically, after every model) and a Markdown table beside it.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from archzoo.bench.common import atomic_write, parse_dtype
from archzoo.data import passkey_accuracy, passkey_examples


def load(arg: str, dtype: torch.dtype, device: str):
    from archzoo import from_pretrained
    from archzoo.teacher import resolve_teacher

    path = Path(arg)
    model = from_pretrained(path) if (path / "config.yaml").is_file() else resolve_teacher(arg)
    return model.to(device=device, dtype=dtype).eval()


def markdown(res: dict) -> str:
    lengths = res["lengths"]
    lines = [f"# Passkey retrieval ({res['examples']} examples a length, {res['device']}, {res['dtype']})", "",
             f"    {res['command']}", "", "| model | " + " | ".join(f"{n:,} tokens" for n in lengths) + " |",
             "|---|" + "--:|" * len(lengths)]  # fmt: skip
    for r in res["rows"]:
        lines.append(f"| {r['model']} | " + " | ".join(f"{r['accuracy'][str(n)]:.0%}" for n in lengths) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="+", help="teacher name / .gguf / HF folder, or a saved student folder")
    p.add_argument("--lengths", default="1024,2048,4096")
    p.add_argument("--examples", type=int, default=32)
    p.add_argument("--dtype", default="bf16")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, type=Path)
    args = p.parse_args()
    lengths = [int(n) for n in args.lengths.split(",")]
    dtype = parse_dtype(args.dtype)
    res = {"command": "python tools/eval_passkey.py " + " ".join(__import__("sys").argv[1:]), "lengths": lengths,
           "examples": args.examples, "dtype": args.dtype, "seed": args.seed,
           "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu", "rows": []}  # fmt: skip
    examples = None
    for arg in args.models:
        t0 = time.perf_counter()
        model = load(arg, dtype, args.device)
        if examples is None:  # the first model's tokenizer (the teacher's) makes every model's examples
            examples = {n: passkey_examples(model.tokenizer, args.examples, n, args.seed) for n in lengths}
        acc = {str(n): passkey_accuracy(model, *examples[n]) for n in lengths}
        res["rows"].append({"model": arg, "accuracy": acc, "seconds": time.perf_counter() - t0})
        print(arg, acc, flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(args.out, json.dumps(res, indent=1) + "\n")
        atomic_write(args.out.with_suffix(".md"), markdown(res))
        del model
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
