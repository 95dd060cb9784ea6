# GPU call (prepared 2026-12-04c, not yet run): issue 19's peers alone (kernels11.sh ran out of time inside them):
# our chunked linear attention against fla's chunk_linear_attn, BASED against fla's parallel_based, and the grouped
# MoE against the per-expert loop and a dense SwiGLU; then the decode kernels' tile / split sweep (issue 18).
source tools/device/setup.sh || exit 1
timeout 400 python3 -m archzoo bench kernels --ops la,based,moe --out $OUT/issue19.json > $OUT/issue19.log 2>&1
echo "kernels rc=$?"; grep -v Warn $OUT/issue19.log | grep -v "^\s*$" | tail -60
cd tools && timeout 150 python3 tune_decode_attention.py --out $OUT/tune_decode_attention.json > $OUT/tune.log 2>&1
echo "tune rc=$?"; grep BEST $OUT/tune.log
