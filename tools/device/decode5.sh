# GPU call (session 2026-12-04b): GPU tests of the new paths (decode attention at MLA's rank-256 shape, S4D's
# precomputed real-arithmetic step, captured vs eager generate for them), then the teacher shape and every student
# in ONE bench run at batch 1 / 64 x prompts 128 / 4,096, then kernel profiles of the MoE and S4D steps.
source tools/device/setup.sh || exit 1
timeout 100 pytest -q -p no:cacheprovider -rf tests/kernels/test_decode_attention.py tests/layers/test_fused.py \
    "tests/test_gpu_decode.py::test_captured_generate_matches_eager_in_fp32" -k "cuda or s4 or mla or fused" 2>&1 | tail -8
timeout 290 python3 -m archzoo bench decode configs/students/*.yaml --batch-sizes 1,64 --prompt-lens 128,4096 \
    --new-tokens 128 --out $OUT/all 2>&1 | grep -E "tokens/s|error|Error" | tail -80
timeout 60 python3 tools/decode_profile.py configs/students/moe.yaml configs/students/s4.yaml --batch 1 --prompt 128 \
    --steps 10 --out $OUT/profile_moe_s4.json 2>&1 | grep -v Warn | tail -30
