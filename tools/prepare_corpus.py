"""Build a distill run's teacher-generated corpora into the archzoo cache, as the run itself would, and time it.

    python tools/prepare_corpus.py configs/distill/smollm2-mla.yaml [--pack DIR]

For every ``teacher_generated`` source of the run YAML, ``archzoo.data.sources.source_texts`` is called with the
run's teacher: the corpus is generated where it is missing (``<cache>/corpora/<key>.jsonl``) and found where it is
not, so a later ``archzoo distill`` of any run with the same source settings starts at once. Prints one JSON line
per source (cache path, texts, seconds, tokens/s of the generation). With ``--pack DIR`` the cache's ``corpora/``
is also written to DIR as ``corpora.tgz.NN`` parts of at most 15 MiB (GPU machines send back files of 16 MiB at
most; ``tools/device/setup.sh`` unpacks parts it finds under ``.big/*/corpora.tgz.*``).

A corpus above ``archzoo.data.generate.SHARD_TOKENS`` is generated shard by shard (each shard's speed is logged).
Interrupted (Ctrl-C, or ``timeout -s INT``), this packs the finished shards all the same, so the next call (or
the next machine, given the parts) resumes at the shard that was cut.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import time
from pathlib import Path


def main() -> None:
    from archzoo.teacher import resolve_teacher
    from archzoo.train.config import load_run_config

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run")
    p.add_argument("--pack", help="write the cache's corpora/ as corpora.tgz.NN parts of 15 MiB here")
    args = p.parse_args()
    run = load_run_config(args.run)
    specs = [s for s in (run.data.sources or []) if s.source == "teacher_generated"]
    if not specs:
        raise SystemExit(f"{args.run}: no teacher_generated source")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    teacher = resolve_teacher(run.teacher_src())
    try:
        for spec in specs:
            generate(spec, teacher)
    except KeyboardInterrupt:
        print("interrupted: the finished shards stay in the cache" + (", packed below" if args.pack else ""))
    if args.pack:
        pack(Path(args.pack))


def generate(spec, teacher) -> None:
    """One source's corpus, generated where missing; prints what it holds and how fast it came."""
    from archzoo.data.sources import source_texts

    t0 = time.perf_counter()
    texts = source_texts(spec, teacher=teacher)
    secs = time.perf_counter() - t0
    ids = teacher.tokenizer(texts[:200])["input_ids"]
    per_text = sum(map(len, ids)) / max(len(ids), 1)
    print(json.dumps({"size_tokens": spec.size_tokens, "seed": spec.seed, "texts": len(texts), "seconds": secs,
                      "tokens_per_s_if_generated": spec.size_tokens / secs, "tokens_per_text": per_text}),
          flush=True)  # fmt: skip


def pack(out: Path) -> None:
    """The cache's corpora/ (whole corpora and the shards of unfinished ones) as corpora.tgz.NN parts of 15 MiB."""
    from archzoo.fetch import cache_root

    out.mkdir(parents=True, exist_ok=True)
    tar = subprocess.Popen(["tar", "czf", "-", "-C", str(cache_root()), "corpora"], stdout=subprocess.PIPE)
    subprocess.run(["split", "-b", "15M", "-d", "-", str(out / "corpora.tgz.")], stdin=tar.stdout, check=True)
    if tar.wait() != 0:
        raise SystemExit("tar failed")
    print("packed:", sorted(x.name for x in out.iterdir() if x.name.startswith("corpora.tgz.")))


if __name__ == "__main__":
    main()
