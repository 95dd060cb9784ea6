# Starts a queue of GPU jobs in the background and returns at once; `tools/device/watch.sh` (the next calls, each
# issued within 30 s of the last, while the machine stays warm) waits on it and brings its results back. Why: one
# call may run 10 minutes and a cut distill cannot resume in a later lease (the students stay on the machine), so
# five per-student calls lost a run's tail each time (2026-12-05); a queue runs the lease's whole time, one job
# after another, and loses at most the job in progress when the lease ends.
# Usage, in the first call (the teacher may come in later calls: the jobs that need it wait for it):
#   JOBS="distill:draft-8l spec:draft-8l distill:swa speed distill:mqa" bash tools/device/queue.sh
# Jobs: distill:<s> (configs/distill/smollm2-<s>.yaml, then its rows scored in the background while the next job
# runs; distill:<a>+<b> trains two students at once on the one GPU), spec:<s> (issue 20: the teacher alone beside speculative decoding with distilled <s>, k = 2 / 4, the verify
# through the decode-attention kernel and through masked SDPA),
# kernels:moe,la (issue 19: archzoo bench kernels per op, into docs/results/kernels/queue/; kernels:conv waits for
# convpeer, which builds causal-conv1d from the sdist in .whl/ in the background and brings its wheel back), l2ab (issue 18: the
# GEMV at batch 8-64 with PDL, with and without its L2 prefetch, beside auto), stepprof:<s>,<s> (issue 18: a
# student's step at batch 1 / 16 profiled kernel by kernel), decode64 (issue 18: the
# GEMV's 64-row plan against cuBLAS), gemvtune[:rows] (issue 18: the decode GEMV's CUDA_CONFIG swept at 16 and 8
# rows, or those given (gemvtune:64), by tools/tune_gemv.py against its default plan and cuBLAS, into
# docs/results/kernels/queue/), gemvstep[:rows] (the step with gemvtune's suggested configuration, through
# ARCHZOO_DECODE_LINEAR_CONFIG, against the default, each beside cuBLAS), decodeab:<s>,<s>
# (students, cuBLAS against auto projections), hfpeer (issue 18: the teacher's shape beside Hugging Face generate), mlafold (MLA's
# folded decode copies against the unfolded ones), corpus (the distill runs' corpus, its parts brought back), decode (issue 18: the decode kernels' GPU tests, and cuBLAS / the GEMV / the GEMV with programmatic dependent
# launch side by side at batch 1 and 16), s4step (issue 18: S4D's step as one kernel against the compiled ops, its GPU
# tests first), attnsingle (issue 18: decode attention's short buffers in one tile against the splits and the
# merge), attnfixup (issue 18: decode attention's splits merged by the last split program, at batch 16 / 64),
# autotune64 (issue 18: the batch-64 step with Inductor's max-autotune beside the defaults), ropewrite
# (issue 18: above 16 rows, RoPE + cache write in one kernel after cuBLAS), trainprof:mqa,mla (issue 16: each recipe as shipped, profiled by
# tools/train_levers.py --variants asis --profile asis), speed (issue 17: configs/bench/smollm2.yaml, every architecture's (speed:fresh: no committed row kept)
# decode speed), gputests (the GPU tests of kernels built on the CPU since: chunk-parallel linear attention, decode
# attention with several queries a row, the fused Mamba step; into docs/results/gpu-tests/). Timed jobs (spec, decode, speed) wait
# for the background scoring first, so nothing else runs on the GPU while they time.
source tools/device/setup.sh || exit 1
Q=/root/queue
if [ -f $Q/pid ] && kill -0 "$(cat $Q/pid)" 2> /dev/null; then echo "a queue is running: $(cat $Q/pid)"; exit 0; fi
mkdir -p $Q/stage /root/runs /root/suite
[ -d /root/suite/rows ] || cp -r docs/results/distillation/smollm2/rows /root/suite/  # scored rows kept: --resume
[ -f /root/archzoo-cache/teachers/SmolLM2-135M-Instruct.Q4_1.gguf ] || echo "no teacher yet: distill, spec and speed wait for it"
# a job done by an earlier queue on this machine is skipped (the runner's resume list): say so, or FRESH=1 runs it again
[ "${FRESH:-0}" = 1 ] && rm -f $Q/done
for j in $JOBS; do
  grep -qxF "$j" $Q/done 2> /dev/null && echo "skipped: $j (done by an earlier queue on this machine; FRESH=1 runs it again)"
done
echo "$JOBS" > $Q/jobs  # watch.sh restarts the runner from here if the machine's harness ended it with a call
# its own session, every descriptor off the call's: the call returns at once and the runner outlives it
setsid nohup bash tools/device/queue_run.sh > $Q/queue.log 2>&1 < /dev/null &
echo $! > $Q/pid
sleep 5; echo "queue $(cat $Q/pid) started: $JOBS"; cat $Q/queue.log
