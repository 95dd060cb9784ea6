"""Print, as ARCHZOO_CAUSAL_CONV1D_CONFIG's JSON, each causal conv kernel's fastest configuration at one length
from a tools/tune_causal_conv1d.py result (the queue's convtune job runs the op with it against its peer).

    python tools/device/conv_best.py docs/results/kernels/conv_tune_h100.json 16384
"""

from __future__ import annotations

import json
import sys

_KEYS = ("BLOCK_D", "BLOCK_L", "num_warps", "TILES", "STAGES")


def best(rows: list[dict], length: int) -> dict[str, dict]:
    """-> {"fwd" | "bwd": the fastest row's configuration} over the rows timed at ``length``."""
    out = {}
    for kernel in ("fwd", "bwd"):
        ok = [r for r in rows if r.get("kernel") == kernel and r.get("length") == length and r.get("ms", 0) > 0]
        if ok:
            fastest = min(ok, key=lambda r: r["ms"])
            out[kernel] = {k: fastest[k] for k in _KEYS if k in fastest}
    return out


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        data = json.load(f)
    rows = data["rows"] if isinstance(data, dict) else data
    print(json.dumps(best(rows, int(sys.argv[2]))))
