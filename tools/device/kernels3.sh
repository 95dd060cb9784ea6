# GPU call (kernels, part 3): peer builds in the background, the GPU conv tests, the conv sweep
# (parallel compiles first). Carry .whl and .big/g1.
source tools/device/setup.sh || exit 1
bash tools/device/peers.sh start
timeout 120 pytest -q -m gpu -p no:cacheprovider tests/kernels/test_kernels_causal_conv1d.py > $OUT/conv_tests.log 2>&1; tail -2 $OUT/conv_tests.log
pids=""
for i in 0 1 2 3; do timeout 200 python3 tools/tune_causal_conv1d.py --compile-only --shard $i/4 > $OUT/cc_$i.log 2>&1 & pids="$pids $!"; done
wait $pids
timeout 150 python3 tools/tune_causal_conv1d.py --lengths 1024,4096,16384 --out $OUT/tune_conv.json > $OUT/tune_conv.log 2>&1; tail -12 $OUT/tune_conv.log
