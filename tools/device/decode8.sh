# GPU call (session 2026-12-04c, call 2): batch 16 for the teacher and every student in one process (decode7.sh
# ran batch 1 / 64), then the teacher beside MoE at batch 1 after MoE's gathered-expert change, then the kernel
# benchmarks written last session and not yet run (MLA decode, the linear-attention update, the FlexAttention
# window).
source tools/device/setup.sh || exit 1
models="configs/students/teacher.yaml $(ls configs/students/*.yaml | grep -v teacher.yaml)"
timeout 260 python3 -m archzoo bench decode $models --batch-sizes 16 --prompt-lens 128,4096 --new-tokens 128 \
    --out $OUT/b16 > $OUT/b16.log 2>&1; echo "b16 rc=$?"
sed -n '/## Summary/,/## Every/p' $OUT/b16/decode.md
timeout 70 python3 -m archzoo bench decode configs/students/teacher.yaml configs/students/moe.yaml --batch-sizes 1 \
    --prompt-lens 128,4096 --new-tokens 128 --out $OUT/moe > $OUT/moe.log 2>&1; echo "moe rc=$?"
sed -n '/## Summary/,/## Every/p' $OUT/moe/decode.md
timeout 170 python3 -m archzoo bench kernels --ops mla,la_update,swa --out $OUT/kernels.json > $OUT/kernels.log 2>&1
echo "kernels rc=$?"; grep -v Warn $OUT/kernels.log | tail -60
