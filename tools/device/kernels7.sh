# GPU call (kernels, part 7): peer builds in the background, the GPU kernel tests while they build,
# then the side-by-side benchmark once both peers are built (build_status ends with "done").
# Carry .whl and .big/g1.
source tools/device/setup.sh || exit 1
bash tools/device/peers.sh start
timeout 200 pytest -q -m gpu -p no:cacheprovider tests/kernels/test_kernels_selective_scan.py tests/kernels/test_kernels_causal_conv1d.py \
  tests/kernels/test_kernels_launch.py tests/layers/test_mamba.py tests/layers/test_s4.py > $OUT/kernel_tests.log 2>&1; tail -2 $OUT/kernel_tests.log
bash tools/device/peers.sh wait
timeout 200 archzoo bench kernels --out $OUT/ssm_kernels_h100.json > $OUT/bench.log 2>&1; sed -n '/^device:/,$p' $OUT/bench.log
