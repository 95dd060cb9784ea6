"""``archzoo bench decode --prompts``: real text cut into one window per row, the same windows for every
implementation of a shape (speculative rows included), and its errors before anything is written."""

from __future__ import annotations

import json

import pytest
import torch

import archzoo
from archzoo.bench.common import text_prompts
from archzoo.cli import main
from archzoo.errors import UserError

from conftest import ROOT

GQA = str(ROOT / "configs" / "models" / "gqa.yaml")
MAMBA = str(ROOT / "configs" / "models" / "mamba.yaml")
TINY = ["--device", "cpu", "--dtype", "fp32", "--prompt-lens", "8", "--new-tokens", "4"]
WORDS = "the cat sat on a mat and then it ran to see what was in the box by door".split()


def _word_tokenizer():
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<unk>": 0, "<eos>": 1, **{w: i + 2 for i, w in enumerate(dict.fromkeys(WORDS))}}
    tok = Tokenizer(models.WordLevel(vocab, "<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<eos>")


@pytest.fixture
def student(tmp_path):
    """A tiny GQA student folder saved with a word-level tokenizer."""
    model = archzoo.build_model(archzoo.load_config(GQA))
    model.tokenizer = _word_tokenizer()
    model.save_pretrained(tmp_path / "student")
    return str(tmp_path / "student")


def test_text_prompts_spread_windows():
    stream = torch.arange(100)
    p = text_prompts(stream, 4, 10, torch.device("cpu"))
    assert p.shape == (4, 10) and p[0, 0] == 0 and p[-1, -1] == 99  # first and last windows at the ends
    assert all(torch.equal(row, torch.arange(row[0], row[0] + 10)) for row in p)  # contiguous text
    assert len({int(r[0]) for r in p}) == 4  # distinct windows
    short = text_prompts(stream, 16, 10, torch.device("cpu"))  # 160 tokens wanted from 100: windows overlap
    assert short.shape == (16, 10) and short[-1, -1] == 99
    assert text_prompts(stream, 1, 10, torch.device("cpu"))[0, 0] == 0
    with pytest.raises(UserError, match="holds 100 tokens, fewer than a 101-token prompt"):
        text_prompts(stream, 1, 101, torch.device("cpu"))


def test_text_prompts_reach_every_row_and_the_draft(tmp_path, student, monkeypatch):
    """The plain and speculative rows decode the same windows of the file, tokenized by the target's tokenizer."""
    import archzoo.bench.decode as bd

    text = tmp_path / "text.txt"
    text.write_text(" ".join(WORDS * 6))
    seen = []
    real = bd.run_archzoo
    monkeypatch.setattr(bd, "run_archzoo", lambda model, ids, **k: seen.append(ids.clone()) or real(model, ids, **k))
    out = tmp_path / "out"
    argv = [student, *TINY, "--batch-sizes", "2", "--prompts", str(text), "--draft", MAMBA, "--num-draft-tokens", "2"]
    assert main(["bench", "decode", *argv, "--out", str(out)]) == 0
    res = json.loads((out / "decode.json").read_text())
    assert res["prompts"] == str(text) and {r["prompts"] for r in res["rows"]} == {str(text)}
    stream = archzoo.data.tokenize_texts([text.read_text()], _word_tokenizer())
    want = text_prompts(stream, 2, 8, torch.device("cpu"))
    # the plain row, the draft timed alone, the speculative row
    assert len(seen) == 3 and all(torch.equal(ids, want) for ids in seen)
    assert not torch.equal(want[0], want[1])  # one window per row, not one prompt repeated
    assert (want != 0).all()  # words of the text (and its end), no <unk>


@pytest.mark.parametrize(
    "which, message",
    [
        ("no/such/text.txt", "--prompts 'no/such/text.txt': expected random, a held-out text set"),
        ("yaml", "is a model YAML (random weights, no tokenizer)"),
        ("bare", "has no tokenizer/"),
    ],
)
def test_bad_prompts_refused_before_writing(tmp_path, which, message):
    """One line naming what is wrong, exit 2, nothing written."""
    from test_bench_decode import _assert_refused

    model, prompts = GQA, "python-docs"
    if which == "bare":
        model = str(tmp_path / "bare")
        archzoo.build_model(archzoo.load_config(GQA)).save_pretrained(model)
    elif which != "yaml":
        prompts = which
    _assert_refused(tmp_path / "out", [model, *TINY, "--prompts", prompts], message)
