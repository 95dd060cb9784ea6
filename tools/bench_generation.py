"""Teacher-text generation speed: ``archzoo.data.generate_texts`` as the corpus builder calls it, timed.

    python tools/bench_generation.py --batch-sizes 128,512 --batches 2 [--dtype bf16]

For each batch size, twice (the first run compiles and captures the decode step): 2 batches of the training
prompts, a different prompt per row, 256 new tokens at temperature 1.0 and top-p 0.95, on the real teacher
(``smollm2-135m``; CUDA when available). Prints tokens/s, and the split of the time into prefill, decode and
compile (``last_generate_stats``, summed over the batches). The 2026-12-05 figures of docs/distillation.md
("Generation speed") came from this loop, before the split was recorded.
"""

from __future__ import annotations

import argparse
import time

import torch


def main() -> None:
    from archzoo.data.generate import generate_texts
    from archzoo.data.prompts import prompt_set
    from archzoo.teacher import resolve_teacher

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch-sizes", default="128,512")
    p.add_argument("--batches", type=int, default=2)
    p.add_argument("--new-tokens", type=int, default=256)
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    args = p.parse_args()
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    model = resolve_teacher("smollm2-135m").to(dev, torch.bfloat16 if args.dtype == "bf16" else torch.float32)
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    for bs in (int(b) for b in args.batch_sizes.split(",")):
        n = bs * args.new_tokens * args.batches
        for rep in range(2):
            stats: dict = {}
            sync()
            t0 = time.perf_counter()
            texts = generate_texts(model, None, args.new_tokens, bs, 1.0, 0.95, prompts=prompt_set("train"), seed=rep,
                                   size_tokens=n, stats=stats)  # fmt: skip
            sync()
            dt = time.perf_counter() - t0
            split = ", ".join(f"{k} {stats.get(k, 0.0):.1f} s" for k in ("prefill_s", "decode_s", "compile_s"))
            print(f"batch {bs} run {rep}: {n} tokens in {dt:.1f} s = {n / dt:.0f} tokens/s, {len(texts)} texts "
                  f"({args.dtype}; {split})", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
