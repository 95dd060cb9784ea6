"""Attention over a whole sequence (training, prefill): the sliding window against full causal SDPA, and causal
SDPA with fewer K/V heads than query heads (``enable_gqa`` against K/V heads repeated)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._common import _fwd_fwdbwd, _interleaved, _ratio, _rel


def bench_window_attention(rounds: int, B: int = 4, H: int = 9, Hkv: int = 3, D: int = 64, T: int = 16384,
                           window: int = 512) -> dict:  # fmt: skip
    """Sliding-window attention over a whole sequence (training, prefill): archzoo's (FlexAttention with a
    causal + window block mask, ``layers/window.py``) against full causal SDPA (flash; what the window saves
    over) and SDPA with the boolean window mask (the reference), forward and forward+backward, bf16."""
    from ...kernels import last_backend
    from ...layers.window import sdpa_window, window_attention

    g = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(B, H, T, D, device="cuda", generator=g).to(torch.bfloat16).requires_grad_()
    k, v = (torch.randn(B, Hkv, T, D, device="cuda", generator=g).to(torch.bfloat16).requires_grad_() for _ in "kv")
    do = torch.randn(B, H, T, D, device="cuda", generator=g).to(torch.bfloat16)
    impls = {
        "archzoo": lambda: window_attention(q, k, v, window),
        "sdpa_causal_full": lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True),
        "sdpa_window_mask": lambda: sdpa_window(q, k, v, window),
    }
    res: dict = {"shape": dict(B=B, H=H, H_kv=Hkv, D=D, T=T, window=window, dtype="bfloat16")}
    fwd, both = {}, {}
    for name, fn in impls.items():
        try:
            fn().backward(do)  # compile / warm up
        except Exception as e:  # report the variant, go on
            res[name] = {"status": f"error ({type(e).__name__}: {str(e)[:200]})"}
            continue
        fwd[name] = (lambda fn=fn: fn(), None)
        both[name] = (lambda fn=fn: fn().backward(do), [q, k, v])
    t_fwd, t_both = _interleaved(fwd, rounds), _interleaved(both, rounds)
    for name in fwd:
        res[name] = {"status": "ok", "fwd_ms": t_fwd[name]["ms"], "fwdbwd_ms": t_both[name]["ms"]}
    res["archzoo"] = {**res.get("archzoo", {}), "backend": last_backend("sliding_window_attention")}
    return res


def bench_gqa_sdpa(rounds: int, B: int = 8, T: int = 4096, H: int = 9, kv_heads: tuple[int, ...] = (3, 1),
                   D: int = 64) -> dict:  # fmt: skip
    """Causal attention over a whole sequence with fewer K/V heads than query heads (the teacher's 9 / 3, MQA's
    9 / 1; training and prefill at the recipe's 8 x 4,096), both ways ``archzoo.layers.attention.GQA_SDPA`` calls
    SDPA: ``native`` (``enable_gqa=True``) and ``expand`` (K/V heads repeated, equal heads), with ``mha`` (9 K/V
    heads of its own: the equal-heads kernel without the repeat) beside them; forward and forward+backward, bf16.
    ``x`` = impl ms / native ms (below 1: faster than native)."""
    from ...layers import attention as attn

    res: dict = {"shape": dict(B=B, T=T, H=H, D=D, dtype="bfloat16")}
    for Hkv in kv_heads:
        g = torch.Generator(device="cuda").manual_seed(0)
        q = torch.randn(B, H, T, D, device="cuda", generator=g).to(torch.bfloat16).requires_grad_()
        k, v = (torch.randn(B, Hkv, T, D, device="cuda", generator=g).to(torch.bfloat16).requires_grad_() for _ in "kv")
        k9, v9 = (torch.randn(B, H, T, D, device="cuda", generator=g).to(torch.bfloat16).requires_grad_() for _ in "kv")
        do = torch.randn(B, H, T, D, device="cuda", generator=g).to(torch.bfloat16)

        def mode(m: str, q=q, k=k, v=v):
            def call() -> torch.Tensor:
                old, attn.GQA_SDPA = attn.GQA_SDPA, m
                try:
                    return attn.attend(q, k, v, q_pos=None, k_pos=None)
                finally:
                    attn.GQA_SDPA = old

            return call

        def mha(q=q, k9=k9, v9=v9) -> torch.Tensor:
            return F.scaled_dot_product_attention(q, k9, v9, is_causal=True)

        impls = {"native": mode("native"), "expand": mode("expand"), "mha": mha}
        rows, outs = _fwd_fwdbwd(impls, [q, k, v, k9, v9], do, rounds, "cuda")
        if "native" in outs and "expand" in outs:
            rows["expand"]["rel_err_vs_native"] = _rel(outs["expand"], outs["native"])
        for row in rows.values():
            for key in ("fwd_ms", "fwdbwd_ms"):
                r = _ratio(row, rows.get("native", {}), key)
                if r is not None:
                    row[f"x_{key.removesuffix('_ms')}"] = r
        res[f"H_kv={Hkv}"] = rows
    return res
