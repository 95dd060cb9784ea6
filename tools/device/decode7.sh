# GPU call (session 2026-12-04c, call 1): GPU tests of the kernels changed since the last measurement, then the
# teacher shape and every student in ONE `archzoo bench decode` process at batch 1 / 64 x prompts 128 / 4,096
# (issue 15's targets: students >= 600 tokens/s at batch 1; at 64 x 4k faster than the teacher when the cache is
# smaller). The teacher runs first so that a time limit cannot cut it.
source tools/device/setup.sh || exit 1
timeout 90 pytest -q -p no:cacheprovider -rf tests/kernels/test_linear_attention_update.py tests/kernels/test_decode_attention_mla.py \
    tests/layers/test_moe.py tests/layers/test_window.py 2>&1 | tee $OUT/tests.log | tail -6
models="configs/students/teacher.yaml $(ls configs/students/*.yaml | grep -v teacher.yaml)"
timeout 450 python3 -m archzoo bench decode $models --batch-sizes 1,64 --prompt-lens 128,4096 --new-tokens 128 \
    --out $OUT/all > $OUT/bench.log 2>&1
echo "bench rc=$?"; grep -E "error|Error" $OUT/bench.log | tail -5
sed -n '/## Summary/,/## Every/p' $OUT/all/decode.md
