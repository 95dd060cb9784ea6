# GPU call (kernels, part 4): peer builds in the background (if not built), the GPU scan tests, then a
# backward sweep at l=4k (MIRROR on / off, chunks of 64-256, PAIR, RELOAD) after the default forward,
# which stores its checkpoints every backward chunk inside its own 512-step chunks; the best ten
# re-timed at 1k and 16k. Carry .whl and .big/g1.
source tools/device/setup.sh || exit 1
bash tools/device/peers.sh start
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > $OUT/device.txt
timeout 150 pytest -q -m gpu -p no:cacheprovider tests/kernels/test_kernels_selective_scan.py > $OUT/kernel_tests.log 2>&1; tail -2 $OUT/kernel_tests.log
SWEEP="--which bwd --bwd-block-d 1,2 --bwd-block-l 64,128,256 --warps 1,2 --bwd-per-thread 2,8"
pids=""
for i in 0 1 2 3 4 5; do timeout 200 python3 tools/tune_ssm_kernels.py $SWEEP --compile-only --shard $i/6 > $OUT/compile_$i.log 2>&1 & pids="$pids $!"; done
wait $pids  # not the peer build, which runs on
timeout 150 python3 tools/tune_ssm_kernels.py $SWEEP --out $OUT/tune_4096.json > $OUT/tune_4096.log 2>&1; tail -2 $OUT/tune_4096.log
for L in 1024 16384; do
  timeout 60 python3 tools/tune_ssm_kernels.py --which bwd --length $L --from-json $OUT/tune_4096.json --top 10 --out $OUT/tune_$L.json > $OUT/tune_$L.log 2>&1; tail -2 $OUT/tune_$L.log
done
cat /root/peerlogs/build_status 2>/dev/null
