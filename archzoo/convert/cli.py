"""``archzoo convert --teacher SRC --student CONFIG --output-dir DIR [--option KEY=VALUE ...]``."""

from __future__ import annotations

import argparse

import yaml


def parse_options(items: list[str]) -> dict:
    from ..errors import UserError

    out = {}
    for item in items:
        if "=" not in item:
            raise UserError(f"--option {item!r}: expected KEY=VALUE")
        key, value = item.split("=", 1)
        out[key] = yaml.safe_load(value)
    return out


def convert_cli(args: argparse.Namespace) -> int:
    from ..errors import UserError
    from ..teacher import resolve_teacher
    from . import convert

    teacher = resolve_teacher(args.teacher)
    try:
        student = convert(teacher, args.student, **parse_options(args.option))
    except ValueError as e:
        if type(e) is ValueError:
            raise UserError(f"{args.student}: {e}") from None
        raise
    student.save_pretrained(args.output_dir)
    for note in getattr(student, "convert_notes", []):
        print(f"note: {note}")
    print(f"wrote {args.output_dir} ({student.num_parameters() / 1e6:.1f}M parameters)")
    return 0
