# GPU calls (kernels, part 9): the planned host paths of the scan and the conv, benchmark interleaved.
#   bash tools/device/kernels9.sh tests   # starts the peer builds, GPU kernel tests, host time per piece
#   bash tools/device/kernels9.sh bench   # (next call, machine still warm) waits for the peers, benchmarks
# Carry .whl and .big/g1.
source tools/device/setup.sh > /tmp/setup.log 2>&1 || { tail /tmp/setup.log; exit 1; }
if [ "$1" = tests ]; then
  bash tools/device/peers.sh start
  timeout 240 pytest -q -m gpu -p no:cacheprovider tests/kernels/test_kernels_selective_scan.py tests/kernels/test_kernels_causal_conv1d.py \
    tests/kernels/test_kernels_launch.py tests/layers/test_mamba.py tests/layers/test_s4.py > $OUT/kernel_tests.log 2>&1; tail -3 $OUT/kernel_tests.log
  timeout 120 python3 tools/scan_host_parts.py --length 1024 > $OUT/scan_host_parts.log 2>&1; cat $OUT/scan_host_parts.log
else
  bash tools/device/peers.sh wait
  timeout 300 archzoo bench kernels --out $OUT/ssm_kernels_h100.json > /tmp/bench.log 2>&1; sed -n '/^device:/,$p' /tmp/bench.log
  timeout 100 archzoo bench kernels --ops scan,conv --lengths 1024 --ref-max-len 0 \
    --out $OUT/ssm_kernels_h100_l1024_repeat.json > /tmp/rep.log 2>&1; grep -E "^\| 1024" /tmp/rep.log
  timeout 60 python3 tools/scan_host_parts.py --length 1024 > $OUT/scan_host_parts_with_mamba.log 2>&1; cat $OUT/scan_host_parts_with_mamba.log
fi
