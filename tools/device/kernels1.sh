# GPU call (kernels, part 1): start the peer builds in the background, run the GPU kernel tests,
# then sweep the selective scan's blocks / warps / code-path flags at l=4k (compiles in 4 parallel
# shards first, then times every config in one process). Carry .whl and .big/g1.
source tools/device/setup.sh || exit 1
bash tools/device/peers.sh start
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee $OUT/device.txt
python3 -c "import torch, triton; print(torch.__version__, triton.__version__)" | tee -a $OUT/device.txt
timeout 150 pytest -q -m gpu -p no:cacheprovider tests/kernels/test_kernels_selective_scan.py tests/kernels/test_kernels_causal_conv1d.py > $OUT/kernel_tests.log 2>&1; tail -2 $OUT/kernel_tests.log
for i in 0 1 2 3; do timeout 240 python3 tools/tune_ssm_kernels.py --compile-only --shard $i/4 > $OUT/compile_$i.log 2>&1 & done; wait
timeout 200 python3 tools/tune_ssm_kernels.py --out $OUT/tune_4k.json > $OUT/tune_4k.log 2>&1; tail -2 $OUT/tune_4k.log
cat /root/peerlogs/build_status 2>/dev/null
