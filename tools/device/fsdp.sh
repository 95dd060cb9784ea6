# GPU check of sharded training (issue 7, trainer.strategy: fsdp) on ONE GPU, world size 1:
#  1. the GPU-marked FSDP tests (tiny random models: FSDP vs plain one-GPU run, export, resume);
#  2. the MLA student of configs/distill/smollm2-mla-fsdp.yaml with the real teacher, devices 1 and the
#     global batch of smollm2-mla.yaml (16 x 512), 10 align + 30 KD steps: an FSDP run stopped at step 20
#     and continued with --resume, against the same 40 steps without FSDP;
#  3. fsdp_summary.json: both loss curves, their largest relative gap, and the FSDP student loaded with
#     archzoo.from_pretrained on one device against the plain run's student.
# Everything lands in $OUT. Budget: under 5 minutes (each step under `timeout`).
# Run from the repository root: bash tools/device/fsdp.sh (it sources tools/device/setup.sh itself).
source tools/device/setup.sh || exit 1
python3 -c "import torch, lightning; print('torch', torch.__version__, 'lightning', lightning.__version__)" | tee $OUT/env.txt
nvidia-smi -L | tee -a $OUT/env.txt

[ -n "$SKIP_PYTEST" ] || timeout 120 pytest -q -m gpu -p no:cacheprovider tests/train/test_train_fsdp.py > $OUT/pytest_fsdp_gpu.log 2>&1
echo "pytest gpu fsdp rc=$?"; tail -3 $OUT/pytest_fsdp_gpu.log

python3 - <<'EOF'
from pathlib import Path
import yaml

src = Path("configs/distill/smollm2-mla-fsdp.yaml")
c = yaml.safe_load(src.read_text())
c["student"]["config"] = str((src.parent / c["student"]["config"]).resolve())  # the copy lives in /tmp
c["data"]["batch_size"] = 16  # one device carries the whole global batch
c["stages"][0]["steps"], c["stages"][1]["steps"] = 10, 30
c["trainer"].update(devices=1, val_check_interval=20, log_every_n_steps=5)
c["checkpoint"]["every_n_steps"] = 20
c["export"]["every_n_steps"] = None
Path("/tmp/fsdp40.yaml").write_text(yaml.safe_dump(c, sort_keys=False))
Path("/tmp/fsdp20.yaml").write_text(yaml.safe_dump({**c, "trainer": {**c["trainer"], "max_steps": 20}}, sort_keys=False))
Path("/tmp/plain40.yaml").write_text(yaml.safe_dump({**c, "trainer": {**c["trainer"], "strategy": "auto"}}, sort_keys=False))
EOF
cp /tmp/fsdp40.yaml /tmp/fsdp20.yaml /tmp/plain40.yaml $OUT/
rm -rf /root/runs/fsdp /root/runs/plain
timeout ${DISTILL_TIMEOUT:-170} archzoo distill /tmp/fsdp20.yaml --output-dir /root/runs/fsdp > $OUT/distill_fsdp_part.log 2>&1
echo "fsdp steps 0-20 rc=$?"; tail -2 $OUT/distill_fsdp_part.log
timeout ${DISTILL_TIMEOUT:-170} archzoo distill /tmp/fsdp40.yaml --output-dir /root/runs/fsdp --resume > $OUT/distill_fsdp_resume.log 2>&1
echo "fsdp --resume 20-40 rc=$?"; tail -2 $OUT/distill_fsdp_resume.log
timeout ${DISTILL_TIMEOUT:-170} archzoo distill /tmp/plain40.yaml --output-dir /root/runs/plain > $OUT/distill_plain.log 2>&1
echo "plain steps 0-40 rc=$?"; tail -2 $OUT/distill_plain.log
cp /root/runs/fsdp/logs/metrics.csv $OUT/metrics_fsdp.csv 2>/dev/null
cp /root/runs/plain/logs/metrics.csv $OUT/metrics_plain.csv 2>/dev/null
ls -la /root/runs/fsdp/checkpoints /root/runs/fsdp/student > $OUT/fsdp_files.txt 2>&1

timeout 60 python3 - "$OUT" <<'EOF' > $OUT/fsdp_summary.log 2>&1
import csv, json, os, sys
import torch
import archzoo

def curve(path):
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    pick = lambda key: {int(r["step"]): float(r[key]) for r in rows if r.get(key)}
    return pick("train/loss"), pick("val/kl"), pick("train/tokens_per_s"), pick("train/peak_mem_gib")

out = {}
(fl, fv, ft, fm), (pl, pv, pt, pm) = curve("/root/runs/fsdp/logs/metrics.csv"), curve("/root/runs/plain/logs/metrics.csv")
steps = sorted(set(fl) & set(pl))
out["steps_logged"] = {"fsdp": len(fl), "plain": len(pl), "common": len(steps)}
out["train_loss"] = {s: {"fsdp": fl[s], "plain": pl[s]} for s in steps}
out["max_rel_loss_gap"] = max(abs(fl[s] - pl[s]) / abs(pl[s]) for s in steps)
out["val_kl"] = {"fsdp": fv, "plain": pv}
med = lambda d: sorted(d.values())[len(d) // 2] if d else None
out["median_tokens_per_s"] = {"fsdp": med(ft), "plain": med(pt)}
out["peak_mem_gib"] = {"fsdp": max(fm.values(), default=None), "plain": max(pm.values(), default=None)}
a = archzoo.from_pretrained("/root/runs/fsdp/student", device="cuda")  # FSDP export, one device
b = archzoo.from_pretrained("/root/runs/plain/student", device="cuda")
out["weight_rel_err_max"] = max(
    float((p - q).float().norm() / q.float().norm().clamp_min(1e-30))
    for p, q in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
)
ids = torch.randint(a.cfg.vocab_size, (2, 64), device="cuda", generator=torch.Generator("cuda").manual_seed(0))
with torch.no_grad():
    za, zb = a(ids).float(), b(ids).float()
out["logits_finite"] = bool(torch.isfinite(za).all())
out["logits_rel_err"] = float((za - zb).norm() / zb.norm())
out["checkpoint_bytes"] = os.path.getsize("/root/runs/fsdp/checkpoints/last.ckpt")
print(json.dumps(out, indent=1))
json.dump(out, open(os.path.join(sys.argv[1], "fsdp_summary.json"), "w"), indent=1)
EOF
echo "summary rc=$?"; grep -E "max_rel_loss_gap|weight_rel_err_max|logits_|tokens_per_s|Error" $OUT/fsdp_summary.log | head -12
