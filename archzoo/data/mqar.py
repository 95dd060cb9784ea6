"""Multi-query associative recall (MQAR), as defined by Zoology (Arora et al. 2023, "Zoology:
Measuring and Improving Recall in Efficient Language Models").

A sequence first lists ``num_kv_pairs`` key-value pairs (keys from one half of the vocabulary,
values from the other, keys distinct), then, in the rest of the sequence, asks for some of the
keys again; the model must emit the key's value right after it. Query positions are drawn with
a power-law preference for short gaps (``power_a``, Zoology's default 0.01), the other slots hold
a filler token. Only the answers count: ``targets`` is -100 everywhere else.

Token 0 is the filler; keys are ``1 .. V/2 - 1`` and values ``V/2 .. V - 1`` of ``vocab_size`` V.
"""

from __future__ import annotations

import torch


def mqar_examples(
    n_examples: int,
    vocab_size: int,
    seq_len: int,
    num_kv_pairs: int,
    power_a: float = 0.01,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """-> inputs (N, seq_len) LongTensor, targets (N, seq_len) with -100 except after each query key.

    ``targets[i, t]`` is the token that should follow ``inputs[i, t]`` (next-token layout), so a
    model's logits at t are scored against it.
    """
    half = vocab_size // 2
    if n_examples < 1 or seq_len < 1:
        raise ValueError(f"n_examples and seq_len must be positive, got {n_examples} and {seq_len}")
    if num_kv_pairs < 1 or half - 1 < num_kv_pairs:
        raise ValueError(f"num_kv_pairs={num_kv_pairs} needs 1 <= pairs <= vocab_size // 2 - 1 = {half - 1}")
    context = 2 * num_kv_pairs
    if seq_len < context + 2 * num_kv_pairs:
        raise ValueError(
            f"seq_len={seq_len} is too short for {num_kv_pairs} pairs and their queries (need >= {4 * num_kv_pairs})"
        )
    g = torch.Generator().manual_seed(seed)
    N, P = n_examples, num_kv_pairs
    keys = torch.stack([torch.randperm(half - 1, generator=g)[:P] + 1 for _ in range(N)])  # (N, P) distinct
    values = torch.randint(half, vocab_size, (N, P), generator=g)  # (N, P)
    inputs = torch.zeros(N, seq_len, dtype=torch.long)
    targets = torch.full((N, seq_len), -100, dtype=torch.long)
    inputs[:, 0:context:2] = keys
    inputs[:, 1:context:2] = values
    # Query slots: pairs of positions (key, answer) after the context, chosen with p(gap) ~ gap^(a-1).
    n_slots = (seq_len - context) // 2
    gaps = torch.arange(1, n_slots + 1, dtype=torch.float64)
    weights = power_a * gaps ** (power_a - 1)
    for i in range(N):
        slots = torch.multinomial(weights, P, replacement=False, generator=g)  # (P,)
        order = torch.randperm(P, generator=g)
        pos = context + 2 * slots
        inputs[i, pos] = keys[i, order]
        inputs[i, pos + 1] = values[i, order]
        targets[i, pos] = values[i, order]
    return inputs, targets


@torch.no_grad()
def mqar_accuracy(model, inputs: torch.Tensor, targets: torch.Tensor, batch_size: int = 64) -> float:
    """Fraction of queries whose value the model predicts (greedy) right after the key."""
    dev = next(model.parameters()).device
    correct = total = 0
    for a in range(0, inputs.shape[0], batch_size):
        x, y = inputs[a : a + batch_size].to(dev), targets[a : a + batch_size].to(dev)
        pred = model(x).argmax(-1)
        mask = y != -100
        correct += int((pred[mask] == y[mask]).sum())
        total += int(mask.sum())
    return correct / max(total, 1)
