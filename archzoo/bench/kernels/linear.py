"""Issue 19's linear attention and BASED against fla, forward and forward+backward (without a GPU at tiny shapes)."""

from __future__ import annotations

import importlib

import torch

from ._common import _fwd_fwdbwd, _ratio, _rel

TINY_LENGTHS = (64, 100)  # la / based on the CPU or with --tiny: 100 is not a multiple of the chunk
LA_TARGET = 1.1  # issue 19: fla ms / archzoo ms at least this on every cell


def _fla(name: str) -> object:
    """``fla.ops.<module>.<fn>`` for name "module.fn", or "fla not installed (...)"."""
    module, fn = name.rsplit(".", 1)
    try:
        return getattr(importlib.import_module(f"fla.ops.{module}"), fn)
    except Exception as e:  # ImportError; or fla present but broken against this torch / triton
        return f"fla not installed ({type(e).__name__}: {e})"


def _la_inputs(B: int, T: int, H: int, F: int, Dv: int, device: str, positive: bool):
    """q, k (B, T, H, F) (elu + 1 of a normal when ``positive``: feature-mapped already, so q . z > 0 and the
    normalised form is well conditioned; a normal otherwise), v (B, T, H, Dv), bf16 leaves needing gradients,
    and the fixed output gradient (B, T, H, Dv)."""
    g = torch.Generator(device=device).manual_seed(0)
    r = lambda *s: torch.randn(*s, device=device, generator=g)  # noqa: E731
    qk = [torch.nn.functional.elu(r(B, T, H, F)) + 1.0 if positive else r(B, T, H, F) for _ in "qk"]
    q, k = (t.to(torch.bfloat16).requires_grad_() for t in qk)
    v = r(B, T, H, Dv).to(torch.bfloat16).requires_grad_()
    return q, k, v, r(B, T, H, Dv).to(torch.bfloat16)


def _io_fraction(row: dict, fwd_bytes: int, fwdbwd_bytes: int, bw: float) -> None:
    """Put hbm_fraction_fwd / _fwdbwd (the least traffic / time / copy bandwidth) into an ok row."""
    for mode, nbytes in (("fwd", fwd_bytes), ("fwdbwd", fwdbwd_bytes)):
        if row.get("status") == "ok" and f"{mode}_ms" in row:
            row[f"hbm_fraction_{mode}"] = nbytes / (row[f"{mode}_ms"] / 1e3) / bw


def bench_linear_attention(rounds: int, lengths: tuple[int, ...], device: str = "cuda", B: int = 4, H: int = 8,
                           F: int = 64, Dv: int = 64) -> dict:  # fmt: skip
    """Chunked linear attention over a sequence: ``archzoo.kernels.linear_attention`` (the Triton kernel on CUDA;
    ``backend`` in its row says what ran) against fla's ``chunk_linear_attn`` (scale=1.0: archzoo has no scale),
    both without normalisation and both with it, on the same bf16 inputs already feature-mapped (q, k = elu + 1
    of a normal). Forward (no grad) and forward+backward (``o.backward(do)``, do fixed). In the archzoo row:
    ``fla_over_ours_fwd`` / ``_fwdbwd`` = fla ms / archzoo ms (issue 19's target: >= 1.1 on every cell), the
    forward's relative error against fla's, and ``hbm_fraction_*``: the least traffic (forward: q, k, v read
    and o written once; forward+backward adds q, k, v, do read and dq, dk, dv written, all bf16) / time / copy
    bandwidth. Without normalisation, at every T, ``archzoo_segmented``: the same op with the kernel's segmented
    backward (``linear_attention.triton.BACKWARD = "segmented"``; the default takes the chunk-parallel one there), so
    both backwards are timed in one process; ``backward`` in the archzoo rows says which ran (None where the PyTorch
    form ran)."""
    from ...kernels import last_backend, linear_attention
    from ...kernels._dispatch import forget
    from ..common import measure_bandwidth

    bw = measure_bandwidth(device, nbytes=None if device == "cuda" else 2**24)
    fla = _fla("linear_attn.chunk_linear_attn")
    out: dict = {
        "shape": dict(B=B, H=H, F=F, Dv=Dv, T=list(lengths), dtype="bfloat16", q_k="elu(randn) + 1", scale=1.0),
        "target": f"fla_ms / archzoo_ms >= {LA_TARGET} on every cell",
        "bandwidth": bw,
        "fla": "ok" if not isinstance(fla, str) else fla,
        "normalize_false": {},
        "normalize_true": {},
    }
    tok = B * H * 2  # bytes per position and feature of one bf16 (B, T, H, .) tensor
    for normalize in (False, True):
        for T in lengths:
            q, k, v, do = _la_inputs(B, T, H, F, Dv, device, positive=True)
            args = (q, k, v)
            impls: dict[str, object] = {
                "archzoo": lambda a=args, n=normalize: _with_backward(None, linear_attention, *a, normalize=n)
            }
            impls["fla_chunk_linear_attn"] = fla if isinstance(fla, str) else (
                lambda a=args, n=normalize, fla=fla: fla(*a, scale=1.0, normalize=n)[0])  # fmt: skip
            if device == "cuda" and T >= 16384:
                # The kernel runs one program per (value block, batch x head), walking the sequence: at B x H = 32
                # and 32-column value blocks, 64 programs for the H200's 132 SMs. Half-width blocks double them.
                impls["archzoo_bv16"] = lambda a=args, n=normalize: _with_block_v(16, linear_attention, *a, normalize=n)
            if not normalize:  # the segmented backward (the default's other choice), whatever BACKWARD says
                impls["archzoo_segmented"] = lambda a=args: _with_backward("segmented", linear_attention, *a)
            forget("linear_attention")
            res, outs = _fwd_fwdbwd(impls, [q, k, v], do, rounds, device)
            ours, peer = res["archzoo"], res["fla_chunk_linear_attn"]
            ours["backend"] = last_backend("linear_attention")
            for name in ("archzoo", "archzoo_segmented"):
                if name in res:  # the backward the kernel's forward chose (none where the PyTorch form ran)
                    res[name].update(backend=ours["backend"], backward=_BACKWARD_RAN.get(name))
            for mode in ("fwd", "fwdbwd"):
                ours[f"fla_over_ours_{mode}"] = _ratio(peer, ours, f"{mode}_ms")
            if "fla_chunk_linear_attn" in outs and "archzoo" in outs:
                ours["rel_err_vs_fla"] = _rel(outs["archzoo"].float(), outs["fla_chunk_linear_attn"].float())
            fwd_bytes = T * tok * (2 * F + 2 * Dv)
            for row in res.values():
                _io_fraction(row, fwd_bytes, fwd_bytes + T * tok * (4 * F + 3 * Dv), bw["bytes_per_s"])
            out[f"normalize_{str(normalize).lower()}"][T] = res
    return out


_BACKWARD_RAN: dict[str, str | None] = {}  # bench row -> the backward its latest forward chose (None: no kernel)


def _with_backward(backward: str | None, fn, *args, normalize: bool = False) -> torch.Tensor:
    """``fn(*args, normalize=normalize)[0]`` with the linear-attention kernel's ``BACKWARD`` set to ``backward``
    for the call (None: left as it is; the forward makes the choice and keeps it for its backward), noting the
    choice in ``_BACKWARD_RAN`` under its bench row ("archzoo" for None, "archzoo_segmented" otherwise) where the
    Triton kernel ran (only then is its module imported, for None)."""
    from ...kernels import last_backend

    if backward is not None:
        from ...kernels.linear_attention import triton as la_triton

        old = la_triton.BACKWARD
        la_triton.BACKWARD = backward
    try:
        out = fn(*args, normalize=normalize)[0]
    finally:
        if backward is not None:
            la_triton.BACKWARD = old
    ran = None
    if last_backend("linear_attention") == "triton":
        from ...kernels.linear_attention import triton as la_triton

        ran = la_triton.last_backward()
    _BACKWARD_RAN["archzoo" if backward is None else "archzoo_segmented"] = ran
    return out


def _with_block_v(bv: int, fn, *args, **kwargs) -> torch.Tensor:
    """``fn(*args, **kwargs)[0]`` with the linear-attention kernel's value blocks at most ``bv`` columns wide."""
    from ...kernels.linear_attention import triton as la_triton

    old = la_triton.MAX_BLOCK_V
    la_triton.MAX_BLOCK_V = bv
    try:
        return fn(*args, **kwargs)[0]
    finally:
        la_triton.MAX_BLOCK_V = old


def bench_based(rounds: int, lengths: tuple[int, ...], device: str = "cuda", B: int = 4, H: int = 8,
                feature_dim: int = 16, Dv: int = 64) -> dict:  # fmt: skip
    """BASED's attention as archzoo's layer runs it from a zero state: ``archzoo.kernels.based_attention`` on the raw
    q, k (16 dims; the Triton kernel on CUDA, quadratic in T, from the dot products, never expanding the 1 + 16 +
    256 = 273 Taylor features), and as it ran before that kernel (``archzoo_chunk``: the Taylor map, then
    ``linear_attention``'s chunked PyTorch form over 273 features), against fla's ``parallel_based`` (its default
    scale 16^-0.5 and use_norm: the same function, phi(q).phi(k) = 1 + s + s^2 / 2 with s = q.k / 4), forward and
    forward+backward. Ratio as for ``la``; inputs: q, k normal (B, T, H, 16), v normal (B, T, H, 64), bf16. Where
    the kernel ran, ``config`` in the archzoo row: each of its three kernels' tiles, warps and stages at that T and
    how they were chosen (autotuned on the first call of a length bucket, which the warm-up takes)."""
    from ...kernels import based_attention, last_backend, linear_attention
    from ...kernels._dispatch import forget
    from ...layers.feature_maps import build_feature_map, feature_map_dim
    from ...layers.linear_attention import LinearAttentionConfig
    from ..common import measure_bandwidth

    cfg = LinearAttentionConfig(n_heads=H, head_dim=Dv, feature_map="taylor", feature_dim=feature_dim)
    q_map = build_feature_map("taylor", H, feature_dim)
    k_map = build_feature_map("taylor", H, feature_dim)
    n_feat = feature_map_dim("taylor", feature_dim)
    bw = measure_bandwidth(device, nbytes=None if device == "cuda" else 2**24)
    fla = _fla("based.parallel_based")
    out: dict = {
        "shape": dict(
            B=B,
            H=H,
            feature_dim=feature_dim,
            features=n_feat,
            Dv=Dv,
            T=list(lengths),
            dtype="bfloat16",
            eps=cfg.eps,
            chunk_size=cfg.chunk_size,
        ),  # fmt: skip
        "target": f"fla_ms / archzoo_ms >= {LA_TARGET} on every cell",
        "bandwidth": bw,
        "fla": "ok" if not isinstance(fla, str) else fla,
        "rows": {},
    }
    tok = B * H * 2
    for T in lengths:
        q, k, v, do = _la_inputs(B, T, H, feature_dim, Dv, device, positive=False)

        def ours(q=q, k=k, v=v) -> torch.Tensor:  # (B, T, H, Dv), as LinearAttention.forward from a zero state
            return based_attention(q, k, v, eps=cfg.eps, chunk_size=cfg.chunk_size)[0]

        def expanded(q=q, k=k, v=v) -> torch.Tensor:  # the layer's path before the BASED kernel
            return linear_attention(q_map(q), k_map(k), v, eps=cfg.eps, chunk_size=cfg.chunk_size)[0]

        impls: dict[str, object] = {"archzoo": ours, "archzoo_chunk": expanded}
        impls["fla_parallel_based"] = fla if isinstance(fla, str) else (
            lambda a=(q, k, v), fla=fla: fla(*a, use_norm=True))  # fmt: skip
        forget("based_attention", "linear_attention")
        res, outs = _fwd_fwdbwd(impls, [q, k, v], do, rounds, device)
        mine, peer = res["archzoo"], res["fla_parallel_based"]
        mine["backend"] = last_backend("based_attention")
        if mine["backend"] == "triton":  # each kernel's config at this T (autotuned above SHORT_T on a GPU)
            from ...kernels.based_attention.triton import last_configs

            mine["config"] = last_configs(T)
        res["archzoo_chunk"]["backend"] = f"linear_attention over {n_feat} features: {last_backend('linear_attention')}"
        for mode in ("fwd", "fwdbwd"):
            mine[f"fla_over_ours_{mode}"] = _ratio(peer, mine, f"{mode}_ms")
            res["archzoo_chunk"][f"fla_over_ours_{mode}"] = _ratio(peer, res["archzoo_chunk"], f"{mode}_ms")
        if "fla_parallel_based" in outs and "archzoo" in outs:
            mine["rel_err_vs_fla"] = _rel(outs["archzoo"].float(), outs["fla_parallel_based"].float())
        fwd_bytes = T * tok * (2 * feature_dim + 2 * Dv)
        for row in res.values():
            _io_fraction(row, fwd_bytes, fwd_bytes + T * tok * (4 * feature_dim + 3 * Dv), bw["bytes_per_s"])
        out["rows"][T] = res
    return out
