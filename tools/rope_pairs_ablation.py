"""Which RoPE pairs does the teacher need at long range? The MLA question of docs/distillation.md, "Block length".

MLA's decoupled RoPE keeps rotary position on ``qk_rope_head_dim / 2`` of each head's ``head_dim / 2`` pairs;
the others become position-free. This takes the teacher itself, without any low-rank compression, and removes
RoPE from all but 16 of its 32 pairs in every layer (their frequency set to 0: cos 1, sin 0), chosen four ways:

- ``high``: the 16 highest frequencies (MHA2MLA's S_high; ``convert/mla.py``'s ``mla_rope='high'``, shipped);
- ``low``: the 16 lowest;
- ``uniform``: every other pair (S_uniform; spread evenly for other counts);
- ``norm``: per layer, the 16 pairs with the largest sum over query heads of mean |q_pair| x mean |k_pair| of the
  head's K/V head, measured on calibration text (MHA2MLA's S_2-norm, one set per layer because MLA's RoPE key is
  shared by all heads);

and scores each against the unchanged teacher (KL per token and perplexity) by position in 4,096-token blocks.
If a choice costs little in the first 512 positions and much more further on, the pairs it drops carry the
teacher's long-range position, which a student trained on short blocks never has to replace.

With ``--converted`` it scores the MLA students themselves instead, converted (calibrated on 16 x 512 Shakespeare
tokens) and untrained: ``mla.yaml`` with ``mla_rope`` 'high' and 'norm', and ``mla-rope48.yaml``.

    python tools/rope_pairs_ablation.py --out rope_pairs.json [--blocks 8] [--only high,norm@24]  # 2 CPU cores: ~20 s
                                                                       # a block and variant
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

KEEP = 16  # pairs that keep RoPE (MLA's qk_rope_head_dim / 2); a variant "high@24" keeps 24
BUCKETS = [0, 256, 512, 1024, 2048, 4096]


def pair_norm_scores(teacher, cal: torch.Tensor) -> list[torch.Tensor]:
    """Per layer, (P,) scores of the head_dim / 2 RoPE pairs: sum over query heads of mean_t |q_pair| times
    mean_t |k_pair| of that head's K/V head, pre-rotation (the rotation keeps a pair's norm)."""
    got: dict[tuple[int, str], torch.Tensor] = {}
    hooks = []
    for i, blk in enumerate(teacher.blocks):
        at = blk.mixer
        D, P = at.head_dim, at.head_dim // 2
        for name, proj, heads in (("q", at.q_proj, at.n_heads), ("k", at.k_proj, at.n_kv_heads)):

            def hook(mod, inp, out, i=i, name=name, heads=heads, D=D, P=P):
                v = out.reshape(-1, heads, 2, P).float()  # pair j = dims (j, j + P): rotate_half's layout
                got[(i, name)] = got.get((i, name), 0) + v.norm(dim=2).mean(0)  # (heads, P)

            hooks.append(proj.register_forward_hook(hook))
    try:
        with torch.no_grad():
            for row in cal:
                teacher.hidden_states(row[None])
    finally:
        for h in hooks:
            h.remove()
    scores = []
    for i, blk in enumerate(teacher.blocks):
        q, k = got[(i, "q")], got[(i, "k")]
        group = blk.mixer.n_heads // blk.mixer.n_kv_heads
        scores.append((q * k.repeat_interleave(group, 0)).sum(0))
    return scores


def keep_pairs(variant: str, P: int, scores: torch.Tensor | None) -> torch.Tensor:
    """The indices of the pairs (0 = highest frequency) that keep RoPE: ``how`` or ``how@n`` (n pairs, else KEEP)."""
    how, _, n = variant.partition("@")
    n = int(n) if n else KEEP
    if how == "high":
        return torch.arange(n)
    if how == "low":
        return torch.arange(P - n, P)
    if how == "uniform":
        return torch.arange(0, P, P // n) if P % n == 0 else torch.linspace(0, P - 1, n).round().long()
    if how == "norm":
        return scores.topk(n).indices.sort().values
    raise ValueError(f"unknown variant {variant!r}: high, low, uniform or norm, each optionally @<pairs>")


def patched(teacher, how: str, scores: list[torch.Tensor] | None):
    """A copy of the teacher whose layers rotate only their kept pairs."""
    import copy

    m = copy.deepcopy(teacher)
    kept = []
    for i, blk in enumerate(m.blocks):
        rope = blk.mixer.rope
        P = rope.inv_freq.numel()
        keep = keep_pairs(how, P, None if scores is None else scores[i])
        kept.append(keep.tolist())
        f = torch.zeros_like(rope.inv_freq)
        f[keep] = rope.inv_freq[keep]
        rope.inv_freq = f

        def span(ctx, T, device, dtype, rope=rope):  # per layer: the memo shares angles across layers
            q_pos = torch.arange(ctx.pos, ctx.pos + T, device=device)
            return (q_pos, *rope(q_pos, dtype))

        rope.span = span
    return m, kept


def main() -> None:
    from archzoo.data import pack_blocks, shakespeare_texts, tokenize_texts
    from archzoo.data.heldout import heldout_blocks
    from archzoo.eval import evaluate
    from archzoo.teacher import resolve_teacher

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--only", default="high,norm,uniform,low")
    p.add_argument("--blocks", type=int, default=4, help="4,096-token blocks of python-docs")
    p.add_argument("--set", default="python-docs")
    p.add_argument("--converted", action="store_true", help="score the converted MLA students instead")
    p.add_argument("--ranking", action="store_true",
                   help="print how many of 'norm's pairs per layer the converter's ranking (mla_rope='norm') picks, "
                        "from the calibration moments and from the weights alone")  # fmt: skip
    args = p.parse_args()
    torch.manual_seed(0)
    t = resolve_teacher("smollm2-135m")
    t.eval()
    blocks = heldout_blocks(args.set, t.tokenizer, BUCKETS[-1], max_blocks=args.blocks)
    cal = pack_blocks(tokenize_texts(shakespeare_texts("train", "modern")[:40], t.tokenizer), 512)[:8, :512]
    if args.converted:
        return converted(t, blocks, args.out)
    if args.ranking:
        return ranking(t, cal)
    out: dict = {"set": args.set, "blocks": int(blocks.shape[0]), "block_len": BUCKETS[-1], "keep": KEEP,
                 "threads": torch.get_num_threads(), "variants": {}}  # fmt: skip
    if os.path.exists(args.out):  # resume
        with open(args.out) as f:
            prev = json.load(f)
        if {k: prev.get(k) for k in ("set", "blocks", "keep")} == {k: out[k] for k in ("set", "blocks", "keep")}:
            out["variants"] = prev.get("variants", {})
    scores = None
    for how in args.only.split(","):
        if how in out["variants"]:
            continue
        norm = how.startswith("norm")
        if norm and scores is None:
            scores = pair_norm_scores(t, cal)
        t0 = time.time()
        m, kept = patched(t, how, scores if norm else None)
        r = evaluate(t, m, blocks, batch_size=1, position_buckets=BUCKETS)
        out["variants"][how] = {"kept_pairs": kept if norm else kept[0], **r, "seconds": time.time() - t0}
        print(how, json.dumps({k: r[k] for k in ("kl", "ppl_student", "ppl_teacher")}),
              [round(b["kl"], 3) for b in r["by_position"]], flush=True)  # fmt: skip
        tmp = args.out + ".tmp"
        with open(tmp, "w") as f:
            json.dump(out, f, indent=1)
        os.replace(tmp, args.out)


def ranking(t, cal: torch.Tensor) -> None:
    """The converter's pair ranking (``convert/mla.py:norm_pairs``: rms over input moments) against this tool's
    (mean |q| x mean |k| on the activations), per layer: from the calibration moments, and from the weights alone
    (inputs of unit variance through the mixer norm's weight)."""
    from archzoo.convert import input_moments
    from archzoo.convert.mla import norm_pairs

    scores = pair_norm_scores(t, cal)
    with torch.no_grad():
        moments = input_moments(t, cal, set())
    cal_overlap, free_overlap = [], []
    for i, b in enumerate(t.blocks):
        ref = set(scores[i].topk(KEEP).indices.tolist())
        cal_overlap.append(len(ref & set(norm_pairs(b.mixer, moments[(i, i)], KEEP))))
        free = torch.diag(b.mixer_norm.weight.detach().double() ** 2)
        free_overlap.append(len(ref & set(norm_pairs(b.mixer, free, KEEP))))
    print(f"pairs of {KEEP} in common per layer, calibrated: {cal_overlap}")
    print(f"pairs of {KEEP} in common per layer, weights alone: {free_overlap}")


def converted(t, blocks: torch.Tensor, path: str) -> None:
    import archzoo
    from archzoo.data import pack_blocks, shakespeare_texts, tokenize_texts
    from archzoo.eval import evaluate

    cal = pack_blocks(tokenize_texts(shakespeare_texts("train", "modern")[:40], t.tokenizer), 512)[:16, :512]
    out = {}
    for name, cfg, opts in [
        ("mla, mla_rope high", "configs/students/mla.yaml", {}),
        ("mla, mla_rope norm", "configs/students/mla.yaml", {"mla_rope": "norm"}),
        ("mla-rope48, mla_rope high", "configs/students/mla-rope48.yaml", {}),
    ]:
        t0 = time.time()
        s = archzoo.convert(t, archzoo.load_config(cfg), calibration=cal, **opts)
        r = evaluate(t, s, blocks, batch_size=1, position_buckets=BUCKETS)
        out[name] = {**r, "seconds": time.time() - t0}
        print(name, round(r["kl"], 3), [round(b["kl"], 3) for b in r["by_position"]], flush=True)
        with open(path, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
