source tools/device/setup.sh || exit 1
timeout 200 python3 -m archzoo bench kernels --ops moe --out $OUT/moe.json > $OUT/moe.log 2>&1; echo "moe rc=$?"
grep -v -i warn $OUT/moe.log | grep -E '^\||^##' | tail -12
