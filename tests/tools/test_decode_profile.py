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


def test_every_setting_binds_to_profile_step():
    """Each combination of the flags is ``profile_step``'s keyword arguments, every switch with both its values: the
    queue's `attnsingle`, `s4step` and `ropewrite` jobs once failed on the GPU after their tests, a tuple of six
    unpacked into eight names."""
    import inspect

    tool = _tool()
    args = tool.parser().parse_args(
        ["m.yaml", "--out", "x.json", "--attention", "kernel,kernel-single", "--s4-step", "kernel,compiled",
         "--rope-write", "on,off", "--moe-experts", "fused,reductions", "--once", "on,off"]
    )  # fmt: skip
    settings = tool.step_settings(args)
    assert len(settings) == 2 * 2 * 2 * 2 * 2 and len({tuple(s.items()) for s in settings}) == len(settings)
    sig = inspect.signature(tool.profile_step)
    for s in settings:
        sig.bind("m.yaml", 1, 128, 20, **s)
    both = {"s4_step": {"kernel", "compiled"}, "rope_write": {"on", "off"}, "attention": {"kernel", "kernel-single"},
            "moe_experts": {"fused", "reductions"}}  # fmt: skip
    for key, values in both.items():
        assert {s[key] for s in settings} == values, key
