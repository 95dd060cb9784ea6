# GPU call (prepared 2026-12-04b): every GPU-marked test, one line per test as it ends, so that a time limit
# still leaves the names of the failures (decode1.sh's quiet run was cut at about 60% with 4 failures unnamed).
source tools/device/setup.sh || exit 1
timeout 540 pytest -v -m gpu -p no:cacheprovider -rf tests 2>&1 | tee $OUT/gpu_tests.log | grep -E "FAILED|ERROR|passed|failed" | tail -40
