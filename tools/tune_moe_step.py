"""Sweep ``moe_decode_step``'s tiles (``archzoo/kernels/moe_step/triton.py`` ``CUDA_CONFIG``) at a decode step's shape:
the MoE student's layers (d_model 576, d_ff 1,536, 8 experts, top-2, bf16), a stack of ``--layers`` layers with
their own weights (read from HBM, as in a step: 1.3 GB for 30 layers, far beyond L2), each layer's input the last
one's output plus a residual add (a dependency chain, as in the step), captured in one CUDA graph. Per layer: the
time, and the fraction of the copy bandwidth its bytes (the two chosen experts' rows and the router) would take.
Each layer takes the block's RMSNorm and residual add inside its kernels, as a decode step runs it (``--unfused``:
around them, as before).

    python tools/tune_moe_step.py [--batch 1,4] [--out moe_step_tune.json]
    python tools/tune_moe_step.py --compile-only --shard 0/8   # fill Triton's cache in parallel first
    TRITON_INTERPRET=1 python tools/tune_moe_step.py --device cpu --quick   # checks this script only

Issue 18: at batch 1 on an H100 (docs/results/decode/profile_h100_stepprof_onetile.log) the MoE student's routing +
gate / up kernel took 9.3 us a layer and its down kernel 4.1, where the 10.6 MB they read takes about 3.5 us.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _tuning import Rows, add_common_args, check_device  # noqa: E402  (this folder is on sys.path)

KEYS = ("BLOCK_F", "BLOCK_D", "num_warps", "DOWN_BLOCK_N", "DOWN_BLOCK_F")


def configs(quick: bool) -> list[dict]:
    """The default first, then the gate / up tiles swept with the down tiles at their default, then the down tiles
    with the gate / up at their default (the two kernels' times add: one sweep each)."""
    gate_up = [
        (bf, bd, w)
        for bf, bd, w in itertools.product((1, 2, 4, 8, 16), (256, 1024), (1, 2, 4, 8))
        if bf * bd // (32 * w) <= 128
    ]  # fmt: skip  (two fp32 accumulators: at most 2 x 128 registers)
    down = [(bn, bfd) for bn, bfd in itertools.product((1, 2, 4, 8, 16), (512, 1024, 2048)) if bn * bfd <= 16384]
    out = [{}]
    out += [dict(BLOCK_F=bf, BLOCK_D=bd, num_warps=w) for bf, bd, w in gate_up]
    out += [dict(DOWN_BLOCK_N=bn, DOWN_MIN_BLOCK_N=bn, DOWN_BLOCK_F=bfd) for bn, bfd in down]
    return out[:6] if quick else out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(ap)
    ap.add_argument("--batch", default="1,4", help="tokens a step, comma-separated")
    ap.add_argument("--layers", type=int, default=30)
    ap.add_argument("--quick", action="store_true", help="six configurations (a smoke test)")
    ap.add_argument("--unfused", action="store_true",
                    help="the layer's input normalised and the residual added outside the kernels, as before they took "
                         "the block's norm and add")  # fmt: skip
    a = ap.parse_args()
    check_device(a.device)
    import torch

    from archzoo.kernels.moe_step import moe_decode_step
    from archzoo.kernels.moe_step import triton as T

    dev, dt = torch.device(a.device), torch.bfloat16 if a.device == "cuda" else torch.float32
    D, Fd, E, K, L = (576, 1536, 8, 2, a.layers) if a.device == "cuda" else (24, 40, 4, 2, 2)
    g = torch.Generator(device="cpu").manual_seed(0)

    def rnd(*shape, s=1.0):
        return (torch.randn(*shape, generator=g) * s).to(dev, dt)

    layers = [(rnd(E, D, s=D**-0.5), rnd(E, Fd, D, s=D**-0.5), rnd(E, Fd, D, s=D**-0.5), rnd(E, D, Fd, s=Fd**-0.5))
              for _ in range(L)]  # fmt: skip
    nw = (1 + 0.1 * torch.randn(D, generator=g)).to(dev, dt)  # the block's RMSNorm weight
    moved = (E * D + K * 3 * Fd * D) * (2 if dt == torch.bfloat16 else 4)  # bytes a layer reads (one token)
    copy_bw = None
    if a.device == "cuda" and not a.compile_only:  # the copy bandwidth, measured here: device-to-device, 1 GiB
        import triton.testing

        buf = torch.empty(1 << 29, device=dev, dtype=torch.bfloat16)
        ms = triton.testing.do_bench(lambda: buf[: 1 << 28].copy_(buf[1 << 28 :]), rep=50, return_mode="median")
        copy_bw = 2 * (1 << 28) * 2 / (ms * 1e-3)
        del buf

    rows = Rows(a.out)
    shard, n_shards = (int(v) for v in a.shard.split("/"))
    base = {}
    for i, over in enumerate(configs(a.quick)):
        if i % n_shards != shard and not (i == 0 and not a.compile_only):
            continue
        T.CONFIG_OVERRIDE.clear()
        T.CONFIG_OVERRIDE.update(over)
        for N in (int(b) for b in a.batch.split(",")):
            x0 = rnd(N, D)

            def stack(x0=x0):
                x = x0
                for rw, gw, uw, dw in layers:
                    if a.unfused:  # an RMSNorm and an add around the kernels (PyTorch's)
                        h = x.float()
                        h = nw * (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-5)).to(dt)
                        x = x + moe_decode_step(h, rw, None, gw, uw, dw, K, True)
                    else:  # the block's norm and residual add inside the two kernels, as a decode step runs them
                        x = moe_decode_step(x, rw, None, gw, uw, dw, K, True, nw, 1e-5, x)
                return x

            try:
                if a.compile_only or a.device != "cuda":
                    stack()
                    ms = 0.0 if a.compile_only else float("nan")  # nothing timed
                else:
                    import triton.testing

                    stack()
                    torch.cuda.synchronize()
                    ms = triton.testing.do_bench_cudagraph(stack, rep=a.rep, return_mode="median")
            except Exception as e:  # a tile the compiler refuses: its row says so, the sweep goes on
                rows.record(dict(config=over, batch=N, error=f"{type(e).__name__}: {str(e)[:160]}"))
                continue
            us = ms * 1000 / L
            row = dict(config=over, batch=N, us_per_layer=round(us, 3))
            if not over:
                base[N] = us
            if base.get(N) and us == us:
                row["vs_default"] = round(us / base[N], 3)
            if copy_bw and us == us:  # distinct experts of N tokens: at most min(N * K, E)
                row["bw_fraction"] = round(moved * min(N * K, E) / K / (us * 1e-6) / copy_bw, 3)
            rows.record(row)
    T.CONFIG_OVERRIDE.clear()
    if copy_bw:
        rows.record(dict(copy_bandwidth_TBps=round(copy_bw / 1e12, 3), bytes_per_layer_batch1=moved))


if __name__ == "__main__":
    main()
