# GPU call (kernels, part 10): the conv backward's tiles, re-swept after its sums became atomics, with
# longer tiles than before (2048-8192 steps; fewer programs, so fewer block reductions and atomics per byte).
# Carry .whl.
source tools/device/setup.sh > /tmp/setup.log 2>&1 || { tail /tmp/setup.log; exit 1; }
SWEEP="--which bwd --lengths 4096,16384 --bwd-block-d 1,2 --bwd-block-l 512,1024,2048,4096,8192 --warps 2,4,8,16 --bwd-groups 1,4"
for i in 0 1 2 3 4 5 6 7; do timeout 300 python3 tools/tune_causal_conv1d.py $SWEEP --compile-only --shard $i/8 > /tmp/c$i.log 2>&1 & done; wait
timeout 240 python3 tools/tune_causal_conv1d.py $SWEEP --rep 50 --out $OUT/tune_conv_bwd_h100.json > /tmp/tune.log 2>&1; tail -2 /tmp/tune.log
python3 - <<'PY'
import json, os
rows = [r for r in json.load(open(os.environ["OUT"] + "/tune_conv_bwd_h100.json")) if "ms" in r]
for L in (4096, 16384):
    best = sorted((r for r in rows if r["length"] == L), key=lambda r: r["ms"])[:6]
    for r in best:
        print(L, {k: r[k] for k in ("BLOCK_D", "BLOCK_L", "num_warps", "ms", "regs", "spills", "GB/s")})
PY
