# The calls after tools/device/queue.sh: wait on the queue up to WATCH_S seconds (default 560; set the call's limit
# a little above it, and below the lease's budget left), copying its results into $OUT as they come, so a call cut
# by the lease's end still brings back every job finished before it. Here: `tar xzf results.tgz` at the repository
# root, then `archzoo bench configs/bench/smollm2-distill.yaml --out docs/results/distillation/smollm2 --report-only`.
Q=/root/queue; end=$(( $(date +%s) + ${WATCH_S:-560} ))
[ -f $Q/jobs ] || { echo "no queue here (the machine was released?)"; exit 1; }
if ! kill -0 "$(cat $Q/pid)" 2> /dev/null && ! grep -q "queue done" $Q/queue.log; then
  # the runner is gone before its end (a harness that ends a call's processes): start it again; it skips the
  # jobs done, and a cut distill resumes from its last checkpoint
  echo "runner not running: restarted"; source tools/device/setup.sh > /dev/null || exit 1
  setsid nohup bash tools/device/queue_run.sh >> $Q/queue.log 2>&1 < /dev/null &
  echo $! > $Q/pid
fi
while kill -0 "$(cat $Q/pid)" 2> /dev/null && [ "$(date +%s)" -lt "$end" ]; do
  [ -f $Q/results.tgz ] && cp $Q/results.tgz $OUT/ && cp $Q/queue.log $OUT/
  sleep 10
done
[ -f $Q/results.tgz ] && cp $Q/results.tgz $OUT/; cp $Q/queue.log $OUT/
ls $Q/corpus/corpora.tgz.* > /dev/null 2>&1 && cp $Q/corpus/corpora.tgz.* $OUT/  # the corpus job's parts (move into .big/g3/)
# a peer wheel the convpeer job built, in 15 MB parts (cat wheel_NAME.part_* > .whl/NAME here)
for w in /root/peerlogs/wheels/*.whl; do
  [ -f "$w" ] && [ ! -f /root/peerlogs/sent_$(basename $w) ] && split -b 15M "$w" "$OUT/wheel_$(basename $w).part_" \
    && touch /root/peerlogs/sent_$(basename $w)
done
cat $Q/queue.log; kill -0 "$(cat $Q/pid)" 2> /dev/null && echo "queue still running" || echo "queue finished"
for f in $Q/distill-*.log; do [ -f "$f" ] && echo "$(basename $f): $(grep -E '^step' $f | tail -1 | cut -c1-90)"; done
