# GPU call (kernels, part 8): the scan's planned host path. Peer builds in the background, the GPU kernel
# tests while they build, then the side-by-side benchmark (all ops), the scan at l=1k twice more, and the
# host profile of both scans at l=1k. Carry .whl and .big/g1.
source benchmarks/device/setup.sh || exit 1
mkdir -p /root/peerlogs
[ -f /root/peerlogs/build_status ] || setsid nohup bash benchmarks/build_peers.sh .big/g1 /root/peerlogs > /root/peerlogs/out 2>&1 < /dev/null &
timeout 240 pytest -q -m gpu -p no:cacheprovider tests/test_kernels_selective_scan.py tests/test_kernels_causal_conv1d.py \
  tests/test_kernels_launch.py tests/test_mamba.py tests/test_s4.py > $OUT/kernel_tests.log 2>&1; tail -4 $OUT/kernel_tests.log
for i in $(seq 1 110); do grep -q done /root/peerlogs/build_status 2>/dev/null && break; sleep 5; done; cat /root/peerlogs/build_status
timeout 200 python3 benchmarks/bench_ssm_kernels.py --out $OUT/ssm_kernels_h100.json > /tmp/bench.log 2>&1; sed -n '/^device:/,$p' /tmp/bench.log
for r in 1 2; do
  timeout 60 python3 benchmarks/bench_ssm_kernels.py --ops scan --lengths 1024 --out $OUT/ssm_kernels_h100_l1024_plan_repeat$r.json > /tmp/rep$r.log 2>&1
  grep -E "^\| 1024" /tmp/rep$r.log
done
timeout 90 python3 benchmarks/profile_scan_host.py --length 1024 --top 18 > $OUT/profile_scan_host_l1024.log 2>&1; tail -3 $OUT/profile_scan_host_l1024.log
