# GPU call (kernels, part 5): peer builds in the background (if not built), the GPU kernel tests (scan,
# conv, launch cache), then a short sweep of the scan's forward and backward around the defaults at
# l=4k, the best re-timed at 1k and 16k. Few files under $OUT (the device returns a handful).
# Carry .whl and .big/g1; then run the side-by-side benchmark in the next call while the machine is warm.
source tools/device/setup.sh || exit 1
mkdir -p /root/peerlogs /tmp/logs
bash tools/device/peers.sh start
timeout 200 pytest -q -m gpu -p no:cacheprovider tests/kernels/test_kernels_selective_scan.py tests/kernels/test_kernels_causal_conv1d.py \
  tests/kernels/test_kernels_launch.py > $OUT/kernel_tests.log 2>&1; tail -3 $OUT/kernel_tests.log
SWEEP="--which fwd,bwd --fwd-block-d 1,2 --fwd-block-l 512,1024 --warps 1 --fwd-per-thread 8,32 --bwd-block-d 1 --bwd-block-l 64,128,256 --bwd-per-thread 2,8"
pids=""
for i in 0 1 2 3; do timeout 200 python3 tools/tune_ssm_kernels.py $SWEEP --compile-only --shard $i/4 > /tmp/logs/compile_$i.log 2>&1 & pids="$pids $!"; done
wait $pids
timeout 120 python3 tools/tune_ssm_kernels.py $SWEEP --out $OUT/tune_4096.json > /tmp/logs/tune_4096.log 2>&1; grep best /tmp/logs/tune_4096.log
for L in 1024 16384; do
  timeout 60 python3 tools/tune_ssm_kernels.py --which fwd,bwd --length $L --from-json $OUT/tune_4096.json --top 4 --out /tmp/logs/tune_$L.json > /tmp/logs/tune_$L.log 2>&1; grep best /tmp/logs/tune_$L.log
done
python3 -c "import json,sys; json.dump({L: json.load(open(f'/tmp/logs/tune_{L}.json')) for L in (1024, 16384)}, open('$OUT/tune_1k_16k.json','w'), indent=1)"
cat /root/peerlogs/build_status 2>/dev/null; ls /root/peerlogs
