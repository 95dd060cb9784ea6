# GPU call (session 2026-12-04b): the three sliding-window students that decode3.sh lost to dynamo's recompile
# limit (fixed: the bench resets dynamo between models), same settings.
source tools/device/setup.sh || exit 1
timeout 200 python3 -m archzoo bench decode configs/students/swa.yaml configs/students/swa-w128.yaml configs/students/swa-w2048.yaml \
    --batch-sizes 1,64 --prompt-lens 128,4096 --new-tokens 128 --out $OUT/swa 2>&1 | grep -E "tokens/s|error|Error" | tail -20
