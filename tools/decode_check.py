"""GPU check of the captured decode path: every student, compiled vs eager, tokens/s (not a benchmark
of record: `archzoo bench decode` is). Usage: python tools/decode_check.py --out DIR [CONFIG...]"""

from __future__ import annotations

import argparse
import json
import time
import traceback
from pathlib import Path

import torch

import archzoo


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("configs", nargs="*")
    p.add_argument("--out", required=True)
    p.add_argument("--batch-sizes", default="1,16")
    p.add_argument("--new", type=int, default=128)
    args = p.parse_args()
    configs = args.configs or sorted(str(x) for x in Path("configs/students").glob("*.yaml"))
    rows = []
    for cfg in configs:
        torch.manual_seed(0)
        model = archzoo.build_model(cfg).to("cuda", torch.bfloat16).eval()
        for B in (int(b) for b in args.batch_sizes.split(",")):
            row = {"config": cfg, "batch": B}
            try:
                ids = torch.randint(0, model.cfg.vocab_size, (B, 8), device="cuda")
                t0 = time.perf_counter()
                a = model.generate(ids, args.new, compile=True)
                row["first_call_s"] = time.perf_counter() - t0
                row["compile_s"] = model.last_generate_stats["compile_s"]
                a = model.generate(ids, args.new, compile=True)
                st = model.last_generate_stats
                row["graph_tok_s"] = B * (st["new_tokens"] - 1) / st["decode_s"]
                row["graph_ms_step"] = st["decode_s"] / (st["new_tokens"] - 1) * 1e3
                e = model.generate(ids, 16, compile=False)
                st = model.last_generate_stats
                row["eager_tok_s"] = B * (st["new_tokens"] - 1) / st["decode_s"]
                row["tokens_equal_first16"] = int((a[:, :24] == e).all(dim=1).sum())
            except Exception as ex:  # report and go on
                row["error"] = f"{type(ex).__name__}: {ex}"[:2000]
                traceback.print_exc()
            print(json.dumps(row), flush=True)
            rows.append(row)
        del model
        torch.cuda.empty_cache()
    Path(args.out, "decode_check.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
