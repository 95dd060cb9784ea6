"""Quality right after conversion, before any training: the table of docs/conversion.md.

    python -m archzoo.bench.conversion --teacher smollm2-135m configs/students/*.yaml \
        --out docs/conversion.json --markdown docs/conversion_table.md

For each student: perplexity on the held-out Shakespeare split (never trained on), the mean
per-token KL(teacher || student), and cache bytes at 4k and 32k tokens (bf16, batch 1), next to
the teacher's own figures.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ..cache import cache_bytes


@torch.no_grad()
def evaluate(model, blocks: torch.Tensor, teacher=None, batch_size: int = 8) -> dict[str, float]:
    """Mean token NLL -> perplexity, and KL(teacher || model) per token when a teacher is given."""
    dev = model.embed.weight.device
    nll = kl = 0.0
    n = 0
    for i in range(0, blocks.shape[0], batch_size):
        b = blocks[i : i + batch_size].to(dev)
        inp, tgt = b[:, :-1], b[:, 1:]
        logp = F.log_softmax(model(inp).float(), dim=-1)
        nll += -logp.gather(-1, tgt[..., None]).sum().item()
        if teacher is not None:
            logq = F.log_softmax(teacher(inp).float(), dim=-1)
            kl += (logq.exp() * (logq - logp)).sum().item()
        n += tgt.numel()
    out = {"ppl": math.exp(nll / n), "nll": nll / n, "tokens": n}
    if teacher is not None:
        out["kl"] = kl / n
    return out


def heldout_blocks(tokenizer, block_len: int, max_blocks: int) -> torch.Tensor:
    from ..data import pack_blocks, shakespeare_texts, tokenize_texts

    ids = tokenize_texts(shakespeare_texts("heldout", edition="modern"), tokenizer)
    return pack_blocks(ids, block_len, seed=0)[:max_blocks]


def main(argv: list[str] | None = None) -> int:
    from ..convert import convert
    from ..teacher import resolve_teacher

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("students", nargs="+")
    p.add_argument("--teacher", default="smollm2-135m")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--block-len", type=int, default=512)
    p.add_argument("--max-blocks", type=int, default=64)
    p.add_argument("--out", default=None, help="JSON results")
    p.add_argument("--markdown", default=None, help="markdown table")
    args = p.parse_args(argv)

    teacher = resolve_teacher(args.teacher, dtype=torch.float32).to(args.device).eval()
    blocks = heldout_blocks(teacher.tokenizer, args.block_len, args.max_blocks)
    rows = [{"model": "teacher", **evaluate(teacher, blocks)}]
    rows[0]["kl"] = 0.0
    rows[0]["cache_4k"] = cache_bytes(teacher.cfg, 1, 4096)
    rows[0]["cache_32k"] = cache_bytes(teacher.cfg, 1, 32768)
    rows[0]["params"] = teacher.num_parameters()
    for path in args.students:
        t0 = time.perf_counter()
        student = convert(teacher, path).eval()
        row = {"model": Path(path).stem, "config": str(path), "convert_s": time.perf_counter() - t0}
        row.update(evaluate(student, blocks, teacher))
        row["cache_4k"] = cache_bytes(student.cfg, 1, 4096)
        row["cache_32k"] = cache_bytes(student.cfg, 1, 32768)
        row["params"] = student.num_parameters()
        row["notes"] = sorted(set(getattr(student, "convert_notes", [])))[:5]
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "notes"}), flush=True)
        del student
    meta = {
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
        "torch": torch.__version__,
        "teacher": args.teacher,
        "heldout_tokens": rows[0]["tokens"],
        "block_len": args.block_len,
    }
    if args.out:
        Path(args.out).write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    table = markdown_table(rows)
    if args.markdown:
        Path(args.markdown).write_text(table)
    print(table)
    return 0


def markdown_table(rows: list[dict]) -> str:
    mib = 2**20
    t = rows[0]
    lines = [
        "| model | params | held-out ppl | KL to teacher (nats/token) | cache @4k | cache @32k | vs teacher |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['params'] / 1e6:.0f}M | {r['ppl']:.1f} | {r['kl']:.3f} | "
            f"{r['cache_4k'] / mib:.1f} MiB | {r['cache_32k'] / mib:.1f} MiB | {r['cache_32k'] / t['cache_32k']:.2f}x |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
