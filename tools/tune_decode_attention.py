"""Sweep the split policy, tile and warps of ``archzoo.kernels.decode_attention`` (and the MLA decode kernel)
on one GPU, each against SDPA over exactly the valid length (the peer issue 18 sets 1.2x against).

    python tools/tune_decode_attention.py --out results/tune_decode_attention.json

Shapes: the teacher's decode step (9 query / 3 KV heads, D=64) and MLA-r256's (9 heads over a 256 + 32
latent), 4,096 valid positions of an 8,192-slot buffer, bf16, batch 1 and 64. For each point of
BLOCK_T x num_warps x PROGRAMS_PER_SM x MAX_SPLITS it writes ``CONFIG_OVERRIDE`` (clearing the plan
caches), checks the output against the sliced SDPA, and times the call with CUDA graphs
(``triton.testing.do_bench_cudagraph``, so the host's launch cost is not in the figure, as in a captured
decode step). The winners go into ``CUDA_CONFIG`` in ``archzoo/kernels/decode_attention/triton.py``.

Smoke check without a GPU is not offered: the timings need CUDA graphs.
"""

from __future__ import annotations

import argparse
import itertools

import torch
import torch.nn.functional as F
from _tuning import Rows, check_device  # this folder is on sys.path

from archzoo.kernels import decode_attention, decode_attention_mla
from archzoo.kernels.decode_attention import mla as mla_mod
from archzoo.kernels.decode_attention import triton as T


def _bench(fn) -> float:
    import triton.testing

    return triton.testing.do_bench_cudagraph(fn, rep=50, return_mode="median")


def _set(cfg: dict) -> None:
    T.CONFIG_OVERRIDE.clear()
    T.CONFIG_OVERRIDE.update(cfg)
    T._PLANS.clear()
    mla_mod._PLANS.clear()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batches", default="64,1")
    ap.add_argument("--length", type=int, default=4096)
    ap.add_argument("--t-max", type=int, default=8192)
    ap.add_argument("--which", default="gqa,mla")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    check_device("cuda")
    rows = Rows(args.out)
    L, TM = args.length, args.t_max
    g = torch.Generator(device="cuda").manual_seed(0)
    bf = torch.bfloat16
    grid = list(itertools.product((32, 64, 128), (2, 4, 8), (2, 4, 8), (128,)))
    for B in (int(b) for b in args.batches.split(",")):
        lengths = torch.full((B,), L, device="cuda", dtype=torch.int32)
        cases = {}
        if "gqa" in args.which:
            q = torch.randn(B, 9, 64, device="cuda", generator=g).to(bf)
            k = torch.randn(B, 3, TM, 64, device="cuda", generator=g).to(bf)
            v = torch.randn(B, 3, TM, 64, device="cuda", generator=g).to(bf)

            def sdpa(q=q, k=k, v=v):
                return F.scaled_dot_product_attention(q[:, :, None], k[:, :, :L], v[:, :, :L], enable_gqa=True)[:, :, 0]

            cases["gqa"] = (lambda q=q, k=k, v=v, n=lengths: decode_attention(q, k, v, n), sdpa, B * 3 * L * 128 * 2)
        if "mla" in args.which:
            R, DR = 256, 32
            qm = torch.randn(B, 9, R + DR, device="cuda", generator=g).to(bf)
            lat = torch.randn(B, TM, R + DR, device="cuda", generator=g).to(bf)

            def sdpa_mla(qm=qm, lat=lat, R=R):
                kv = lat[:, None, :L]
                return F.scaled_dot_product_attention(qm[:, :, None], kv, kv[..., :R], enable_gqa=True)[:, :, 0]

            cases["mla"] = (lambda qm=qm, lat=lat, n=lengths, R=R: decode_attention_mla(qm, lat, n, R), sdpa_mla,
                            B * L * (R + DR) * 2)  # fmt: skip
        for name, (ours, peer, nbytes) in cases.items():
            ref = peer().float()
            t_peer = _bench(peer)
            _set({})
            t_default = _bench(ours)
            for bt, w, pps, ms in grid:
                if name == "mla" and bt > 64:
                    continue  # a 288-wide key in 128-position tiles does not fit shared memory
                cfg = dict(BLOCK_T=bt, num_warps=w, PROGRAMS_PER_SM=pps, MAX_SPLITS=ms)
                _set(cfg)
                try:
                    err = ((ours().float() - ref).norm() / ref.norm()).item()
                    t = _bench(ours)
                except Exception as e:  # out of resources for a point of the grid: record it, go on
                    rows.record({"op": name, "B": B, **cfg, "error": f"{type(e).__name__}: {str(e)[:120]}"})
                    continue
                rows.record({"op": name, "B": B, **cfg, "ms": round(t, 5), "peer_ms": round(t_peer, 5),
                             "default_ms": round(t_default, 5), "x_vs_peer": round(t_peer / t, 3),
                             "hbm_TBps": round(nbytes / t / 1e9, 3), "rel_err": err})  # fmt: skip
            _set({})
            best = min((r for r in rows.rows if r.get("op") == name and r.get("B") == B and "ms" in r),
                       key=lambda r: r["ms"])  # fmt: skip
            print(f"BEST {name} B={B}: {best}  (default {t_default:.4f} ms, sliced SDPA {t_peer:.4f} ms)", flush=True)


if __name__ == "__main__":
    main()
