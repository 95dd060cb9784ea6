# Replace a running queue's remaining jobs (same lease): wait for the job in progress named $AFTER to end (when
# given), stop the runner and its jobs, forget the jobs in $REDO (so they run again, e.g. after a fix carried by
# this call), and start the runner on $JOBS. Usage: AFTER=corpus REDO=speed JOBS="speed distill:mqa" bash tools/device/requeue.sh
Q=/root/queue
source tools/device/setup.sh > /dev/null || exit 1
if [ -n "$AFTER" ]; then
  n=0; until grep -q "\] $AFTER rc=" $Q/queue.log || [ $n -ge ${AFTER_WAIT:-240} ]; do sleep 3; n=$((n + 3)); done
fi
sid=$(cat $Q/pid)  # the runner was started by setsid: its pid is its session's id
kill -- -"$sid" 2> /dev/null
# each job runs under `timeout`, which puts itself in a process group of its own: the group kill above misses it,
# and a job left running shares the GPU with the next one (2026-12-05: two distills ran beside the timed speed
# job). timeout passes the TERM on to its command. Only the runner's session: `pkill -x timeout` also killed the
# device call's own timeout, ending the call that ran this script (2026-12-06, fourteenth session).
pkill -s "$sid" 2> /dev/null; sleep 3
pgrep -f "python3 -m archzoo|tools/(train_levers|prepare_corpus|decode_profile).py" > /dev/null && { echo "jobs still running:"; pgrep -af python3; exit 1; }
for j in $REDO; do grep -vxF "$j" $Q/done > $Q/done.tmp; mv $Q/done.tmp $Q/done; done
echo "$JOBS" > $Q/jobs
setsid nohup bash tools/device/queue_run.sh >> $Q/queue.log 2>&1 < /dev/null &
echo $! > $Q/pid; sleep 3; tail -3 $Q/queue.log
