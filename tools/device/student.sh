# GPU call (prepared 2026-12-04d, not yet run): distill the students named in $STUDENTS (e.g. STUDENTS="mla swa"; the
# suffix of configs/distill/smollm2-<name>.yaml), then score each converted (before) and distilled (after) with the
# teacher on the held-out sets of configs/bench/smollm2-distill.yaml (issue 16's table). The students stay on the
# machine (270 MB each cannot come back): the suite's rows, each run's metrics and summary come back as one tarball.
# Here: `tar xzf student_rows.tgz` at the repository root, then
#   archzoo bench configs/bench/smollm2-distill.yaml --out docs/results/distillation/smollm2 --report-only
# Carry: .whl, the teacher (.big/g1 + .big/g2 over two warm calls) and the corpus (.big/g3, corpora.tgz.*), and
# docs/results/distillation/smollm2/ travels in the tree (its rows/ are kept for the students not run here).
# A distill cut by the time limit resumes (--resume) in the next call while the machine is warm (/root is kept).
source tools/device/setup.sh || exit 1
[ -d /root/archzoo-cache/corpora ] || echo "warning: no corpus in the cache: the first distill generates it (slow)"
DIR=docs/results/distillation/smollm2
mkdir -p $DIR /root/runs
for s in $STUDENTS; do
  run=/root/runs/smollm2-$s
  resume=""; [ -f $run/checkpoints/last.ckpt ] && resume="--resume"
  [ -f $run/summary.json ] || timeout ${DISTILL_TIMEOUT:-420} python3 -m archzoo distill configs/distill/smollm2-$s.yaml \
      --output-dir $run $resume > $OUT/distill-$s.log 2>&1
  echo "$s distill rc=$?"; tail -3 $OUT/distill-$s.log
  mkdir -p runs && ln -sfn $run runs/smollm2-$s
done
only=("SmolLM2-135M (teacher)"); for s in $STUDENTS; do only+=("$s (converted)" "$s"); done
timeout ${SUITE_TIMEOUT:-150} python3 -m archzoo bench configs/bench/smollm2-distill.yaml --out $DIR --resume \
    --only "${only[@]}" --quiet 2>&1 | tail -4
files=($DIR/rows $DIR/results.json $DIR/report.md)
for s in $STUDENTS; do files+=(runs/smollm2-$s/summary.json runs/smollm2-$s/logs/metrics.csv runs/smollm2-$s/run.yaml); done
tar czhf $OUT/student_rows.tgz "${files[@]}" 2>/dev/null; ls -la $OUT
sed -n '/## Distillation/,/^$/p' $DIR/report.md
awk '/^## KL by position/{p=1} /^## /&&!/KL by position/{p=0} p' $DIR/report.md \
    | grep -E "^## |^\| model|teacher|^\| ($(echo $STUDENTS | tr ' ' '|'))"
