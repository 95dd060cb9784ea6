# GPU call right after kernels11.sh (machine warm, /root kept; carries .big/g2, the rest of the teacher GGUF):
# the teacher-generated corpus's speed (issue 16, item 2): 2M tokens from the built-in training prompts,
# a different prompt per row, batch 256, through the captured decode step; kept in /root/gen for spec1.sh (next
# call, machine warm) and sent back gzipped under $OUT. .big/g1 (the previous call) carried the Shakespeare cache (setup.sh).
source tools/device/setup.sh || exit 1
ls -la /root/archzoo-cache/teachers/ | tail -4
t0=$(date +%s.%N)
timeout 150 python3 -m archzoo data generate --teacher smollm2-135m --out /root/gen/teacher_2m.jsonl \
    --size-tokens 2000000 --batch-size 256 --max-new-tokens 256 --seed 0 > $OUT/gen.log 2>&1; echo "gen rc=$?"
echo "wall $(echo "$(date +%s.%N) - $t0" | bc) s (process start, teacher load and compile included)"; tail -5 $OUT/gen.log
mkdir -p $OUT/gen && gzip -c /root/gen/teacher_2m.jsonl > $OUT/gen/teacher_2m.jsonl.gz  # comes back; /root stays warm
python3 - <<'PY'
import json, os
p = "/root/gen/teacher_2m.jsonl"
if os.path.exists(p):
    rows = [json.loads(l) for l in open(p)]
    print(len(rows), "texts;", sum(len(r["text"]) for r in rows), "chars; first:", rows[0]["text"][:300].replace("\n", " | "))
PY
