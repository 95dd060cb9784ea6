# The job runner behind tools/device/queue.sh (started there, or restarted by watch.sh, in its own session; not
# called by hand): the jobs of /root/queue/jobs not yet in /root/queue/done, in order. Each finished job adds its
# files to /root/queue/stage, laid out as in the repository (docs/results/...), and re-packs /root/queue/results.tgz,
# which watch.sh copies back: `tar xzf results.tgz` at the repository root here.
Q=/root/queue; S=$Q/stage; D=docs/results/distillation/smollm2
DEC=$S/docs/results/decode/pdl  # the decode jobs' files (renamed into docs/results/decode/ when indexed)
log() { echo "[$(date +%H:%M:%S)] $*"; }
pack() { ( flock 9; tar czf $Q/results.tgz.tmp -C $S . && mv $Q/results.tgz.tmp $Q/results.tgz ) 9> $Q/pack.lock; }  # the scoring packs too
score() {  # the suite's rows for student $1, converted and distilled, into /root/suite (outside the copied tree)
  local s=$1
  mkdir -p runs && ln -sfn /root/runs/smollm2-$s runs/smollm2-$s
  timeout ${SCORE_TIMEOUT:-400} python3 -m archzoo bench configs/bench/smollm2-distill.yaml --out /root/suite --resume \
      --only "SmolLM2-135M (teacher)" "$s (converted)" "$s" --quiet > $Q/score-$s.log 2>&1
  log "score $s rc=$? $(tail -1 $Q/score-$s.log | cut -c1-120)"
  mkdir -p $S/$D && cp -r /root/suite/rows $S/$D/ && cp $Q/score-$s.log $S/$D/runs/$s/ 2> /dev/null; pack
}
distill_one() {  # distill student $1 (resuming a cut run), its files staged
  local s=$1 run=/root/runs/smollm2-$1 resume=""
  [ -f $run/checkpoints/last.ckpt ] && resume="--resume"
  log "distill $s $resume"
  [ -f $run/summary.json ] || timeout ${DISTILL_TIMEOUT:-900} python3 -m archzoo distill configs/distill/smollm2-$s.yaml \
      --output-dir $run $resume > $Q/distill-$s.log 2>&1
  log "distill $s rc=$? $(grep -E '^step' $Q/distill-$s.log | tail -1 | cut -c1-100)"
  mkdir -p $S/$D/runs/$s
  cp $Q/distill-$s.log $S/$D/runs/$s/distill.log
  for f in summary.json logs/metrics.csv run.yaml; do cp $run/$f $S/$D/runs/$s/ 2> /dev/null; done
  pack
}
need_teacher() {  # the queue may start before the call that completes the teacher: its jobs that need it wait
  local gguf=/root/archzoo-cache/teachers/SmolLM2-135M-Instruct.Q4_1.gguf n=0
  until [ -f $gguf ] || [ $n -ge ${TEACHER_WAIT:-600} ]; do sleep 5; n=$((n + 5)); done
  [ -f $gguf ] || log "no teacher after ${TEACHER_WAIT:-600} s: $1 will fail"
}
bg=""
touch $Q/done  # jobs finished, one a line: a restarted runner (watch.sh) skips them
for job in $(cat $Q/jobs); do
  grep -qxF "$job" $Q/done && continue
  kind=${job%%:*}; s=${job#*:}
  case $kind in
    distill)  # distill:a, or distill:a+b to train two students at once on the one GPU (their tokens/s shared)
      need_teacher $job
      pids=""
      for one in ${s//+/ }; do distill_one $one & pids="$pids $!"; done
      wait $pids
      [ -n "$bg" ] && wait $bg  # one scoring at a time, beside the next job
      done_s=""  # scored here: the distilled students of the distillation suite (the -long ones by the `long` job)
      for one in ${s//+/ }; do
        [ -d /root/runs/smollm2-$one/student ] && grep -qF "runs/smollm2-$one}" configs/bench/smollm2-distill.yaml \
          && done_s="$done_s $one"
      done
      [ -n "$done_s" ] && { ( for one in $done_s; do score $one; done ) & bg=$!; } ;;
    spec)
      need_teacher $job
      [ -n "$bg" ] && wait $bg; bg=""
      log "spec $s"
      # the verify through the decode-attention kernel (several query tokens a row) against masked SDPA, under the
      # library's projections (the eleventh session's run compared cuBLAS and auto: docs/decode.md)
      timeout ${SPEC_TIMEOUT:-300} python3 -m archzoo bench decode smollm2-135m --draft /root/runs/smollm2-$s/student \
          --num-draft-tokens 2,4 --batch-sizes 1,16 --prompt-lens 128 --new-tokens 128 --decode-linear auto \
          --decode-attention kernel,sdpa --prompts ${SPEC_PROMPTS:-teacher-heldout} \
          --out $S/docs/results/decode/spec_$s \
          > $Q/spec-$s.log 2>&1
      log "spec $s rc=$?"; cp $Q/spec-$s.log $S/docs/results/decode/spec_$s/ 2> /dev/null; pack ;;
    passkey)  # passkey retrieval by prompt length for the teacher and this lease's students (tools/eval_passkey.py):
      # the recall test the teacher passes; passkey:all takes every distilled student on the machine
      need_teacher $job
      [ -n "$bg" ] && wait $bg; bg=""
      O=$S/docs/results/distillation; mkdir -p $O; students=""  # passkey_queue.* (renamed when indexed)
      for d in /root/runs/smollm2-*/student; do
        one=${d#/root/runs/smollm2-}; one=${one%/student}
        { [ "$s" = all ] || [[ ",$s," == *",$one,"* ]]; } && students="$students $d"
      done
      log "passkey$students"
      timeout ${PASSKEY_TIMEOUT:-300} python3 tools/eval_passkey.py smollm2-135m $students --lengths 1024,2048,4096 \
          --examples 32 --out $O/passkey_queue.json > $O/passkey_queue.log 2>&1
      log "passkey rc=$? $(tail -1 $O/passkey_queue.log | cut -c1-120)"; pack ;;
    specbig)  # issue 20 where a draft should pay: batch 64 x 4,096-token prompts, the teacher bound by reading its
      # K/V (3.4 ms a step on an H100), a student with a small cache as the draft (SWA: 1.5-1.7 ms a step there, and
      # it agrees with the teacher 84-88% of the time at k = 4 in the distillation suite)
      need_teacher $job
      [ -n "$bg" ] && wait $bg; bg=""
      log "specbig $s"
      timeout ${SPEC_TIMEOUT:-400} python3 -m archzoo bench decode smollm2-135m --draft /root/runs/smollm2-$s/student \
          --num-draft-tokens 2,4,6 --batch-sizes 64 --prompt-lens 4096 --new-tokens 128 --decode-linear auto \
          --prompts ${SPEC_PROMPTS:-teacher-heldout} --out $S/docs/results/decode/specbig_$s \
          > $Q/specbig-$s.log 2>&1
      log "specbig $s rc=$?"; cp $Q/specbig-$s.log $S/docs/results/decode/specbig_$s/ 2> /dev/null; pack ;;
    decode)  # issue 18: the decode kernels' GPU tests (PDL's included), then cuBLAS, the GEMV and the GEMV with PDL;
      # most wanted first, each step's files packed as it ends (a lease may end mid-job)
      [ -n "$bg" ] && wait $bg; bg=""
      log "decode"; O=$DEC; mkdir -p $O
      timeout 240 python3 -m pytest -q -p no:cacheprovider -rf -k "cuda or fixup" tests/kernels/test_decode_linear.py \
          tests/kernels/test_decode_qkv_rope.py tests/kernels/test_decode_attention.py \
          tests/kernels/test_decode_attention_mla.py > $O/gpu_tests.log 2>&1
      log "decode tests rc=$? $(tail -1 $O/gpu_tests.log)"; pack
      timeout 240 python3 -m archzoo bench decode configs/students/teacher.yaml --batch-sizes 1,16 --prompt-lens 128 \
          --new-tokens 128 --decode-linear cublas,kernel,kernel-pdl --out $O/bench > $O/bench.log 2>&1
      log "decode bench rc=$?"; pack
      timeout 200 python3 tools/decode_profile.py configs/students/teacher.yaml --batch 1 --prompt 128 \
          --attention kernel,kernel-2launch --decode-linear kernel-pdl --out $O/profile_teacher_b1_fixup.json \
          > $O/profile_fixup.log 2>&1
      log "decode profile fixup rc=$? $(grep replay $O/profile_fixup.log | cut -c1-120)"; pack
      timeout 300 python3 -m archzoo bench decode configs/students/teacher.yaml configs/students/mqa.yaml \
          --batch-sizes 64 --prompt-lens 128,4096 --new-tokens 128 --decode-linear cublas,kernel-pdl \
          --out $O/bench_b64 > $O/bench_b64.log 2>&1
      log "decode bench 64 rc=$? (the GEMV's tl.dot path at 64 rows against cuBLAS)"; pack
      timeout 300 python3 -m archzoo bench decode configs/students/mqa.yaml configs/students/mla.yaml \
          --batch-sizes 1,16 --prompt-lens 128 --new-tokens 128 --decode-linear cublas,kernel,kernel-pdl \
          --out $O/bench_students > $O/bench_students.log 2>&1
      log "decode bench students rc=$?"; pack
      timeout 300 python3 tools/decode_profile.py configs/students/teacher.yaml --batch 1 --prompt 128 \
          --decode-linear cublas,kernel,kernel-pdl --out $O/profile_teacher_b1.json > $O/profile.log 2>&1
      log "decode profile rc=$? $(grep -c replay $O/profile.log) rows"; pack
      timeout 200 python3 -m archzoo bench decode configs/students/teacher.yaml --batch-sizes 4,8 --prompt-lens 128 \
          --new-tokens 128 --decode-linear cublas,kernel,kernel-pdl --out $O/bench_m4_m8 > $O/bench_m4_m8.log 2>&1
      log "decode bench 4,8 rc=$? (where the GEMV stops beating cuBLAS)"; pack
      timeout 150 python3 -m archzoo bench kernels --ops decode_attention,gemv --out $O/kernels.json > $O/kernels.log 2>&1
      log "decode kernels rc=$? (decode_attention against SDPA, one launch now; the GEMV at 1 / 16 rows)"; pack ;;
    mlafold)  # issue 18: MLA's step with W_uk / W_uv folded into its copies against the unfolded step, one process
      [ -n "$bg" ] && wait $bg; bg=""
      log "mlafold"; O=$DEC; mkdir -p $O
      timeout 300 python3 tools/decode_profile.py configs/students/mla.yaml configs/students/mla-r256.yaml --batch 1,64 \
          --prompt 128 --decode-linear auto --mla-fold on,off --out $O/profile_mla_fold.json > $O/profile_mla_fold.log 2>&1
      log "mlafold rc=$? $(grep -c replay $O/profile_mla_fold.log) rows"; pack ;;
    gputests)  # the GPU tests of the kernels built on the CPU since the last lease (no teacher needed): linear
      # attention's chunk-parallel backward (its BACKWARD default waits on them), the decode-attention kernel with
      # several query tokens a row (a speculative verify), the fused Mamba decode step (FUSED_STEP waits on them)
      [ -n "$bg" ] && wait $bg; bg=""
      O=$S/docs/results/gpu-tests; mkdir -p $O; F=$O/gpu_tests_$(date +%Y-%m-%d)_queue.log
      log "gputests"
      # pytest's exit 2 (interrupted: errors while collecting) came once from a later call copying the working tree
      # while the tests were imported (2026-12-06, thirteenth session): then the run is tried again once
      for try in 1 2; do
        timeout 400 python3 -m pytest -q -p no:cacheprovider -rfs -k "gpu or cuda" \
            tests/kernels/test_linear_attention_chunk_parallel.py tests/kernels/test_linear_attention_triton.py \
            tests/kernels/test_decode_attention.py tests/kernels/test_decode_qkv_rope.py \
            tests/kernels/test_decode_linear.py tests/kernels/test_moe_step.py tests/kernels/test_moe_grouped.py \
            tests/kernels/test_moe_route.py \
            tests/kernels/test_argmax.py tests/kernels/test_kernels_causal_conv1d.py \
            tests/kernels/test_decode_linear_conv.py tests/kernels/test_s4_step.py \
            tests/tools/test_persistent_step_bench.py tests/tools/test_persistent_batch.py >> $F 2>&1
        rc=$?; [ $rc -eq 2 ] && [ $try -eq 1 ] && { log "gputests: collection failed, again in 20 s"; sleep 20; continue; }
        break
      done
      log "gputests kernels rc=$rc $(tail -1 $F)"
      # the whole file: every family's compiled step against the eager one with every decode default (twenty-first
      # session: the compiled head, decode_rope_write and S4D's kernel on; 34 of it passed before a budget ran out)
      timeout 420 python3 -m pytest -q -p no:cacheprovider -rfs tests/test_gpu_decode.py >> $F 2>&1
      log "gputests decode rc=$? $(tail -1 $F)"
      timeout 300 python3 -m pytest -q -p no:cacheprovider -rfs tests/kernels/test_mamba_step.py >> $F 2>&1
      log "gputests mamba_step rc=$? $(tail -1 $F)"; pack ;;
    mambastep)  # issue 18: the Mamba hybrids' step with the fused middle (mamba_decode_step) against the four kernels
      [ -n "$bg" ] && wait $bg; bg=""
      log "mambastep"; O=$DEC; mkdir -p $O
      # the whole file: with a GPU every test runs the kernel on it in bf16 / fp32 (no -k: its names say neither)
      timeout 240 python3 -m pytest -q -p no:cacheprovider -rf tests/kernels/test_mamba_step.py \
          > $O/mamba_step_gpu_tests.log 2>&1
      log "mambastep tests rc=$? $(tail -1 $O/mamba_step_gpu_tests.log)"; pack
      timeout 400 python3 tools/decode_profile.py configs/students/mamba.yaml configs/students/mamba-quarter.yaml \
          --batch 1,16 --prompt 128 --decode-linear auto --mamba-step fused,unfused --out $O/profile_mamba_step.json \
          > $O/profile_mamba_step.log 2>&1
      log "mambastep rc=$? $(grep -c replay $O/profile_mamba_step.log) rows"; pack ;;
    specprof)  # issue 20: where a speculative round's time goes (tools/decode_profile.py --draft), random weights (a
      # round's shapes are static, so no teacher and no distilled draft are needed): the teacher shape verifying
      # configs/students/<s>.yaml at k = 2, batch 1 x 128 and 64 x 4,096 (specprof:swa-w128 is specbig's pair)
      [ -n "$bg" ] && wait $bg; bg=""
      log "specprof $s"; O=$DEC; mkdir -p $O
      timeout 400 python3 tools/decode_profile.py configs/students/teacher.yaml --draft configs/students/$s.yaml \
          --num-draft-tokens 2 --batch 1,64 --prompt 128,4096 --decode-linear auto --steps 10 \
          --out $O/profile_spec_round_$s.json > $O/profile_spec_round_$s.log 2>&1
      log "specprof $s rc=$? $(grep -c 'ms/round' $O/profile_spec_round_$s.log) rows"; pack ;;
    qkvab)  # issue 18 at batch 16 / 64: the step's Q|K|V, RoPE and cache write as one decode_qkv_rope launch (the
      # GEMV kernel) with the other projections on cuBLAS ("auto-qkv"), against "auto"; the teacher shape and MQA
      [ -n "$bg" ] && wait $bg; bg=""
      log "qkvab"; O=$DEC; mkdir -p $O
      timeout 400 python3 -m archzoo bench decode configs/students/teacher.yaml configs/students/mqa.yaml \
          --batch-sizes 16,64 --prompt-lens 128,4096 --new-tokens 128 --decode-linear auto,auto-qkv \
          --out $O/bench_qkvab > $O/bench_qkvab.log 2>&1
      log "qkvab rc=$?"; pack ;;
    l2ab)  # issue 18 at batch 8-64: the GEMV on the tl.dot path with PDL, with and without asking L2 for its weights
      # before it waits on the kernel before (CUDA_CONFIG["L2_PREFETCH"]), beside "auto" (cuBLAS from 5 rows on); at
      # 64 rows with x in tiles of 16 rows a program (M_TILE); then the teacher's step at batch 16 profiled both ways
      [ -n "$bg" ] && wait $bg; bg=""
      log "l2ab"; O=$DEC; mkdir -p $O
      timeout 300 python3 -m archzoo bench decode configs/students/teacher.yaml configs/students/mqa.yaml \
          --batch-sizes 8,16 --prompt-lens 128 --new-tokens 128 --decode-linear auto,kernel-pdl,kernel-pdl-l2 \
          --out $O/bench_l2ab > $O/bench_l2ab.log 2>&1
      log "l2ab rc=$?"
      # batch 64: x's rows in tiles of 16 a program (M_TILE), with and without the prefetch, beside auto (cuBLAS)
      timeout 300 python3 -m archzoo bench decode configs/students/teacher.yaml configs/students/mqa.yaml \
          --batch-sizes 64 --prompt-lens 128,4096 --new-tokens 128 \
          --decode-linear auto,kernel-pdl,kernel-pdl-m16,kernel-pdl-l2-m16 --out $O/bench_m16 > $O/bench_m16.log 2>&1
      log "l2ab m16 rc=$?"
      timeout 300 python3 tools/decode_profile.py configs/students/teacher.yaml --batch 16 --prompt 128 \
          --decode-linear kernel-pdl,kernel-pdl-l2 --out $O/profile_l2ab.json > $O/profile_l2ab.log 2>&1
      log "l2ab profile rc=$? $(grep -c replay $O/profile_l2ab.log) rows"; pack ;;
    mambafold)  # issue 18: the Mamba layers' step with x_proj and dt_proj folded into one decode copy (mamba.FOLD_DT)
      # against the two projections, one process (mambafold:jamba,mamba), batch 1 and 16
      [ -n "$bg" ] && wait $bg; bg=""
      log "mambafold $s"; O=$DEC; mkdir -p $O; cfgs=""
      for one in ${s//,/ }; do cfgs="$cfgs configs/students/$one.yaml"; done
      timeout 300 python3 tools/decode_profile.py $cfgs --batch 1,16 --prompt 128 --decode-linear auto \
          --mamba-fold on,off --out $O/profile_mambafold.json > $O/profile_mambafold.log 2>&1
      log "mambafold rc=$? $(grep replay $O/profile_mambafold.log | sed 's/ kernel auto.*mamba fold/ fold/' | cut -c1-90 | tr '\n' ';')"; pack ;;
    inprojconv)  # issue 18: the Mamba layers' in_proj with the conv update in its epilogue (mamba.IN_PROJ_CONV) against
      # the two kernels, one process (inprojconv:jamba,mamba), batch 1; with the update kernels' PDL both ways
      [ -n "$bg" ] && wait $bg; bg=""
      log "inprojconv $s"; O=$DEC; mkdir -p $O; cfgs=""
      for one in ${s//,/ }; do cfgs="$cfgs configs/students/$one.yaml"; done
      timeout 300 python3 tools/decode_profile.py $cfgs --batch 1 --prompt 128 --decode-linear auto \
          --in-proj-conv on,off --update-pdl on,off --out $O/profile_inprojconv.json > $O/profile_inprojconv.log 2>&1
      log "inprojconv rc=$? $(grep replay $O/profile_inprojconv.log | sed 's/ kernel auto.*update pdl/ pdl/' | cut -c1-100 | tr '\n' ';')"; pack ;;
    stepprof)  # issue 18: where a student's batch-1 step goes, kernel by kernel (stepprof:jamba,moe): the teacher and
      # the Mamba hybrid with a step's per-layer constants made once and as before (--once), then the given students
      # with the MoE experts both ways (DECODE_EXPERTS); the library's Mamba step (four kernels: FUSED_STEP off)
      [ -n "$bg" ] && wait $bg; bg=""
      log "stepprof $s"; O=$DEC; mkdir -p $O; cfgs=""
      for one in ${s//,/ }; do cfgs="$cfgs configs/students/$one.yaml"; done
      if [ "${STEPPROF_ONCE:-1}" = 1 ]; then  # STEPPROF_ONCE=0 skips it; STEPPROF_BATCH (1,16) the batch sizes
        timeout 300 python3 tools/decode_profile.py configs/students/teacher.yaml configs/students/mamba.yaml \
            --batch 1 --prompt 128 --decode-linear auto --mamba-step unfused --once on,off \
            --out $O/profile_once.json > $O/profile_once.log 2>&1
        log "stepprof once rc=$? $(grep replay $O/profile_once.log | sed 's/.*once/once/' | cut -c1-40 | tr '\n' ';')"
      fi
      timeout 400 python3 tools/decode_profile.py $cfgs --batch ${STEPPROF_BATCH:-1,16} --prompt 128 --decode-linear auto \
          --mamba-step unfused --moe-experts reductions,fused --out $O/profile_stepprof.json > $O/profile_stepprof.log 2>&1
      log "stepprof rc=$? $(grep replay $O/profile_stepprof.log | cut -c1-60 | tr '\n' ';')"; pack ;;
    s4step)  # issue 18: S4D's decode step as one kernel (s4.FUSED_STEP, archzoo.kernels.s4d_decode_step) against the
      # compiled ops, one process, batch 1 / 16 / 64 x 128; its GPU tests first
      [ -n "$bg" ] && wait $bg; bg=""
      log "s4step"; O=$DEC; mkdir -p $O
      timeout 200 python3 -m pytest -q -m gpu tests/kernels/test_s4_step.py -p no:cacheprovider > $O/s4step_gpu_tests.log 2>&1
      log "s4step gpu tests rc=$? $(tail -1 $O/s4step_gpu_tests.log)"
      timeout 300 python3 tools/decode_profile.py configs/students/s4.yaml --batch ${S4STEP_BATCH:-1,16,64} --prompt 128 \
          --decode-linear auto --s4-step kernel,compiled --out $O/profile_s4step.json > $O/profile_s4step.log 2>&1
      log "s4step rc=$? $(grep replay $O/profile_s4step.log | sed 's/ kernel auto.*s4 step/ s4/' | cut -c1-90 | tr '\n' ';')"; pack ;;
    gridsync)  # issue 18, item 4: a grid-wide barrier in one persistent Triton kernel against a kernel boundary in a
      # CUDA graph, plain and with PDL (tools/grid_sync_bench.py): what a persistent decode kernel stands on
      [ -n "$bg" ] && wait $bg; bg=""
      log "gridsync"; O=$DEC; mkdir -p $O
      timeout 300 python3 tools/grid_sync_bench.py --out $O/grid_sync.json > $O/grid_sync.log 2>&1
      log "gridsync rc=$? $(grep '^| [0-9]' $O/grid_sync.log | tr '\n' ';')"; pack ;;
    persistmlp)  # issue 18, item 4: every layer's SwiGLU MLP of a 30-layer stack in one persistent kernel (grid barriers
      # between the stages) against decode_linear's two launches a layer in a graph (tools/persistent_mlp_bench.py)
      [ -n "$bg" ] && wait $bg; bg=""
      log "persistmlp"; O=$DEC; mkdir -p $O
      timeout 300 python3 tools/persistent_mlp_bench.py --out $O/persistent_mlp.json > $O/persistent_mlp.log 2>&1
      log "persistmlp rc=$? $(grep '^| [dp]' $O/persistent_mlp.log | cut -c1-80 | tr '\n' ';')"; pack ;;
    persiststep)  # issue 18, item 4: the teacher-shaped layer stack at batch 1 in one persistent kernel (five grid
      # barriers a layer) beside archzoo's captured step of that shape (tools/persistent_step_bench.py)
      [ -n "$bg" ] && wait $bg; bg=""
      log "persiststep"; O=$DEC; mkdir -p $O
      timeout 400 python3 tools/persistent_step_bench.py --out $O/persistent_step.json > $O/persistent_step.log 2>&1
      log "persiststep rc=$? $(grep -E '^(persistent|archzoo)' $O/persistent_step.log | cut -c1-90 | tr '\n' ';')"; pack ;;
    persistbatch)  # issue 18, item 4 at batch 8 / 16: the teacher-shaped stack for B rows in one persistent kernel
      # (tl.dot stages) beside archzoo's captured step at that batch (tools/persistent_batch.py)
      [ -n "$bg" ] && wait $bg; bg=""
      log "persistbatch"; O=$DEC; mkdir -p $O
      timeout 400 python3 tools/persistent_batch.py --batch ${PERSISTBATCH_BATCH:-1,8,16} --out $O/persistent_batch.json \
          > $O/persistent_batch.log 2>&1
      log "persistbatch rc=$? $(grep -E '^batch' $O/persistent_batch.log | cut -c1-100 | tr '\n' ';')"; pack ;;
    ropewrite)  # issue 18: above 16 rows (cuBLAS's Q|K|V), RoPE + the cache write as one kernel (decode_rope_write,
      # fused.ROPE_WRITE_MIN_ROWS) against the two compiled kernels, one process, teacher and MQA at 32 / 64 x 128
      [ -n "$bg" ] && wait $bg; bg=""
      log "ropewrite"; O=$DEC; mkdir -p $O
      timeout 120 python3 -m pytest -q -m gpu tests/kernels/test_decode_qkv_rope.py -k rope_write -p no:cacheprovider \
          > $O/ropewrite_gpu_tests.log 2>&1
      log "ropewrite gpu tests rc=$? $(tail -1 $O/ropewrite_gpu_tests.log)"
      timeout 400 python3 tools/decode_profile.py configs/students/teacher.yaml configs/students/mqa.yaml --batch 32,64 \
          --prompt 128 --decode-linear auto --rope-write on,off --out $O/profile_ropewrite.json > $O/profile_ropewrite.log 2>&1
      log "ropewrite rc=$? $(grep replay $O/profile_ropewrite.log | sed 's/ auto fold.*rope write/ rw/' | cut -c1-90 | tr '\n' ';')"; pack ;;
    autotune64)  # issue 18: the batch-64 step (cuBLAS's GEMMs, Inductor's element-wise kernels: the fixed part of every
      # 64 x 4k speed-up) compiled with Inductor's max-autotune (Triton GEMM templates, which may take the norm-free
      # epilogues: SiLU x up, the residual adds) beside the defaults, one process, teacher and MQA at 64 x 128
      [ -n "$bg" ] && wait $bg; bg=""
      log "autotune64"; O=$DEC; mkdir -p $O
      timeout 540 python3 -m archzoo bench decode configs/students/teacher.yaml configs/students/mqa.yaml \
          --batch-sizes 64 --prompt-lens 128 --new-tokens 128 --decode-linear auto \
          --inductor-options ";max_autotune=1,coordinate_descent_tuning=1" --out $O/autotune64 > $O/autotune64.log 2>&1
      log "autotune64 rc=$? $(grep -h '| configs' $O/autotune64/decode.md 2> /dev/null | cut -c1-110 | tr '\n' ' ')"; pack ;;
    attnfixup)  # issue 18: decode attention's splits merged by the last split program (FIXUP) against the merge
      # kernel, teacher and MQA at batch 16 / 64 x 128 (ATTNFIXUP_BATCH), one process: FIXUP lost at batch 1 under PDL
      # and was never timed where the step runs cuBLAS's GEMMs (30 merge launches a step)
      [ -n "$bg" ] && wait $bg; bg=""
      log "attnfixup"; O=$DEC; mkdir -p $O
      timeout 400 python3 tools/decode_profile.py configs/students/teacher.yaml configs/students/mqa.yaml \
          --batch ${ATTNFIXUP_BATCH:-16,64} --prompt 128 --decode-linear auto --attention kernel,kernel-fixup \
          --out $O/profile_attnfixup.json > $O/profile_attnfixup.log 2>&1
      log "attnfixup rc=$? $(grep replay $O/profile_attnfixup.log | sed 's/ auto fold.*replay/ replay/' | cut -c1-90 | tr '\n' ';')"; pack ;;
    attnsingle)  # issue 18: decode attention with a short buffer in one tile (SINGLE_MAX_T 256: no loop, no merge)
      # against the splits and the merge, one process, teacher and MQA at batch 1 / 16 / 64 x 128; its GPU test first
      [ -n "$bg" ] && wait $bg; bg=""
      log "attnsingle"; O=$DEC; mkdir -p $O
      timeout 200 python3 -m pytest -q -m gpu tests/kernels/test_decode_attention.py -k single -p no:cacheprovider \
          > $O/attnsingle_gpu_tests.log 2>&1
      log "attnsingle gpu tests rc=$? $(tail -1 $O/attnsingle_gpu_tests.log)"
      timeout 400 python3 tools/decode_profile.py configs/students/teacher.yaml configs/students/mqa.yaml \
          --batch ${ATTNSINGLE_BATCH:-1,16,64} --prompt 128 --decode-linear auto --attention kernel,kernel-single \
          --out $O/profile_attnsingle.json > $O/profile_attnsingle.log 2>&1
      log "attnsingle rc=$? $(grep replay $O/profile_attnsingle.log | sed 's/ auto fold.*replay/ replay/' | cut -c1-90 | tr '\n' ';')"; pack ;;
    attnsplit)  # issue 18 at batch 1: decode attention with at least 4 tiles a split (a short cache: one split, no
      # merge launch) against one tile a split, the teacher shape and MQA, 128- and 4,096-token prompts
      [ -n "$bg" ] && wait $bg; bg=""
      log "attnsplit"; O=$DEC; mkdir -p $O
      timeout 400 python3 tools/decode_profile.py configs/students/teacher.yaml configs/students/mqa.yaml \
          --batch 1,16 --prompt 128,4096 --decode-linear auto --attention kernel,kernel-long-splits --steps 20 \
          --out $O/profile_attnsplit.json > $O/profile_attnsplit.log 2>&1
      log "attnsplit rc=$? $(grep -c replay $O/profile_attnsplit.log) rows"; pack ;;
    decodeab)  # issue 18: students' decode steps with cuBLAS projections against the decode GEMV ("auto"), one process
      # (decodeab:mamba,jamba,based,s4: their projections through the GEMV since 2026-12-05)
      [ -n "$bg" ] && wait $bg; bg=""
      log "decodeab $s"; O=$DEC; mkdir -p $O; cfgs=""; for one in ${s//,/ }; do cfgs="$cfgs configs/students/$one.yaml"; done
      timeout 300 python3 -m archzoo bench decode $cfgs --batch-sizes 1,16 --prompt-lens 128 --new-tokens 128 \
          --decode-linear cublas,auto --out $O/bench_ab_${s//,/_} > $O/bench_ab_${s//,/_}.log 2>&1
      log "decodeab rc=$?"; pack ;;
    decode64)  # issue 18: the GEMV's 64-row plan (64-row weight blocks, split-K) against cuBLAS, teacher and MQA
      [ -n "$bg" ] && wait $bg; bg=""
      log "decode64"; O=$DEC; mkdir -p $O
      timeout 300 python3 -m archzoo bench decode configs/students/teacher.yaml configs/students/mqa.yaml \
          --batch-sizes 64 --prompt-lens 128,4096 --new-tokens 128 --decode-linear cublas,kernel-pdl \
          --out $O/bench_b64_wide > $O/bench_b64_wide.log 2>&1
      log "decode64 rc=$?"; pack ;;
    gemvstep)  # issue 18: the step as shipped (the GEMV's per-epilogue plans at 8-31 rows), without them ("flat",
      # ARCHZOO_DECODE_LINEAR_CONFIG={"EPILOGUE_PLANS":false}), with the norm's K tiles in a loop ("normloop",
      # {"NORM_UNROLL":0}: before the twentieth session) and with gemvtune's suggestion if it made one, each process with cuBLAS beside it: teacher
      # and MQA at batch 8 / 16 x 128 (gemvstep:64: 64 x 128). GEMVSTEP_BATCH overrides the batch sizes (1,8,16),
      # GEMVSTEP_VARIANTS the steps ("default normloop"; "fixup": split-K's partials summed by each column block's last
      # split program instead of a second launch, never timed in a step: 90 reduce launches, 0.14 ms of batch 16's)
      [ -n "$bg" ] && wait $bg; bg=""
      rows=$s; [ "$job" = gemvstep ] && rows=16,8; tag=${rows//,/_}; O=$S/docs/results/kernels/queue; mkdir -p $DEC
      sugg=$(python3 -c "import json,sys; d=json.load(open(sys.argv[1])); s=next((r for r in d if r.get('summary')), {}).get('suggested_override'); print(json.dumps(s, separators=(',', ':')) if s else '')" \
          $O/gemv_tune_$tag.json 2> /dev/null)
      log "gemvstep $rows: suggested ${sugg:-none}"
      bs=${GEMVSTEP_BATCH:-8,16}; [ "$rows" = 64 ] && bs=64
      for v in ${GEMVSTEP_VARIANTS:-default flat normloop tuned}; do
        [ $v = tuned ] && [ -z "$sugg" ] && continue
        [ $v = flat ] && [ "$rows" = 64 ] && continue  # the per-epilogue plans apply below 32 rows only
        ( env=""; [ $v = tuned ] && env="ARCHZOO_DECODE_LINEAR_CONFIG=$sugg"
          [ $v = flat ] && env='ARCHZOO_DECODE_LINEAR_CONFIG={"EPILOGUE_PLANS":false}'
          [ $v = normloop ] && env='ARCHZOO_DECODE_LINEAR_CONFIG={"NORM_UNROLL":0}'
          [ $v = fixup ] && env='ARCHZOO_DECODE_LINEAR_CONFIG={"FIXUP":true}'  # split-K summed by the last program
          env $env timeout 300 python3 -m archzoo bench decode configs/students/teacher.yaml configs/students/mqa.yaml \
              --batch-sizes $bs --prompt-lens 128 --new-tokens 128 --decode-linear cublas,auto \
              --out $DEC/gemvstep_${tag}_$v > $DEC/gemvstep_${tag}_$v.log 2>&1
          log "gemvstep $v rc=$? $(grep -h '| configs' $DEC/gemvstep_${tag}_$v/decode.md 2> /dev/null | cut -c1-100 | tr '\n' ' ')" )
      done
      pack ;;
    hfpeer)  # issue 18: the teacher's shape against Hugging Face generate (dynamic and static cache) in one process, at
      # batch 1 / 16 / 64 x 128 and 64 x 4,096: the peer the README's figures are read against
      [ -n "$bg" ] && wait $bg; bg=""
      log "hfpeer"; O=$DEC; mkdir -p $O
      timeout 420 python3 -m archzoo bench decode configs/students/teacher.yaml --batch-sizes 1,16,64 \
          --prompt-lens 128,4096 --new-tokens 128 --baseline hf --out $O/bench_hf > $O/bench_hf.log 2>&1
      log "hfpeer rc=$? $(grep -c '| configs' $O/bench_hf/decode.md 2> /dev/null) rows"; pack ;;
    gemvtune)  # issue 18: the decode GEMV's CUDA_CONFIG swept by tools/tune_gemv.py at the rows given (gemvtune:64;
      # default 16,8), the teacher's four projections with their step epilogues, against the default plan and cuBLAS;
      # compiled first in 8 shards
      [ -n "$bg" ] && wait $bg; bg=""
      rows=$s; [ "$job" = gemvtune ] && rows=16,8; tag=${rows//,/_}  # s is the job itself without a ":"
      log "gemvtune $rows"; O=$S/docs/results/kernels/queue; mkdir -p $O; pids=""
      for i in 0 1 2 3 4 5 6 7; do
        timeout 240 python3 tools/tune_gemv.py --rows $rows --compile-only --shard $i/8 > $Q/gemvtune_compile_$i.log 2>&1 &
        pids="$pids $!"
      done
      wait $pids
      cat $Q/gemvtune_compile_*.log > $O/gemv_tune_${tag}_compile.log
      log "gemvtune compiled $(grep -c ': ok (' $O/gemv_tune_${tag}_compile.log) plans"
      timeout 300 python3 tools/tune_gemv.py --rows $rows --out $O/gemv_tune_$tag.json > $O/gemv_tune_$tag.log 2>&1
      log "gemvtune rc=$? $(grep -m1 within $O/gemv_tune_$tag.log | cut -c1-120)"; pack ;;
    moesteptune)  # issue 18: moe_decode_step's tiles over a 30-layer stack (tools/tune_moe_step.py, the block's norm and
      # add inside the kernels), batch 1 and 4, compiled first in 8 shards
      [ -n "$bg" ] && wait $bg; bg=""
      log "moesteptune"; O=$S/docs/results/kernels/queue; mkdir -p $O; pids=""
      for i in 0 1 2 3 4 5 6 7; do
        timeout 120 python3 tools/tune_moe_step.py --compile-only --layers 2 --shard $i/8 > $Q/moestep_compile_$i.log 2>&1 &
        pids="$pids $!"
      done
      wait $pids
      timeout 240 python3 tools/tune_moe_step.py --batch 1,4 --out $O/moe_step_tune.json > $O/moe_step_tune.log 2>&1
      log "moesteptune rc=$?"; pack ;;
    moegroupedtune)  # issue 19: moe_grouped_experts' tiles, one kernel at a time (tools/tune_moe_grouped.py)
      [ -n "$bg" ] && wait $bg; bg=""
      log "moegroupedtune"; O=$S/docs/results/kernels/queue; mkdir -p $O; pids=""
      for i in 0 1 2 3 4 5 6 7; do
        timeout 150 python3 tools/tune_moe_grouped.py --compile-only --shard $i/8 > $Q/moegrouped_compile_$i.log 2>&1 &
        pids="$pids $!"
      done
      wait $pids
      timeout 240 python3 tools/tune_moe_grouped.py --out $O/moe_grouped_tune.json > $O/moe_grouped_tune.log 2>&1
      log "moegroupedtune rc=$?"; pack ;;
    moeroute)  # issue 19: moe_route (the routing and the plan's counts in one launch, built in the twenty-fourth
      # session): its GPU tests, then archzoo bench kernels --ops moe, whose archzoo_fused_routed rows time it beside
      # the fused experts row (the routing of three launches) and the dense SwiGLU, one process
      [ -n "$bg" ] && wait $bg; bg=""
      log "moeroute"; O=$S/docs/results/kernels/queue; mkdir -p $O
      timeout 200 python3 -m pytest -q -p no:cacheprovider -rf -m gpu tests/kernels/test_moe_route.py \
          tests/kernels/test_moe_grouped.py > $O/moe_route_gpu_tests.log 2>&1
      log "moeroute gpu tests rc=$? $(tail -1 $O/moe_route_gpu_tests.log)"
      timeout ${KERNELS_TIMEOUT:-240} python3 -m archzoo bench kernels --ops moe --out $O/moe_route.json \
          > $O/moe_route.log 2>&1
      log "kernels moe (routed) rc=$?"; pack ;;
    moetune)  # issue 19: moe_grouped_experts' switches swept by tools/tune_moe_grouped.py --groups <s> (moetune:sorted_dw:
      # the weight gradients on sorted copies of x and dout; moetune:hw_round: the epilogues' roundings by conversion):
      # the GPU tests of the switches, the groups beside the default (one process), then the op against the dense
      # SwiGLU with the best of them by forward + backward time (ARCHZOO_MOE_GROUPED_CONFIG)
      [ -n "$bg" ] && wait $bg; bg=""
      groups=$s; [ "$s" = "$job" ] && groups=sorted_dw; tag=${groups//,/_}
      log "moetune $groups"; O=$S/docs/results/kernels/queue; mkdir -p $O; pids=""
      timeout 200 python3 -m pytest -q -p no:cacheprovider -rf -m gpu -k "hw_round or pdl or route or switches" tests/kernels/test_moe_grouped.py tests/kernels/test_moe_route.py tests/layers/test_moe.py \
          > $O/moe_${tag}_gpu_tests.log 2>&1
      log "moetune gpu tests rc=$? $(tail -1 $O/moe_${tag}_gpu_tests.log)"
      for i in 0 1 2 3 4 5 6 7; do
        timeout 150 python3 tools/tune_moe_grouped.py --groups $groups --compile-only --shard $i/8 \
            > $Q/moetune_compile_$i.log 2>&1 &
        pids="$pids $!"
      done
      wait $pids
      timeout 240 python3 tools/tune_moe_grouped.py --groups $groups --out $O/moe_${tag}_tune.json > $O/moe_${tag}_tune.log 2>&1
      log "moetune tune rc=$?"; pack
      # a backward-only row (fwd_ms null: its forward is the default's) counts with the default's forward
      best=$(python3 -c "import json,sys; rows=[r for r in json.load(open(sys.argv[1])) if r.get('bwd_ms')]; f0=rows[0]['fwd_ms']; print(json.dumps(min(rows, key=lambda r: (r.get('fwd_ms') or f0) + r['bwd_ms'])['config']))" $O/moe_${tag}_tune.json 2> /dev/null || echo '{}')
      log "kernels moe with $best"
      ARCHZOO_MOE_GROUPED_CONFIG="$best" timeout ${KERNELS_TIMEOUT:-240} python3 -m archzoo bench kernels --ops moe \
          --out $O/moe_$tag.json > $O/moe_$tag.log 2>&1
      log "kernels moe $tag rc=$?"; pack ;;
    convpeer)  # issue 19: causal-conv1d (the conv's peer) built for sm_90 in the background from the sdist carried in
      # .whl/ (about 4 min on 4 of the 16 cores, beside the next jobs); kernels:conv waits for it. The wheel comes back
      # in .whl/ (staged there), so a later lease carrying it installs it through setup.sh and builds nothing.
      if python3 -c "import causal_conv1d" 2> /dev/null; then log "convpeer: causal_conv1d already installed"
      else
        mkdir -p /root/peerlogs
        PEERS=causal_conv1d setsid nohup bash tools/build_peers.sh .whl /root/peerlogs > /root/peerlogs/out 2>&1 < /dev/null &
        log "convpeer: building causal_conv1d"
      fi ;;
    convtune)  # issue 19: the causal conv backward's tiles and TILES (consecutive tiles a program) swept at 4k and 16k
      # (tools/tune_causal_conv1d.py, compiled first in 8 shards; CONV_SWEEP overrides its arguments: the seventeenth
      # session's first lease swept the gathered halo, since taken out), then the op against causal-conv1d with the 16k winner
      [ -n "$bg" ] && wait $bg; bg=""
      log "convtune"; O=$S/docs/results/kernels/queue; mkdir -p $O; pids=""
      SWEEP=${CONV_SWEEP:-"--which bwd --lengths 4096,16384 --bwd-block-d 1 --bwd-block-l 512,1024,2048 --warps 2,4 --bwd-groups 1,4 --tiles 1,2,4,8,16"}
      for i in 0 1 2 3 4 5 6 7; do
        timeout 200 python3 tools/tune_causal_conv1d.py $SWEEP --compile-only --shard $i/8 > $Q/conv_compile_$i.log 2>&1 &
        pids="$pids $!"
      done
      wait $pids
      timeout 240 python3 tools/tune_causal_conv1d.py $SWEEP --rep 50 --out $O/conv_tune.json > $O/conv_tune.log 2>&1
      log "convtune rc=$? $(grep -c '^best' $O/conv_tune.log) bests"; pack
      best=$(python3 tools/device/conv_best.py $O/conv_tune.json 16384)
      for cfg in "$best"; do
        n=best
        log "kernels conv ($n: $cfg)"
        ARCHZOO_CAUSAL_CONV1D_CONFIG="$cfg" timeout 200 python3 -m archzoo bench kernels --ops conv \
            --out $O/conv_$n.json > $O/conv_$n.log 2>&1
        log "kernels conv $n rc=$?"; pack
      done ;;
    convown)  # issue 19: the conv backward's OWN (a program a channel over every batch row, sums stored, no zeroed
      # buffer, atomics or casts) against the default, each a process of its own beside causal-conv1d
      [ -n "$bg" ] && wait $bg; bg=""
      O=$S/docs/results/kernels/queue; mkdir -p $O
      for n in own0 own1; do
        log "kernels conv ($n)"
        ARCHZOO_CAUSAL_CONV1D_CONFIG="{\"bwd\": {\"OWN\": ${n#own}}}" timeout 200 python3 -m archzoo bench kernels \
            --ops conv --out $O/conv_$n.json > $O/conv_$n.log 2>&1
        log "kernels conv $n rc=$? $(grep -E '^\| 16384 \| (archzoo|causal_conv1d) ' $O/conv_$n.log | tr -s ' ' | tr '\n' ';')"; pack
      done ;;
    kernels)  # issue 19: archzoo bench kernels --ops <a>,<b> (e.g. moe,la), each op's table and JSON
      [ -n "$bg" ] && wait $bg; bg=""
      O=$S/docs/results/kernels/queue; mkdir -p $O
      for op in ${s//,/ }; do
        if [ "$op" = conv ] && [ -d /root/peerlogs ]; then  # the convpeer job's build, if one started
          for i in $(seq 1 ${PEER_WAIT:-120}); do grep -q done /root/peerlogs/build_status 2> /dev/null && break; sleep 5; done
          log "kernels conv: peer build $(tr '\n' ' ' < /root/peerlogs/build_status 2> /dev/null)"
          mkdir -p $O  # the wheel (25 MB) comes back in 15 MB parts through watch.sh, not in results.tgz (16 MiB a file)
          cp /root/peerlogs/build_causal_conv1d.log $O/build_causal_conv1d.log 2> /dev/null; pack
        fi
        if [ "$op" = la ]; then  # the chunk-parallel backward's GPU tests first: BACKWARD flips only when they pass
          timeout 300 python3 -m pytest -q -p no:cacheprovider -rf -k "gpu" tests/kernels/test_linear_attention_chunk_parallel.py \
              tests/kernels/test_linear_attention_triton.py > $O/la_gpu_tests.log 2>&1
          log "kernels la gpu tests rc=$? $(tail -1 $O/la_gpu_tests.log)"
        fi
        log "kernels $op"
        timeout ${KERNELS_TIMEOUT:-240} python3 -m archzoo bench kernels --ops $op --out $O/$op.json > $O/$op.log 2>&1
        log "kernels $op rc=$?"; pack  # each op's files come back even if the lease ends before the next
      done ;;
    trainprof)  # issue 16: why MQA and CLA2 train at 122k tokens/s and MLA at 158k: each recipe as shipped, profiled
      [ -n "$bg" ] && wait $bg; bg=""
      O=$S/docs/results/distillation/trainprof; mkdir -p $O
      for r in ${s//,/ }; do
        log "trainprof $r"
        timeout 240 python3 tools/train_levers.py configs/distill/smollm2-$r.yaml --steps 16 --variants asis \
            --random-teacher --profile asis --out $O/$r.json > $O/$r.log 2>&1
        log "trainprof $r rc=$? $(grep -o '"tokens_per_s": [0-9.]*' $O/$r.json | head -1)"
      done
      pack ;;
    speed)
      need_teacher $job
      [ -n "$bg" ] && wait $bg; bg=""
      log "speed ($(nvidia-smi --query-compute-apps=pid --format=csv,noheader 2> /dev/null | wc -l) processes on the GPU before it)"
      P=docs/results/pareto-smollm2/speed
      # rows measured in an earlier lease (brought back and committed) are kept: --resume measures the rest
      # (speed:fresh measures every row again: the committed rows predate a field the report shows)
      [ -d /root/speed/rows ] || { mkdir -p /root/speed; [ "$s" != fresh ] && [ -d $P/rows ] && cp -r $P/rows /root/speed/; }
      suite=configs/bench/smollm2.yaml  # decode_linear auto: the decode kernels at batch 1, unless their GPU tests failed
      if grep -qE "[0-9]+ failed|error" $DEC/gpu_tests.log 2> /dev/null; then
        sed 's/decode_linear: auto/decode_linear: cublas/' $suite > configs/bench/smollm2-cublas.tmp.yaml; suite=configs/bench/smollm2-cublas.tmp.yaml
        log "speed: the decode kernels' GPU tests failed: cuBLAS projections"
      fi
      timeout ${SPEED_TIMEOUT:-900} python3 -m archzoo bench $suite --out /root/speed --resume --quiet \
          > $Q/speed.log 2>&1 &
      sp=$!
      while kill -0 $sp 2> /dev/null; do  # each finished model's row comes back even if the lease ends mid-run
        sleep 30; mkdir -p $S/$P && cp -r /root/speed/rows $S/$P/ 2> /dev/null && cp $Q/speed.log $S/$P/ && pack
      done
      wait $sp; log "speed rc=$? $(tail -1 $Q/speed.log | cut -c1-120)"
      mkdir -p $S/$P && cp -r /root/speed/. $S/$P/ && cp $Q/speed.log $S/$P/
      pack ;;
    long)  # issue 16: the long-document test (configs/bench/smollm2-long.yaml), after distill:swa-long+mla-long
      need_teacher $job
      [ -n "$bg" ] && wait $bg; bg=""
      log "long"; L=docs/results/distillation/long; mkdir -p /root/long
      only="SmolLM2-135M (teacher)"  # the students distilled in this lease (none is kept between leases)
      for r in swa mla swa-long mla-long; do
        [ -d /root/runs/smollm2-$r/student ] || continue
        mkdir -p runs && ln -sfn /root/runs/smollm2-$r runs/smollm2-$r; only="$only|$r"
      done
      IFS='|' read -ra names <<< "$only"
      timeout ${LONG_TIMEOUT:-600} python3 -m archzoo bench configs/bench/smollm2-long.yaml --out /root/long --resume \
          --only "${names[@]}" --quiet > $Q/long.log 2>&1
      log "long rc=$? $(tail -1 $Q/long.log | cut -c1-120)"
      mkdir -p $S/$L && cp -r /root/long/. $S/$L/ && cp $Q/long.log $S/$L/; pack ;;
    corpus)  # issue 16: the distill runs' teacher-generated corpus into the cache, packed in 15 MiB parts that
      # watch.sh brings back (here: into .big/g3/, so a later lease carries it instead of generating it again)
      need_teacher $job
      [ -n "$bg" ] && wait $bg; bg=""
      log "corpus"; mkdir -p $Q/corpus
      timeout -s INT ${CORPUS_TIMEOUT:-900} python3 tools/prepare_corpus.py configs/distill/smollm2-mla.yaml \
          --pack $Q/corpus > $Q/corpus.log 2>&1
      log "corpus rc=$? $(ls $Q/corpus | tr '\n' ' ')" ;;
    *) log "unknown job $job (distill:<s>, spec:<s>, decode, decode64, kernels:<op>,<op>, trainprof:<s>,<s>, speed, corpus, mlafold, decodeab:<s>,<s>, long, mambastep, gputests, gridsync, persistmlp, persiststep, persistbatch, moetune:<groups>, moeroute, specbig:<s>, specprof:<s>, qkvab, attnsplit, passkey:<s>,<s>|all)" ;;
  esac
  echo "$job" >> $Q/done
done
[ -n "$bg" ] && wait $bg
log "queue done"
