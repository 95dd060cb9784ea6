#!/usr/bin/env bash
# Build the CUDA peers the kernel benchmark compares against (mamba_ssm's selective scan and the
# causal-conv1d package) from their PyPI sdists, for sm_90 (H100/H200) only, into the current
# Python. Usage: tools/build_peers.sh DIR_WITH_SDISTS LOG_DIR   (run it under setsid: ~10 min)
# PEERS (default "causal_conv1d mamba_ssm") names the ones to build. Each is built as a wheel into
# LOG_DIR/wheels, then installed: a wheel brought back from the GPU machine and carried in .whl/ next
# time is installed by tools/device/setup.sh with the others, and no build is needed.
#
# Two changes to their build, made here and not upstream: the -gencode list is cut to sm_90 (the
# sdists build ~10 architectures), and mamba_ssm's __init__ imports only the selective-scan
# interface (its other modules need tilelang / quack, which the benchmark does not use).
set -euo pipefail
src=$(realpath "$1"); logs=$(realpath "$2"); mkdir -p "$logs" /root/peers; cd /root/peers
export MAX_JOBS=${MAX_JOBS:-12} MAMBA_FORCE_BUILD=TRUE CAUSAL_CONV1D_FORCE_BUILD=TRUE TORCH_CUDA_ARCH_LIST=9.0
sm90_only() {
  python3 - "$1" <<'PY'
import re, sys
p = sys.argv[1]; s = open(p).read()
s = re.sub(r'cc_flag\.append\("-gencode"\)', 'pass', s)
s = re.sub(r'cc_flag\.append\("arch=compute_(?!90,)\d+,code=sm_\d+"\)', 'pass', s)
s = s.replace('cc_flag.append("arch=compute_90,code=sm_90")', 'cc_flag += ["-gencode", "arch=compute_90,code=sm_90"]')
open(p, "w").write(s)
PY
}
build() {
  local pkg=$1
  tar xzf "$src"/${pkg}*.tar.gz
  local dir; dir=$(ls -d ${pkg}-*/ | head -1)
  sm90_only "$dir/setup.py"
  if [ "$pkg" = mamba_ssm ]; then
    printf '__version__ = "%s"\nfrom mamba_ssm.ops.selective_scan_interface import selective_scan_fn, selective_scan_ref\n' \
      "$(echo "$dir" | sed 's/mamba_ssm-//; s:/::')" > "$dir/mamba_ssm/__init__.py"
  fi
  ( time python3 -m pip wheel --no-build-isolation --no-deps --no-index -w "$logs/wheels" -v "./$dir" \
      && python3 -m pip install --no-deps --no-index "$logs"/wheels/${pkg}-*.whl ) > "$logs/build_$pkg.log" 2>&1 \
    && echo "$pkg ok" >> "$logs/build_status" || echo "$pkg FAILED" >> "$logs/build_status"
}
peers=${PEERS:-causal_conv1d mamba_ssm}
for pkg in $peers; do
  if [ "$pkg" = causal_conv1d ]; then MAX_JOBS=4 build "$pkg" & else build "$pkg" & fi
done
wait
echo done >> "$logs/build_status"
