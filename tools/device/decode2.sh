# GPU call (session 2026-12-04b): fused projections and the decode-attention kernel in generate's step.
# GPU tests of the fused copies and of the captured decode path, a kernel profile of the teacher's step,
# then the teacher shape's decode bench with both attention forms and Hugging Face side by side.
source tools/device/setup.sh || exit 1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee $OUT/device.txt
timeout 120 pytest -v -p no:cacheprovider tests/layers/test_fused.py tests/test_gpu_decode.py 2>&1 | tee $OUT/tests.log | grep -E "PASSED|FAILED|ERROR|passed|failed" | tail -30
timeout 120 python3 tools/decode_profile.py configs/students/teacher.yaml --batch 1,16 --prompt 128 --out $OUT/profile.json 2>&1 | tail -32
timeout 330 python3 -m archzoo bench decode configs/students/teacher.yaml --batch-sizes 1,16,64 --prompt-lens 128,4096 \
    --new-tokens 128 --baseline hf --decode-attention kernel,sdpa --out $OUT/teacher 2>&1 | tail -28
