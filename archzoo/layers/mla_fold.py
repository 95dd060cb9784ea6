"""MLA's absorbed decode step with W_uk and W_uv folded into its projections (a decode copy, as ``fused.py``'s).

The absorbed step (``layers/mla.py``) turns each head's query into the latent space, ``q_lat = W_uk^T q_nope``,
attends over the cached latent, and maps the result back, ``o = W_uv o_lat``, before the output projection:
two per-head batched matmuls a layer besides the projections. At batch 1 a step is bound by its launches, not
its bytes: MLA decoded at 1,304 tokens/s against the teacher's 1,728 on an H100 (docs/decode.md), with 9-10
kernels a layer to the teacher's 5-6. Both matmuls are linear maps of a projection's output, so they fold into
the projection's weight:

- query: per head h, ``q_lat_h = W_uk,h^T (W_q,nope,h x) = (W_uk,h^T W_q,nope,h) x``. The copy holds, per head,
  ``W_uk,h^T W_q,nope,h`` (r x d) where the query weight had ``W_q,nope,h`` (dn x d), then the head's RoPE rows,
  then the latent|RoPE-key rows of ``kv_a_proj``: one GEMM gives the attention's query as it reads it;
- output: ``out = sum_h W_o,h (W_uv,h o_lat_h) = sum_h (W_o,h W_uv,h) o_lat_h``, so O's copy is (d x H r).

Two launches fewer a layer, for more bytes to read: H r rows instead of H dn in the query's copy, H r columns
instead of H dv in O's. Products in fp32 (fp64 for an fp64 model), rounded once to the weights' dtype (the
unfolded step rounds q_nope and o to it in between). Folding pays only while a layer's extra bytes take less
time to read than the launches it saves: the teacher-sized MLA students (9 heads, d 576, r 64 / 128 / 256)
read -0.15 / 1.0 / 3.4 MB more a layer (up to 1.1 us at 3 TB/s, against two launches of 2-3 us), whereas
DeepSeek-V2's shapes (128 heads, r 512, d 5,120) would read about 1 GB more a layer. Hence
``FOLD_MAX_EXTRA_BYTES``; a layer above it keeps the unfolded step. Refreshed like ``FusedLinears``: recopied
in place when a source weight changes in place, so a captured step keeps reading the right address.
"""

from __future__ import annotations

import torch

from ..kernels._dispatch import once
from .fused import decode_project, signature

# Fold while a layer's folded copies exceed the weights they replace by at most this many bytes (see above).
FOLD_MAX_EXTRA_BYTES = 8 << 20
# Off: every MLA layer built afterwards keeps the unfolded step's Q|latent copy (to time both side by side,
# `tools/decode_profile.py --mla-fold on,off`); read when a layer is built.
ENABLED = True


def folds(n_heads: int, d_model: int, dn: int, dv: int, r: int) -> bool:
    """Whether an MLA layer of these shapes (a full-rank query) decodes with folded copies (bf16 bytes); a layer
    too large for it says once why it keeps the unfolded step."""
    if not ENABLED:
        return False
    extra = fold_extra_bytes(n_heads, d_model, dn, dv, r, 2)
    if extra > FOLD_MAX_EXTRA_BYTES:
        once("mla_fold", f"MLA decode keeps W_uk and W_uv unfolded: folded copies would read {extra / 2**20:.0f} MiB "
             f"more a layer in bf16 (> FOLD_MAX_EXTRA_BYTES = {FOLD_MAX_EXTRA_BYTES >> 20} MiB)")  # fmt: skip
        return False
    return True


def fold_extra_bytes(n_heads: int, d_model: int, dn: int, dv: int, r: int, itemsize: int) -> int:
    """Bytes a step reads more with the folded copies than with W_q,nope, W_uk, W_uv and W_o (can be negative)."""
    folded = n_heads * r * d_model * 2  # the query's latent rows and O's columns
    unfolded = n_heads * dn * d_model + n_heads * (dn + dv) * r + d_model * n_heads * dv
    return (folded - unfolded) * itemsize


class FoldedMLA:
    """The decode copies of one MLA layer without a low-rank query: ``weight`` (H (r + dr) + r + dr, d) gives
    per head [q_lat (r) | q_rope (dr)] and then [c_kv (r) | k_rope (dr)]; ``o_weight`` (d, H r) maps the
    attention's latent output to the residual stream."""

    def __init__(self, mla):
        if mla.cfg.q_lora_rank:
            raise ValueError("FoldedMLA: a low-rank query (q_lora_rank) is not folded")
        self.linears = (mla.q_proj, mla.kv_a_proj, mla.kv_b_proj, mla.o_proj)
        self.dims = (mla.n_heads, mla.dn, mla.dr, mla.dv, mla.r)
        self.weight: torch.Tensor | None = None
        self.o_weight: torch.Tensor | None = None
        self._signature: tuple | None = None

    @torch.no_grad()
    def refresh(self) -> bool:
        """Recompute the copies if any source weight changed since the last time; True when it did."""
        src = [lin.weight for lin in self.linears]
        sig = signature(src)
        if sig == self._signature:
            return False
        H, dn, dr, dv, r = self.dims
        acc = torch.promote_types(src[0].dtype, torch.float32)  # fp32 products, fp64 for an fp64 model
        wq, wkv_a, wkv_b, wo = (w.to(acc) for w in src)
        d = wq.shape[1]
        wq = wq.view(H, dn + dr, d)
        wkv_b = wkv_b.view(H, dn + dv, r)
        q_lat = torch.einsum("hnr,hnd->hrd", wkv_b[:, :dn], wq[:, :dn])  # W_uk,h^T W_q,nope,h
        q = torch.cat([q_lat, wq[:, dn:]], dim=1).reshape(H * (r + dr), d)
        weight = torch.cat([q, wkv_a])
        o_weight = torch.einsum("dhv,hvr->dhr", wo.view(d, H, dv), wkv_b[:, dn:]).reshape(d, H * r)
        dtype, device = src[0].dtype, src[0].device
        if self.weight is None or (self.weight.dtype, self.weight.device) != (dtype, device):
            self.weight, self.o_weight = weight.to(dtype), o_weight.to(dtype)
        else:  # in place: a captured graph reads these addresses
            self.weight.copy_(weight)
            self.o_weight.copy_(o_weight)
        self._signature = sig
        return True

    def release(self) -> None:
        """Drop the copies (their memory); the next ``refresh`` makes them again."""
        self.weight = self.o_weight = self._signature = None

    def __call__(self, x: torch.Tensor, norm=None) -> tuple[torch.Tensor, torch.Tensor]:
        """x (..., d) -> the query (..., H (r + dr)), per head [q_lat | q_rope before RoPE], and the latent row
        (..., r + dr) before its norm and RoPE; ``norm`` fused into the GEMV where ``decode_project`` runs it."""
        if self.weight is None:
            raise RuntimeError("FoldedMLA: refresh() has not run (ArchZooLM.refresh_fused())")
        H, _, dr, _, r = self.dims
        return decode_project(x, self.weight, None, norm).split([H * (r + dr), r + dr], dim=-1)

    def project_out(self, o_lat: torch.Tensor, residual: torch.Tensor | None) -> torch.Tensor:
        """o_lat (..., H r), heads in order -> (residual +) the layer's output (the residual in the GEMV's
        epilogue where it runs)."""
        return decode_project(o_lat, self.o_weight, residual=residual)
