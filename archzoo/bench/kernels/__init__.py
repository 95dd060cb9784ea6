"""Benchmark archzoo's kernels against their public peers on one GPU, in one process.

    archzoo bench kernels --out results/ssm_kernels.json

Times (median of ``triton.testing.do_bench``; the implementations interleaved over --rounds rounds, the
median round kept, see _interleaved) forward and forward+backward of
- the selective scan at b=4, d=2048, n=16, bf16, l in {1k, 4k, 16k}, Mamba's configuration
  (D skip, SiLU(z) gate, delta_bias, softplus; B, C (b, n, l)): archzoo Triton vs mamba_ssm's CUDA
  ``selective_scan_fn`` and its PyTorch ``selective_scan_ref``;
- the causal conv1d (width 4, SiLU) at the same b, d, l: archzoo Triton vs the causal-conv1d
  package and ``F.conv1d``;
- the decode steps (``selective_state_update``, ``causal_conv1d_update``) at b=4, d=2048;
- with ``--ops decode_attention``: ``archzoo.kernels.decode_attention`` at B in {1, 64}, 9 query / 3 KV
  heads, D=64, every row 4k valid positions in an 8k buffer, bf16, against SDPA over the whole buffer with
  a length mask (the decode step's form today), SDPA over the sliced valid length, and FlexAttention
  with a length block mask; with the fraction of the copy bandwidth reached (valid K/V bytes / time);
- with ``--ops la``: chunked linear attention (``archzoo.kernels.linear_attention``) against fla's
  ``chunk_linear_attn``, both without and both with normalisation, B=4, H=8, F=Dv=64, bf16;
- with ``--ops based``: BASED (Taylor map of 16 dims to 273 features, then ``linear_attention``, as the
  layer runs it) against fla's ``parallel_based``, B=4, H=8, value dim 64, bf16;
- with ``--ops gemv``: the decode GEMV ``archzoo.kernels.decode_linear`` (RMSNorm fused for Q|K|V and gate|up)
  at the teacher's four projections, M in {1, 16}, bf16, against ``F.linear`` (cuBLAS) and RMSNorm + ``F.linear``
  compiled by inductor, timed in CUDA graphs over weights cycled through HBM (see bench_gemv), with the
  fraction of the copy bandwidth reached (weight bytes / time);
- with ``--ops gqa``: causal SDPA over 8 x 4,096 tokens with 9 query heads and 3 or 1 K/V heads, as
  ``archzoo.layers.attention.GQA_SDPA`` calls it: ``enable_gqa`` against K/V heads repeated (bench_gqa_sdpa);
- with ``--ops moe``: the MoE layer (d_model 576, d_ff 1536, 8 experts, top-2, 4,096 tokens, train mode)
  with grouped-GEMM dispatch and with the per-expert loop, against a dense SwiGLU of the same active FLOPs;
and the peak extra memory of one call. Without a GPU only la, based and moe run, at tiny shapes (a smoke
run whose times mean nothing; ``--tiny`` does the same on a GPU). Peers that are not importable are listed as
'not installed' in the table and the JSON. Prints a table with ratios (peer time / ours, so > 1
means archzoo is faster) and writes every number to --out.

The code, one file per group: _common (timing), ssm, decode, attention, linear, moe, tables (the printed report)
and cli (main, the GPU ops' run).
"""

from .attention import bench_gqa_sdpa, bench_window_attention
from .cli import CPU_OPS, DEFAULT_LENGTHS, OPS, main
from .decode import GEMV_SHAPES, bench_decode_attention, bench_gemv, bench_linear_attention_update, bench_mla_decode
from .linear import LA_TARGET, TINY_LENGTHS, bench_based, bench_linear_attention
from .moe import MOE_TARGET, bench_moe
from .ssm import SCAN_ARGS, bench_conv, bench_decode, bench_scan, scan_fwdbwd, scan_leaves
from .tables import _table

__all__ = [
    "CPU_OPS",
    "DEFAULT_LENGTHS",
    "GEMV_SHAPES",
    "LA_TARGET",
    "MOE_TARGET",
    "OPS",
    "SCAN_ARGS",
    "TINY_LENGTHS",
    "_table",
    "bench_based",
    "bench_conv",
    "bench_decode",
    "bench_decode_attention",
    "bench_gemv",
    "bench_gqa_sdpa",
    "bench_linear_attention",
    "bench_linear_attention_update",
    "bench_mla_decode",
    "bench_moe",
    "bench_scan",
    "bench_window_attention",
    "main",
    "scan_fwdbwd",
    "scan_leaves",
]
