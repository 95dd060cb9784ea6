"""One forward + backward of ``moe_grouped_experts`` at issue 19's MoE shape (4,096 tokens, d_model 576, d_ff 1,536,
8 experts, top-2, bf16) inside cudaProfilerStart / Stop, after two warm-up calls that compile: for Nsight Compute to
read its GEMM kernels' counters (where the time goes: tensor pipes, shared memory, L2, stalls).

    ncu --clock-control none --profile-from-start off --kernel-name regex:"_gate_up|_down|_dh|_dweight" \
        --section SpeedOfLight --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis \
        --section WarpStateStats --section Occupancy --section LaunchStats python tools/moe_grouped_ncu.py
    ARCHZOO_MOE_GROUPED_CONFIG='{"SORTED_DW": 1}' ... (any setting of the kernels, as the benchmarks take it)
"""

from __future__ import annotations

import torch

from archzoo.kernels.moe_grouped import backward as B
from archzoo.kernels.moe_grouped import triton as T


def main() -> None:
    N, D, F, E, K = 4096, 576, 1536, 8, 2
    g = torch.Generator(device="cpu").manual_seed(0)

    def rnd(*shape, s=1.0):
        return (torch.randn(*shape, generator=g) * s).to("cuda", torch.bfloat16)

    x, gate, up, down = rnd(N, D), rnd(E, F, D, s=D**-0.5), rnd(E, F, D, s=D**-0.5), rnd(E, D, F, s=F**-0.5)
    top_p, top_e = torch.randn(N, E, generator=g).softmax(-1).topk(K, dim=-1)
    top_w, top_e = (top_p / top_p.sum(-1, keepdim=True)).to("cuda", torch.bfloat16), top_e.to("cuda")
    dout = rnd(N, D)
    for i in range(3):
        if i == 2:
            torch.cuda.synchronize()
            torch.cuda.cudart().cudaProfilerStart()
        out, *saved = T.moe_grouped_experts(x, gate, up, down, top_e, top_w, save=True)
        B.moe_grouped_experts_backward(dout, x, gate, up, down, top_w, *saved)
    torch.cuda.synchronize()
    torch.cuda.cudart().cudaProfilerStop()
    print("done")


if __name__ == "__main__":
    main()
