"""Passkey retrieval: the examples' layout (exact length, the key once in the filler at spread depths, the
answer last and scored in next-token layout) and the accuracy of a model that knows the answer and of one
that does not."""

from __future__ import annotations

import pytest
import torch

import archzoo
from archzoo.data import passkey_accuracy, passkey_examples


class CharTokenizer:
    """One id per character (ids 3..), as a Hugging Face tokenizer is called."""

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [3 + ord(c) for c in text]}

    def decode(self, ids) -> str:
        return "".join(chr(i - 3) for i in ids)


def _text(ids) -> str:
    return CharTokenizer().decode([int(i) for i in ids])


@pytest.mark.parametrize("seq_len", [300, 433])
def test_examples_layout(seq_len):
    x, y = passkey_examples(CharTokenizer(), 5, seq_len, seed=3)
    assert x.shape == y.shape == (5, seq_len)
    depths = []
    for i in range(5):
        answer = y[i][y[i] != -100]
        n, key = len(answer), _text(answer).strip()
        assert len(key) == 5 and key.isdigit()
        text = _text(x[i, : seq_len - n + 1])  # the prompt; the inputs go on with the answer but its last token
        assert text.startswith("There is an important info") and text.endswith("What is the pass key? The pass key is")
        assert torch.equal(x[i, seq_len - n + 1 :], answer[:-1]), "teacher-forced: the answer's tokens follow"
        assert text.count(f"The pass key is {key}.") == 1, "the key is stated once, inside the filler"
        assert (y[i, : seq_len - n] == -100).all() and torch.equal(y[i, seq_len - n :], answer)
        depths.append(text.index("The pass key is"))
    assert depths == sorted(depths) and depths[0] < 100 and depths[-1] > seq_len - 110, "depths spread 0 .. 1"
    again, _ = passkey_examples(CharTokenizer(), 5, seq_len, seed=3)
    assert torch.equal(x, again)


def test_too_short():
    with pytest.raises(ValueError, match="too short for a passkey example"):
        passkey_examples(CharTokenizer(), 2, 50)


def test_accuracy_of_an_oracle_and_of_a_random_model():
    x, y = passkey_examples(CharTokenizer(), 6, 260, seed=0)

    class Oracle(torch.nn.Module):
        """hidden_states -> one-hot of the next token; its lm_head is the identity."""

        def __init__(self, vocab: int = 160):
            super().__init__()
            self.lm_head = torch.nn.Identity()
            self.lm_head.weight = torch.zeros(1)
            self.vocab, self.truth = vocab, None

        def hidden_states(self, ids):
            nxt = self.truth[: ids.shape[0]]
            return torch.nn.functional.one_hot(nxt.clamp(min=0), self.vocab).float()

    oracle = Oracle()
    oracle.register_parameter("p", torch.nn.Parameter(torch.zeros(1)))
    full = torch.cat([x[:, 1:], y[:, -1:]], dim=1)  # what follows each input position
    oracle.truth = full
    assert passkey_accuracy(oracle, x, y, batch_size=6) == 1.0
    oracle.truth = full.clone()
    oracle.truth[2, -2] += 1  # one digit wrong in example 2
    assert passkey_accuracy(oracle, x, y, batch_size=6) == pytest.approx(5 / 6)
    cfg = {"vocab_size": 160, "d_model": 32, "n_layers": 1, "mixer": {"type": "attention", "n_heads": 2}}
    model = archzoo.build_model({**cfg, "ffn": {"type": "none"}})
    assert passkey_accuracy(model, x, y) < 0.5
