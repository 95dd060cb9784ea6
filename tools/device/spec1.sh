# GPU call right after gen1.sh (machine warm: the teacher and /root/gen/teacher_2m.jsonl are there): a quick
# distillation of the 8-layer draft (tools/device/draft_quick.yaml: 400 steps on the 2M-token teacher corpus), then
# the teacher alone beside speculative decoding with that draft, k = 2 / 4 / 8, in one bench process (issue 20:
# acceptance, tokens per verify, speed-up; the captured round).
source tools/device/setup.sh || exit 1
[ -f /root/gen/teacher_2m.jsonl ] || { echo "no corpus: run gen1.sh first, in the same warm lease"; exit 1; }
timeout 300 python3 -m archzoo distill tools/device/draft_quick.yaml --output-dir /root/runs/draft-quick \
    > $OUT/distill.log 2>&1; echo "distill rc=$?"; tail -5 $OUT/distill.log
cp /root/runs/draft-quick/logs/metrics.csv $OUT/draft_metrics.csv 2>/dev/null
timeout 200 python3 -m archzoo bench decode smollm2-135m --draft /root/runs/draft-quick/student --num-draft-tokens 2,4,8 \
    --batch-sizes 1,16 --prompt-lens 128 --new-tokens 128 --out $OUT/spec > $OUT/spec.log 2>&1; echo "spec rc=$?"
sed -n '/## Summary/,/## Every/p' $OUT/spec/decode.md; grep -E "acceptance|speedup" $OUT/spec/decode.md | head -12
