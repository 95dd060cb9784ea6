"""The conversion ablations docs/distillation.md and docs/conversion.md quote: how each initialiser variant of MQA,
CLA2, MLA and Mamba scores right after conversion, against the real teacher, on the same tokens.

    python tools/conversion_ablation.py --out ablation.json        # CPU: about 15 min on 2 cores

KL(teacher || student) per token on 2 held-out python-docs blocks of 512 tokens; calibration (where a variant
uses it): the first 8 blocks of 512 tokens of the Shakespeare training split. Variants:

- ``mqa``: mean pooling (the data-free default); keeping head j of each group instead (j = 0, 1, 2); mean pooling
  with each query head's output projection refitted by unweighted least squares in the input space, or weighted
  by the inputs' second moment; and the shipped calibrated fit (``convert(..., calibration=ids)``: fitted keys
  and the weighted refit);
- ``cla2``, ``mla``, ``mla-r64``, ``mla-r256``: data-free against calibrated;
- ``mamba``: data-free against B and C fitted to the whitened score form (not shipped: no gain).
"""

from __future__ import annotations

import argparse
import json
import math

import torch


def main() -> None:
    import archzoo
    import archzoo.convert.attention as attention_conv
    import archzoo.convert.mamba as mamba_conv
    from archzoo.convert import input_moments
    from archzoo.data import pack_blocks, shakespeare_texts, tokenize_texts
    from archzoo.data.heldout import heldout_blocks
    from archzoo.eval import evaluate
    from archzoo.teacher import resolve_teacher

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--only", default="mqa,cla2,mla,mla-r64,mla-r256,mamba")
    args = p.parse_args()
    t = resolve_teacher("smollm2-135m")
    blocks = heldout_blocks("python-docs", t.tokenizer, 512, max_blocks=2)
    cal = pack_blocks(tokenize_texts(shakespeare_texts("train", "modern")[:40], t.tokenizer), 512)[:8, :512]
    moments = input_moments(t, cal, set())
    C = {i: m + 1e-4 * m.diagonal().mean() * torch.eye(m.shape[0], dtype=m.dtype) for (i, _), m in moments.items()}
    out: dict[str, dict[str, float]] = {}

    def kl(model) -> float:
        return round(float(evaluate(t, model, blocks)["kl"]), 3)

    def record(name: str, variant: str, value: float) -> None:
        out.setdefault(name, {})[variant] = value
        print(json.dumps({name: {variant: value}}), flush=True)
        with open(args.out, "w") as f:
            json.dump(out, f, indent=2)

    def cfg(name):
        return archzoo.load_config(f"configs/students/{name}.yaml")

    todo = args.only.split(",")
    if "mqa" in todo:
        record("mqa", "mean pooling", kl(archzoo.convert(t, cfg("mqa"))))
        real = attention_conv.pool_heads
        for j in range(3):

            def pick(w, n_src, n_dst, j=j):
                if n_dst >= n_src:
                    return real(w, n_src, n_dst)
                D = w.shape[0] // n_src
                heads = w.reshape(n_dst, n_src // n_dst, D, *w.shape[1:])
                return heads[:, j].reshape(n_dst * D, *w.shape[1:])

            attention_conv.pool_heads = pick
            try:
                record("mqa", f"head {j} of each group", kl(archzoo.convert(t, cfg("mqa"))))
            finally:
                attention_conv.pool_heads = real
        for weighted in (False, True):
            s = archzoo.convert(t, cfg("mqa"))
            with torch.no_grad():
                for i, (tb, sb) in enumerate(zip(t.blocks, s.blocks, strict=True)):
                    ta, sa = tb.mixer, sb.mixer
                    H, D, g = ta.n_heads, ta.head_dim, ta.n_heads // ta.n_kv_heads
                    wv = ta.v_proj.weight.double().view(ta.n_kv_heads, D, -1)
                    v1 = sa.v_proj.weight.double()
                    wo = ta.o_proj.weight.double().view(-1, H, D)
                    new = torch.empty_like(wo)
                    for h in range(H):
                        if weighted:
                            new[:, h] = wo[:, h] @ (wv[h // g] @ C[i] @ v1.T) @ torch.linalg.inv(v1 @ C[i] @ v1.T)
                        else:
                            new[:, h] = wo[:, h] @ wv[h // g] @ torch.linalg.pinv(v1)
                    sa.o_proj.weight.copy_(new.reshape(wo.shape[0], H * D).to(sa.o_proj.weight.dtype))
            label = "weighted" if weighted else "unweighted"
            record("mqa", f"mean pooling, output projection refitted ({label})", kl(s))
        record("mqa", "calibrated (fitted keys + weighted refit)", kl(archzoo.convert(t, cfg("mqa"), calibration=cal)))
    for name in ("cla2", "mla", "mla-r64", "mla-r256"):
        if name in todo:
            record(name, "data-free", kl(archzoo.convert(t, cfg(name))))
            record(name, "calibrated", kl(archzoo.convert(t, cfg(name), calibration=cal)))
    if "mamba" in todo:
        record("mamba", "data-free", kl(archzoo.convert(t, cfg("mamba"))))
        real = mamba_conv.score_factors

        def whitened(src, rank, rtol=1e-3):
            i = next(j for j, b in enumerate(t.blocks) if b.mixer is src)
            H, n_kv, D = src.n_heads, src.n_kv_heads, src.head_dim
            f64, d = torch.float64, src.q_proj.in_features
            wq = src.q_proj.weight.to(f64).view(H, D, d)
            wk = src.k_proj.weight.to(f64).view(n_kv, D, d).repeat_interleave(H // n_kv, dim=0)
            M = torch.einsum("hcd,hce->de", wq, wk) / (H * math.sqrt(D))
            _, sv, Vh = torch.linalg.svd(src.v_proj.weight.to(f64), full_matrices=False)
            basis = Vh[sv > rtol * sv[0]]
            Ly = torch.linalg.cholesky(basis @ C[i] @ basis.t())
            U, S, Wh = torch.linalg.svd(Ly.t() @ (basis @ M @ basis.t()) @ Ly)
            n = min(rank, S.numel())
            root, Li = S[:n].sqrt()[:, None], torch.linalg.inv(Ly)
            return root * (U[:, :n].t() @ Li) @ basis, root * (Wh[:n] @ Li) @ basis, basis

        mamba_conv.score_factors = whitened
        try:
            record("mamba", "B and C fitted to the whitened score form", kl(archzoo.convert(t, cfg("mamba"))))
        finally:
            mamba_conv.score_factors = real


if __name__ == "__main__":
    main()
