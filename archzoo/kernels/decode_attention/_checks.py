"""Decode attention: input validation shared by the dispatcher and the Triton entry points (STYLE.md 7)."""

from __future__ import annotations

import torch

DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_HEAD_DIM = 512
MAX_QUERIES = 16  # query tokens a row in the multi-query form (a speculative verify: k+1 of them)


def check_decode(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    lengths: torch.Tensor,
    kname: str = "k_cache",
    vname: str = "v_cache",
) -> tuple[int, int, int, int, int, int]:
    """-> (B, H, Hkv, T, D, Dv), or ValueError naming the tensor and the expected shape. q is (B, H, D), or
    (B, H, Q, D) with 1 <= Q <= MAX_QUERIES consecutive query tokens a row (``multi`` callers only)."""
    if not isinstance(q, torch.Tensor) or q.dim() not in (3, 4):
        raise ValueError(f"q must be a (B, H, D) or (B, H, Q, D) tensor, got shape {tuple(getattr(q, 'shape', ()))}")
    if q.dim() == 4 and not 1 <= q.shape[2] <= MAX_QUERIES:
        raise ValueError(f"q (B, H, Q, D) holds 1..{MAX_QUERIES} query tokens a row, got Q={q.shape[2]}")
    B, H, D = q.shape[0], q.shape[1], q.shape[-1]
    for name, t in ((kname, k), (vname, v)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4:
            raise ValueError(f"{name} must be a (B, H_kv, T_max, D) tensor, got shape {tuple(getattr(t, 'shape', ()))}")
    _, Hkv, T, Dk = k.shape
    Dv = v.shape[3]
    if k.shape != (B, Hkv, T, D):
        raise ValueError(f"{kname} must have shape (B, H_kv, T_max, D) = ({B}, H_kv, T_max, {D}) to match q "
                         f"{tuple(q.shape)}, got {tuple(k.shape)}")  # fmt: skip
    if v.shape[:3] != k.shape[:3]:
        raise ValueError(f"{vname} must have shape (B, H_kv, T_max, Dv) = ({B}, {Hkv}, {T}, Dv) like {kname}, "
                         f"got {tuple(v.shape)}")  # fmt: skip
    if Hkv == 0 or H % Hkv != 0:
        raise ValueError(f"q's head count H={H} must be a multiple of {kname}'s H_kv={Hkv} (GQA groups)")
    if not 1 <= D <= MAX_HEAD_DIM or not 1 <= Dv <= MAX_HEAD_DIM:
        raise ValueError(f"head dims must be 1..{MAX_HEAD_DIM}, got D={D} (q, {kname}) and Dv={Dv} ({vname})")
    if not isinstance(lengths, torch.Tensor) or lengths.shape != (B,):
        raise ValueError(f"lengths must be a (B,) = ({B},) tensor, got shape {tuple(getattr(lengths, 'shape', ()))}")
    if lengths.dtype.is_floating_point or lengths.dtype.is_complex or lengths.dtype == torch.bool:
        raise ValueError(f"lengths must be an integer tensor, got {lengths.dtype}")
    for name, t in (("q", q), (kname, k), (vname, v)):
        if t.dtype not in DTYPES:
            raise ValueError(f"{name} must be float16, bfloat16 or float32, got {t.dtype}")
    if not q.dtype == k.dtype == v.dtype:
        raise ValueError(f"q, {kname} and {vname} must share a dtype, got {q.dtype}, {k.dtype} and {v.dtype}")
    devs = {t.device for t in (q, k, v, lengths)}
    if len(devs) > 1:
        raise ValueError(f"q, {kname}, {vname} and lengths must be on one device, got "
                         f"{q.device}, {k.device}, {v.device}, {lengths.device}")  # fmt: skip
    return B, H, Hkv, T, D, Dv


def check_one_query(q: torch.Tensor, fn: str) -> None:
    """The forms that take one query token a row (the ring, MLA's latent) refuse (B, H, Q, D)."""
    if q.dim() != 3:
        raise ValueError(f"{fn} takes one query token a row: q (B, H, D), got shape {tuple(q.shape)}")


def check_window(window: int) -> None:
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ValueError(f"window must be an int >= 1, got {window!r}")
