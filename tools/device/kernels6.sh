# GPU call (kernels, part 6): peer builds in the background, a host-time profile of the scan at l=1k
# (tools/profile_scan_host.py, before the peers exist: archzoo alone), then the side-by-side
# benchmark once the peers are built. Carry .whl and .big/g1.
source tools/device/setup.sh || exit 1
bash tools/device/peers.sh start
timeout 60 python3 tools/profile_scan_host.py --length 1024 > $OUT/profile_1k.log 2>&1; head -40 $OUT/profile_1k.log
for i in $(seq 1 100); do [ -f /root/peerlogs/build_status ] && break; sleep 5; done; cat /root/peerlogs/build_status
timeout 60 python3 tools/profile_scan_host.py --length 1024 > $OUT/profile_1k_peers.log 2>&1
timeout 300 archzoo bench kernels --out $OUT/ssm_kernels_h100.json > $OUT/bench.log 2>&1; sed -n '/^device:/,$p' $OUT/bench.log
