# GPU call (prepared 2026-12-04c, not yet run): the captured decode path against eager for every student
# and the captured speculative round (tests/test_gpu_decode.py, test_speculative_capture.py; the former last hit dynamo's recompile cap after 9 students, since fixed), the decode GEMV's
# GPU tests and benchmark against cuBLAS, then the teacher shape and two students with the GEMV in the step beside
# cuBLAS in one process (issue 18, item 3).
source tools/device/setup.sh || exit 1
timeout 300 pytest -v -p no:cacheprovider -rf -m gpu tests/test_gpu_decode.py tests/kernels/test_decode_linear.py tests/test_speculative_capture.py 2>&1 \
    | tee $OUT/gpu_tests.log | grep -E "FAILED|ERROR|passed|failed" | tail -12
timeout 90 python3 -m archzoo bench kernels --ops gemv --out $OUT/gemv.json > $OUT/gemv.log 2>&1; echo "gemv rc=$?"
grep -v Warn $OUT/gemv.log | tail -30
timeout 200 python3 -m archzoo bench decode configs/students/teacher.yaml configs/students/mqa.yaml configs/students/moe.yaml \
    --batch-sizes 1,16 --prompt-lens 128 --new-tokens 128 --decode-linear cublas,kernel --out $OUT/gemv_decode \
    > $OUT/gemv_decode.log 2>&1; echo "decode rc=$?"
sed -n '/## Summary/,/## Every/p' $OUT/gemv_decode/decode.md
