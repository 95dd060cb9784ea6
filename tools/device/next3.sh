# GPU call (prepared 2026-12-05b, not yet run), the first of a session: needs no teacher, so it carries .big/g1 (the
# teacher's first part) for the next call besides the five pydantic/gguf wheels and fla's two (liger stays home:
# the carry limit). 1. The BASED kernel's tests on CUDA and its benchmark against fla's parallel_based, and the
# MoE layer compiled against the dense SwiGLU compiled, linear attention at 16k with half-width value blocks (issue 19). 2. The speculative capture test that failed on
# 2026-12-05, with its message kept (issue 20). 3. A profile of the trainer's base step with host ops (issue 16:
# where the 160 ms of a 260 ms step that no kernel fills go).
source tools/device/setup.sh || exit 1
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/kernels/test_based_attention.py 2>&1 | tail -4
timeout 200 python3 -m archzoo bench kernels --ops based,moe --out $OUT/issue19_based_moe.json > $OUT/issue19.log 2>&1
echo "kernels rc=$?"; grep -v Warn $OUT/issue19.log | grep -E '^\||^T=|^#' | tail -30
# linear attention at 16k with half-width value blocks (archzoo_bv16): twice the programs for the 132 SMs
timeout 100 python3 -m archzoo bench kernels --ops la --lengths 16384 --out $OUT/issue19_la16k.json > $OUT/la16k.log 2>&1
echo "la rc=$?"; grep -v Warn $OUT/la16k.log | grep -E '^\| 16384|^T=' | tail -10
timeout 100 python3 -m pytest -q -p no:cacheprovider --tb=short tests/test_speculative_capture.py \
    -k replaying_target > $OUT/spec_capture.log 2>&1; echo "spec rc=$?"; grep -E "Error|assert|passed|failed" $OUT/spec_capture.log | tail -6
timeout 120 python3 tools/train_levers.py configs/distill/smollm2-mla.yaml --steps 12 --variants base --random-teacher \
    --profile base --profile-host --out $OUT/profile_host.json > $OUT/profile.log 2>&1; echo "profile rc=$?"
head -c 2500 $OUT/profile_host.json.profile.txt
