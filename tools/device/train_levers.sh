# GPU call (prepared 2026-12-04b, extended 2026-12-04d; not yet run): the KD loss's forms side by side (unfused, fused
# through archzoo.kernels.kd_loss_rows, Liger-Kernel's fused linear JSD at beta 0 from .whl/), then the trainer's
# throughput levers one by one on the MLA student (issue 16, item 5): base, teacher in bf16, fused AdamW, compiled
# blocks, sync every 10, the fused loss, all five, all five at micro-batch 32 and 64; 40 KD steps each on random rows
# of 512 tokens. Needs the teacher in .big/ (setup.sh). Carry: .whl, .big/g1 then .big/g2 (two calls, back to back).
source tools/device/setup.sh || exit 1
timeout 120 pytest -q -p no:cacheprovider -m gpu tests/kernels/test_kd_loss.py 2>&1 | tail -3
timeout 120 python3 tools/bench_kd_loss.py --out $OUT/kd_loss.json 2>&1 | grep -E '^\|' | tail -8
timeout 420 python3 tools/train_levers.py configs/distill/smollm2-mla.yaml --steps 40 --out $OUT/levers.json 2>&1 \
    | grep -E '^\{|Error|error' | tail -20
