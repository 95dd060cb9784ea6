"""Passkey retrieval (Mohtashami & Jaggi 2023, "Landmark Attention"): a five-digit key stated once inside long
filler text, asked for at the end. A recall test the teacher passes: SmolLM2-135M-Instruct retrieves the key at
every depth of 600-2,500-token prompts (checked on the CPU in fp32), where MQAR at 256 tokens leaves it at 1-4%.
So it shows what a student's cache keeps over distance: a sliding window loses a key that lies before its
window, a recurrent state may or may not carry it.

Each example is ``intro + filler (before) + key sentence + filler (after) + question + answer``, token by token,
exactly ``seq_len + 1`` tokens (the last filler repeat cut to fit); the key sits at depth ``i / (n - 1)`` of the
filler in example i (0 = right after the intro, 1 = right before the question). Inputs are the first ``seq_len``
tokens; ``targets`` is -100 except at the positions that predict the answer's tokens (next-token layout, as
``mqar_examples``). Scored by ``passkey_accuracy``: the fraction of examples whose answer tokens are all the
model's greedy choices (teacher-forced).
"""

from __future__ import annotations

import torch

INTRO = "There is an important info hidden inside a lot of irrelevant text. Find it and memorize it."
FILLER = " The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
KEY = " The pass key is {key}. Remember it. {key} is the pass key."
QUESTION = " What is the pass key? The pass key is"


def _ids(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def passkey_examples(tokenizer, n_examples: int, seq_len: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """-> inputs (N, seq_len), targets (N, seq_len): -100 except where the next token is one of the answer's."""
    if n_examples < 1:
        raise ValueError(f"n_examples must be positive, got {n_examples}")
    g = torch.Generator().manual_seed(seed)
    intro, filler, question = _ids(tokenizer, INTRO), _ids(tokenizer, FILLER), _ids(tokenizer, QUESTION)
    inputs = torch.empty(n_examples, seq_len, dtype=torch.long)
    targets = torch.full((n_examples, seq_len), -100, dtype=torch.long)
    for i in range(n_examples):
        key = str(int(torch.randint(10_000, 100_000, (1,), generator=g)))
        key_ids, answer = _ids(tokenizer, KEY.format(key=key)), _ids(tokenizer, " " + key)
        room = seq_len + 1 - len(intro) - len(key_ids) - len(question) - len(answer)  # filler tokens to place
        if room < 0:
            raise ValueError(f"seq_len={seq_len} is too short for a passkey example (at least {seq_len - room})")
        stream = (filler * (room // len(filler) + 1))[:room]
        depth = i / (n_examples - 1) if n_examples > 1 else 0.5
        cut = round(depth * room)
        seq = intro + stream[:cut] + key_ids + stream[cut:] + question + answer  # seq_len + 1 tokens
        inputs[i] = torch.tensor(seq[:seq_len])
        start = seq_len - len(answer)  # inputs[start] is the question's last token: it predicts answer[0]
        targets[i, start:] = torch.tensor(answer)
    return inputs, targets


@torch.no_grad()
def passkey_accuracy(model, inputs: torch.Tensor, targets: torch.Tensor, batch_size: int = 4) -> float:
    """Fraction of examples whose every answer token is the model's argmax there (teacher-forced). The LM head
    runs on the answer positions only (``hidden_states`` then ``lm_head``), not on every position of the prompt."""
    dev = next(model.parameters()).device
    n_answer = int((targets != -100).sum(dim=1).max())  # the answers end every row; the longest one's span
    right = 0
    for a in range(0, inputs.shape[0], batch_size):
        x, y = inputs[a : a + batch_size].to(dev), targets[a : a + batch_size, -n_answer:].to(dev)
        h = model.hidden_states(x)[:, -n_answer:]  # (b, n_answer, d): the positions that predict the answer
        pred = model.lm_head(h.to(model.lm_head.weight.dtype)).argmax(-1)
        right += int(((pred == y) | (y == -100)).all(dim=1).sum())
    return right / inputs.shape[0]
