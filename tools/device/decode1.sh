# GPU call (session 2026-12-04b): the Triton decode-attention and linear-attention kernels' tests on the
# GPU (they ran only in the interpreter before), the decode-attention benchmark, then every GPU-marked test.
source tools/device/setup.sh || exit 1
export ARCHZOO_LINEAR_ATTENTION_TRITON=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee $OUT/device.txt
python3 -c "import torch, triton, transformers; print(torch.__version__, triton.__version__, transformers.__version__)" | tee -a $OUT/device.txt
timeout 170 pytest -q -p no:cacheprovider tests/kernels/test_decode_attention.py tests/kernels/test_linear_attention_triton.py tests/layers/test_linear_attention.py 2>&1 | tee $OUT/kernel_tests.log | tail -25
timeout 90 python3 -m archzoo bench kernels --ops decode_attention --out $OUT/decode_attention.json 2>&1 | tail -30
timeout 280 pytest -q -m gpu -p no:cacheprovider tests --deselect tests/kernels/test_decode_attention.py --deselect tests/kernels/test_linear_attention_triton.py 2>&1 | tee $OUT/gpu_tests.log | tail -30
