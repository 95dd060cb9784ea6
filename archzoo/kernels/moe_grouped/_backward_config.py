"""The tiles and switches of ``moe_grouped_experts``' backward kernels (``backward.py``), apart so that the forward's
environment hook (``triton.config_from_env``) can check a setting's name against them without importing the backward
module, which imports the forward's."""

# DH_*: the dhw program's tile (BLOCK_M rows x DH_BLOCK_N of d_ff, DH_BLOCK_K of d_model a step); DX_*: the dx
# program's (BLOCK_M x DX_BLOCK_N of d_model, DX_BLOCK_K of d_ff a step); DWD_* the down gradient's output tile
# (DWD_BLOCK_P of d_model x DWD_BLOCK_Q of d_ff), DWGU_* the gate / up gradients' (DWGU_BLOCK_P of d_ff x
# DWGU_BLOCK_Q of d_model, two accumulators); SUM_BLOCK: elements a sum program takes (dx over K, dtop_w over the
# tiles). BLOCK_M is the forward plan's. Untimed: the forward's tile shapes, not a tuning.
# The tile loads through tensor descriptors were timed and taken out (triton.py's CUDA_CONFIG says why: dh 0.443 ->
# 0.460 ms backward, dx 0.460, the weight gradients 0.439, level, on an H100). DH_HW_ROUND: dh's
# epilogue roundings by conversion (triton.py's HW_ROUND; 11,352 -> 7,051 SASS instructions, the same bits): level
# (0.443 -> 0.446 ms): dh runs one program an SM (250 registers; Nsight Compute: 12.5% occupancy, issue slots 36%
# busy, docs/results/kernels/moe_grouped_ncu_h100_2026-12-07q.txt), so fewer instructions do not shorten it. Off.
# BWD_PDL: the backward's launches with programmatic dependent launch (triton.py's PDL): level (0.445 -> 0.441 ms). Off.
# SORTED_DW: x's and dout's rows copied in sorted order by one launch (_gather_rows_kernel, GATHER_BLOCK_D columns a
# program; 2 x 9.4 MB written at the students' shape), so that the weight gradients, 199 of the backward's 445 us,
# read plain rows: there each loop step's rows come through the plan's slot indices, and Nsight Compute had their
# warps waiting on global loads for a third to two fifths of their stalls (twenty-fourth session,
# docs/results/kernels/moe_grouped_ncu_h100_2026-12-07q.txt). The same sums in the same order: the same bits.
# Written in the twenty-fourth session on the CPU; off until timed (tools/tune_moe_grouped.py --groups sorted_dw).
# DWGU_SORTED_STAGES: the gate|up weight gradient's stages with SORTED_DW, where x's tile joins dg's and du's in the
# pipeline's shared memory (3 stages: 240 KB, over sm_90's 227; 2: 160 KB; tools/sm90_compile.py --op moe_grouped
# --config '{"SORTED_DW": 1}').
# DH_PREFETCH: dh's epilogue loads (g's and u's tiles, 16 KB each at 128 x 64 bf16, and the routing weights) issued
# before its K loop: dh runs one program an SM (250 registers), so no other program's GEMM hides the epilogue's wait
# on those loads, and its K loop is short (d_model 576: 9 steps of 64). The tiles are held in bf16 through the loop
# (16 registers each a thread at 8 warps). The same loads; the same bits under the interpreter, but on sm_90 dtop_w
# came out in other bits (the epilogue's products contracted otherwise; the rest bit for bit). Written in the
# twenty-fifth session on the CPU; timed in the twenty-sixth on an H100: 0.95-0.97x the backward alone, less than
# DH_SPLIT, so off.
# DH_SPLIT: a dh program takes 1 / DH_SPLIT of a plan block's rows (64 of 128 at 2): its tile and epilogue hold half
# the registers a thread at the same warps (32 fp32 elements a tensor at 128 x 64 and 8 warps, ten such tensors
# live in the epilogue: 254-255 registers, tools/sm90_compile.py), so two programs can share an SM at 4 warps, one
# waiting on its loads while the other computes. W_d's tile is read twice as often (from L2). The same sums: the
# same bits. Twenty-fifth session, CPU; 1 (off) until timed (tools/tune_moe_grouped.py --groups dh_split).
# BWD_STREAMS: the down weight gradient on a second stream from the backward's start (it reads only dout and the
# forward's hw), beside dh, which runs one program an SM and leaves the SMs' issue slots two-thirds idle (Nsight
# Compute, twenty-fourth session); at 2 the dx GEMM and its sum follow it there once dh is done, beside the gate|up
# weight gradient. A CUDA graph captures the two streams as parallel branches. Twenty-fifth session, CPU (where it is
# a no-op: no streams); 0 (off) until timed (tools/tune_moe_grouped.py --groups streams).
# The tiles of dx (128 columns), the gate|up weight gradient (128 x 128 in 2 stages) and dh (4 stages) together:
# the backward 0.452 -> 0.409 ms (0.903x) in one process (H100, twenty-sixth session, tools/tune_moe_grouped.py --groups
# bwd_combo, docs/results/kernels/moe_grouped_tune_h100_2026-12-07v.log); each had won alone by 2-4% in two sweeps.
# On top of them DH_SPLIT 2 (8 warps, 4 stages) with BWD_STREAMS 2: 0.409 -> 0.362 ms (0.885x; the split alone 0.937x,
# the streams alone 0.961x; SORTED_DW on top 0.364, level), the next call's --groups stack
# (docs/results/kernels/moe_grouped_tune_h100_2026-12-07w.log).
CUDA_CONFIG = dict(DH_BLOCK_N=64, DH_BLOCK_K=64, DH_WARPS=8, DH_STAGES=4, DX_BLOCK_N=128, DX_BLOCK_K=64, DX_WARPS=8,
                   DX_STAGES=3, DWD_BLOCK_P=64, DWD_BLOCK_Q=128, DWD_WARPS=4, DWD_STAGES=3, DWGU_BLOCK_P=128,
                   DWGU_BLOCK_Q=128, DWGU_WARPS=8, DWGU_STAGES=2, SUM_BLOCK=1024, SUM_WARPS=4,
                   DH_HW_ROUND=0, BWD_PDL=0, SORTED_DW=0,
                   GATHER_BLOCK_D=64, DWGU_SORTED_STAGES=2, DH_PREFETCH=0, DH_SPLIT=2, BWD_STREAMS=2)  # fmt: skip
# Under the interpreter (tests): tiny tiles, so masked edges and several tiles a row run at small shapes (16 columns,
# as triton.py's INTERPRET_CONFIG says why).
INTERPRET_CONFIG = dict(DH_BLOCK_N=16, DH_BLOCK_K=16, DH_WARPS=1, DH_STAGES=1, DX_BLOCK_N=16, DX_BLOCK_K=16, DX_WARPS=1,
                        DX_STAGES=1, DWD_BLOCK_P=16, DWD_BLOCK_Q=16, DWD_WARPS=1, DWD_STAGES=1, DWGU_BLOCK_P=16,
                        DWGU_BLOCK_Q=16, DWGU_WARPS=1, DWGU_STAGES=1, SUM_BLOCK=64, SUM_WARPS=1,
                        DH_HW_ROUND=0, BWD_PDL=0, SORTED_DW=0, GATHER_BLOCK_D=16,
                        DWGU_SORTED_STAGES=1, DH_PREFETCH=0, DH_SPLIT=1, BWD_STREAMS=0)  # fmt: skip

__all__ = ["CUDA_CONFIG", "INTERPRET_CONFIG"]
