# GPU call (prepared 2026-12-04b, not yet run): the trainer's throughput levers one by one on the MLA student
# (issue 16, item 5): base, teacher in bf16, fused AdamW, compiled blocks, all three, all three at micro-batch
# 32 and 64; 40 KD steps each on random rows of 512 tokens. Needs the teacher in .big/ (setup.sh).
source tools/device/setup.sh || exit 1
timeout 560 python3 tools/train_levers.py configs/distill/smollm2-mla.yaml --steps 40 --out $OUT/levers.json 2>&1 \
    | grep -E '^\{|Error|error' | tail -20
