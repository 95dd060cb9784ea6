# GPU call (session 2026-12-04c, call 3): the captured decode path against eager for every student on CUDA
# (issue 15's GPU invariants), then issue 19's peers in one process (fla's chunk_linear_attn and parallel_based,
# fla's fused recurrent update, the grouped MoE against the loop and a dense SwiGLU), then the decode kernels'
# batch-1 step with coordinate-descent tuning (issue 18). Carries the first part of the teacher GGUF (.big/g1) for
# the next call (gen1.sh), which must follow while the machine is warm.
source tools/device/setup.sh || exit 1
python3 -c "import fla, fla.ops.linear_attn; print('fla', fla.__version__)" 2>&1 | tail -1
timeout 150 pytest -v -p no:cacheprovider -rf tests/test_gpu_decode.py 2>&1 | tee $OUT/gpu_decode_tests.log | grep -E "FAILED|ERROR|passed|failed" | tail -12
timeout 200 python3 -m archzoo bench kernels --ops la,based,moe,la_update --out $OUT/kernels_issue19.json > $OUT/kernels_issue19.log 2>&1
echo "kernels rc=$?"; grep -v Warn $OUT/kernels_issue19.log | grep -v "^\s*$" | tail -45
timeout 60 python3 -m archzoo bench decode configs/students/teacher.yaml --batch-sizes 1 --prompt-lens 128 --new-tokens 128 \
    --inductor-options ";coordinate_descent_tuning=1" --out $OUT/cdt > $OUT/cdt.log 2>&1; echo "cdt rc=$?"; grep "tokens/s" $OUT/cdt.log
