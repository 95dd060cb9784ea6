# GPU call (session 2026-12-04b): the kernel profile of the teacher's decode step (no-grad, as generate runs it),
# then every student's decode bench at batch 1 and 64, prompts 128 and 4,096 (decode-attention kernel, fused
# projections). decode.json is rewritten after each row, so a timeout keeps the rows measured so far.
source tools/device/setup.sh || exit 1
timeout 75 python3 tools/decode_profile.py configs/students/teacher.yaml --batch 1,16 --prompt 128 --out $OUT/profile.json 2>&1 | grep -v Warn | tail -30
students=$(ls configs/students/*.yaml | grep -v teacher.yaml)
timeout 420 python3 -m archzoo bench decode $students --batch-sizes 1,64 --prompt-lens 128,4096 --new-tokens 128 \
    --out $OUT/students 2>&1 | grep -E "tokens/s|error|Error" | tail -70
