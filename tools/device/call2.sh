# GPU call 2: assemble the teacher, distil the MLA and Mamba-hybrid students for the same token
# budget, evaluate them before/after on the held-out works, then (if the peers built) the kernel benchmark.
source tools/device/setup.sh || exit 1
ls -la /root/archzoo-cache/teachers/; cat /root/peerlogs/build_status 2>/dev/null
for fam in ${FAMS:-mla mamba}; do
  timeout 230 archzoo distill configs/distill/smollm2-$fam.yaml --output-dir /root/runs/smollm2-$fam > $OUT/distill_$fam.log 2>&1
  echo "distill $fam rc=$?"; tail -3 $OUT/distill_$fam.log
  cp /root/runs/smollm2-$fam/logs/metrics.csv $OUT/metrics_$fam.csv 2>/dev/null
  timeout 60 python3 tools/eval_distill.py configs/distill/smollm2-$fam.yaml /root/runs/smollm2-$fam --out $OUT/eval_$fam.json > $OUT/eval_$fam.log 2>&1; echo "eval $fam rc=$?"; tail -2 $OUT/eval_$fam.log
done
cat /root/peerlogs/build_status 2>/dev/null
