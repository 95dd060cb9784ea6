# GPU call 1 of the next session (prepared 2026-12-05, third session; not yet run). Needs no teacher: it carries
# the corpus (.big/g3) for the distill calls after it, with the five small wheels and fla's two. Issue 19: the BASED
# kernel with autotuned tiles against fla's parallel_based (its 16k cells missed: 0.84x forward, 1.02x forward +
# backward with one 64 x 64 tile), the MoE layer after its op cut, compiled, against the dense SwiGLU compiled;
# linear attention at 16k with half-width value blocks (cut by a 100-s limit last time). Issue 20: every captured
# speculative test after the find_spec fix (the Jamba target's verify forward failed to compile).
# Run 2026-12-05 (fourth session, H100) up to the speculative tests (cut at 420 s): BASED met its target there, so
# this call now times the MoE layer alone (its compiled rows after the get_device_properties fix).
source tools/device/setup.sh || exit 1
timeout 150 python3 -m archzoo bench kernels --ops moe --out $OUT/issue19_moe.json > $OUT/issue19.log 2>&1
echo "kernels rc=$?"; grep -v Warn $OUT/issue19.log | grep -E '^\||^T=|^#' | tail -30
timeout 200 python3 -m pytest -q -p no:cacheprovider --tb=short tests/test_speculative_capture.py > $OUT/spec_capture.log 2>&1
echo "spec rc=$?"; grep -E "^FAILED|^E  |passed|failed" $OUT/spec_capture.log | head -12
timeout 150 python3 -m archzoo bench kernels --ops la --lengths 16384 --out $OUT/issue19_la16k.json > $OUT/la16k.log 2>&1
echo "la rc=$?"; grep -v Warn $OUT/la16k.log | grep -E '^\| 16384|^T=' | tail -12
# Time limits sum to 660 s against the call's 600: linear attention at 16k, last, is the one a slow call cuts.
