# GPU call (kernels, part 2): peer builds in the background (if not built), the GPU kernel tests,
# then the selective-scan sweep at l=4k (parallel compiles first) and its best configs re-timed at
# 1k and 16k, then the causal-conv1d sweep. Carry .whl and .big/g1.
source tools/device/setup.sh || exit 1
bash tools/device/peers.sh start
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > $OUT/device.txt
timeout 150 pytest -q -m gpu -p no:cacheprovider tests/kernels/test_kernels_selective_scan.py > $OUT/kernel_tests.log 2>&1; tail -2 $OUT/kernel_tests.log
pids=""
for i in 0 1 2 3 4 5; do timeout 200 python3 tools/tune_ssm_kernels.py --compile-only --shard $i/6 > $OUT/compile_$i.log 2>&1 & pids="$pids $!"; done
if [ -n "$CONV_TUNE" ] && [ -f tools/tune_causal_conv1d.py ]; then
  for i in 0 1; do timeout 200 python3 tools/tune_causal_conv1d.py --compile-only --shard $i/2 > $OUT/compile_conv_$i.log 2>&1 & pids="$pids $!"; done
fi
wait $pids  # not the peer build, which runs on
timeout 150 python3 tools/tune_ssm_kernels.py --out $OUT/tune_4096.json > $OUT/tune_4096.log 2>&1; tail -2 $OUT/tune_4096.log
for L in 1024 16384; do
  timeout 60 python3 tools/tune_ssm_kernels.py --length $L --from-json $OUT/tune_4096.json --top 10 --out $OUT/tune_$L.json > $OUT/tune_$L.log 2>&1; tail -2 $OUT/tune_$L.log
done
[ -n "$CONV_TUNE" ] && [ -f tools/tune_causal_conv1d.py ] && timeout 100 python3 tools/tune_causal_conv1d.py --out $OUT/tune_conv.json > $OUT/tune_conv.log 2>&1; tail -4 $OUT/tune_conv.log
cat /root/peerlogs/build_status 2>/dev/null
