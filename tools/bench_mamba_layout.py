"""The Mamba layer's forward+backward with its projections laid out for the kernels, against the former
layout, on one GPU in one process (interleaved rounds, as ``archzoo bench kernels``).

    python tools/bench_mamba_layout.py

"time-last" (archzoo.layers.mamba._time_last): in_proj and dt_proj computed as weight @ x^T, seen as
(B, Di, T) with time the unit stride, so the scan copies none of u / delta / z. "transposed" (the former
layout): linear(x).transpose(1, 2), time at stride Di, which the scan copies to make time contiguous
and the conv reads channel-last. "B/C rows" (archzoo.layers.mamba._rows): B and C copied to contiguous
(B, N, T); "strided": x_proj's output seen through a transpose, which selective_scan_fn now copies to
rows itself (before it did, strided rows cost the layer 2-4x: docs/results/kernels/bench_mamba_layout_h100.md).
bf16 weights and activations.
"""

from __future__ import annotations

import argparse
import statistics

import torch
import torch.nn.functional as F

from archzoo.config import MambaConfig
from archzoo.layers import ForwardContext
from archzoo.layers import mamba as M


def _transposed(linear, x2, B, T, bias=True):
    y = F.linear(x2, linear.weight, linear.bias if bias else None)  # (B*T, out)
    return y.view(B, T, -1).transpose(1, 2)


def _strided_rows(t):
    return t.transpose(1, 2)


def main() -> None:
    import triton.testing

    ap = argparse.ArgumentParser()
    ap.add_argument("--d-model", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--lengths", default="1024,4096")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    torch.manual_seed(0)
    m = M.Mamba(MambaConfig(d_state=16, d_conv=4, expand=2), args.d_model).cuda().to(torch.bfloat16)
    layouts = {  # name: (projection layout, B / C layout)
        "time-last, B/C rows": (M._time_last, M._rows),
        "time-last, B/C strided": (M._time_last, _strided_rows),
        "transposed, B/C strided (before)": (_transposed, _strided_rows),
    }
    print(f"device: {torch.cuda.get_device_name()}; d_model={args.d_model} (d_inner {m.d_inner}), b={args.batch}, bf16")
    print("| l | layout | fwd ms | fwd+bwd ms |\n|---|---|---|---|")
    for L in (int(s) for s in args.lengths.split(",")):
        x = torch.randn(args.batch, L, args.d_model, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        g = torch.randn_like(x)
        res = {k: ([], []) for k in layouts}
        for _ in range(args.rounds):
            for name, (proj, rows) in layouts.items():
                M._time_last, M._rows = proj, rows

                def fwd(x=x):
                    with torch.no_grad():
                        m(x, None, ForwardContext())

                fb = lambda x=x, g=g: m(x, None, ForwardContext()).backward(g)  # noqa: E731
                grads = [x, *m.parameters()]
                res[name][0].append(triton.testing.do_bench(fwd, warmup=10, rep=100, return_mode="median"))
                res[name][1].append(triton.testing.do_bench(fb, warmup=10, rep=100, grad_to_none=grads,
                                                            return_mode="median"))  # fmt: skip
        M._time_last, M._rows = layouts["time-last, B/C rows"]
        for name, (f, fb) in res.items():
            print(f"| {L} | {name} | {statistics.median(f):.3f} | {statistics.median(fb):.3f} |")


if __name__ == "__main__":
    main()
