"""tools/decode_profile.py's flags -> the forms it profiles (the profile itself needs a GPU). The GPU queue's
`mambastep` job once failed here, after the tests, on a three-item tuple unpacked into four names."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _tool():
    spec = importlib.util.spec_from_file_location("decode_profile", ROOT / "tools" / "decode_profile.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_every_flag_combination_is_one_form():
    forms = _tool().forms_of("kernel", "auto", "on", "fused,unfused")
    assert forms == [("kernel", "auto", "on", "fused"), ("kernel", "auto", "on", "unfused")]
    forms = _tool().forms_of("kernel,sdpa", "cublas,kernel", "on,off", "fused")
    assert len(forms) == 8 and all(len(f) == 4 for f in forms) and len(set(forms)) == 8


def test_a_speculative_round_profiles_on_the_cpu():
    """--draft: a round of a tiny GQA target verifying a tiny sliding-window draft (k = 2), uncaptured on the CPU:
    its ops grouped by name, the attention and the matmuls among them, and the replay timed."""
    cfg = str(ROOT / "configs" / "models" / "gqa.yaml")
    draft = str(ROOT / "configs" / "models" / "swa.yaml")
    r = _tool().profile_round(cfg, draft, batch=2, prompt=6, k=2, steps=2, linear="cublas", device="cpu")
    assert r["captured"] is False and r["num_draft_tokens"] == 2 and r["replay_ms_per_round"] > 0
    names = {row["kernel"] for row in r["kernels"]}
    assert {"aten::mm", "aten::argmax"} <= names or {"aten::addmm", "aten::argmax"} <= names, sorted(names)[:20]
    assert r["kernels_per_round"] > 0
