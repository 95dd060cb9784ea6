"""The model YAML schema: every shipped config parses, and bad configs name file, field and fix."""

from __future__ import annotations

import copy

import pytest

import archzoo
from archzoo.config import parse_layer_indices

from conftest import MODEL_CONFIGS, ROOT, load_yaml

FAMILIES = ["mha", "gqa", "mqa", "mla", "cla", "swa", "linear", "based", "s4", "mamba", "jamba", "moe"]


@pytest.mark.parametrize("path", MODEL_CONFIGS + sorted((ROOT / "configs" / "students").glob("*.yaml")), ids=str)
def test_every_shipped_model_yaml_parses_and_builds(path):
    cfg = archzoo.load_config(path)
    assert len(cfg.blocks) == cfg.n_layers
    if "students" not in str(path):
        model = archzoo.build_model(cfg)
        assert model.cfg.vocab_size <= 1024 and model.cfg.d_model <= 128, "tiny configs stay tiny"


def test_core_family_configs_are_shipped():
    names = {p.stem for p in MODEL_CONFIGS}
    missing = {"mha", "gqa", "mqa", "mla", "cla", "swa"} - names
    assert not missing, f"configs/models lacks {sorted(missing)}"


BASE = {
    "vocab_size": 64,
    "d_model": 32,
    "n_layers": 4,
    "mixer": {"type": "attention", "n_heads": 4, "n_kv_heads": 2},
    "ffn": {"type": "swiglu", "d_ff": 64},
}


def _set(path: str, value):
    def edit(d):
        *head, last = path.split(".")
        for k in head:
            d = d[int(k)] if k.isdigit() else d[k]
        if value is _DELETE:
            del d[last]
        else:
            d[last] = value

    return edit


_DELETE = object()

BAD = [
    ("kv heads not dividing", _set("mixer.n_kv_heads", 3), "mixer.n_kv_heads", "must divide n_heads=4"),
    ("unknown mixer", _set("mixer.type", "mamab"), "mixer.type", "unknown mixer 'mamab'; expected one of attention"),
    ("misspelt key", _set("mixer.windw", 8), "mixer.windw", "unknown key"),
    ("window < 1", _set("mixer.window", 0), "mixer.window", "greater than or equal to 1"),
    ("cla_group < 1", _set("mixer.cla_group", 0), "mixer.cla_group", "greater than or equal to 1"),
    ("negative d_model", _set("d_model", -8), "d_model", "greater than 0"),
    (
        "n_heads not dividing d_model",
        _set("mixer", {"type": "attention", "n_heads": 3}),
        "mixer.n_heads",
        "not divisible by n_heads=3",
    ),
    ("odd head_dim", _set("mixer.head_dim", 7), "mixer.head_dim", "must be even"),
    ("missing ffn", _set("ffn", _DELETE), "ffn", "required key is missing"),
    ("unknown ffn", _set("ffn.type", "glu"), "ffn.type", "unknown ffn 'glu'; expected one of swiglu, moe, none"),
    ("override out of range", _set("layers", [{"at": [9], "mixer": {"type": "mamba"}}]), "layers.0.at", "out of range"),
    ("empty slice", _set("layers", [{"at": "5:", "mixer": {"window": 4}}]), "layers.0.at", "selects no layer"),
    ("bad slice", _set("layers", [{"at": "a:b", "mixer": {"window": 4}}]), "layers.0.at", "not a slice"),
    (
        "bad override value",
        _set("layers", [{"at": "1::2", "mixer": {"n_kv_heads": 3}}]),
        "layers.0.mixer.n_kv_heads",
        "must divide",
    ),
    (
        "top_k > n_experts",
        _set("layers", [{"at": [1], "ffn": {"type": "moe", "n_experts": 2, "top_k": 4, "d_ff": 8}}]),
        "layers.0.ffn.top_k",
        "must not exceed n_experts=2",
    ),
    (
        "mla odd rope dim",
        _set(
            "mixer",
            {
                "type": "mla",
                "n_heads": 2,
                "kv_lora_rank": 8,
                "qk_nope_head_dim": 8,
                "qk_rope_head_dim": 5,
                "v_head_dim": 8,
            },
        ),
        "mixer.qk_rope_head_dim",
        "even",
    ),
    (
        "mla missing rank",
        _set("mixer", {"type": "mla", "n_heads": 2, "qk_nope_head_dim": 8, "qk_rope_head_dim": 4, "v_head_dim": 8}),
        "mixer.kv_lora_rank",
        "required",
    ),
    ("mamba conv too wide", _set("mixer", {"type": "mamba", "d_conv": 9}), "mixer.d_conv", "less than or equal to 8"),
    ("unknown top-level key", _set("n_layer", 3), "n_layer", "unknown key"),
    ("wrong type", _set("n_layers", "four"), "n_layers", "valid integer"),
]


@pytest.mark.parametrize("name,edit,path,fragment", BAD, ids=[b[0] for b in BAD])
def test_bad_config_names_field_and_problem(tmp_path, name, edit, path, fragment):
    data = copy.deepcopy(BASE)
    edit(data)
    f = tmp_path / "bad.yaml"
    import yaml

    f.write_text(yaml.safe_dump(data))
    with pytest.raises(archzoo.ConfigError) as info:
        archzoo.load_config(f)
    err = info.value
    assert isinstance(err, ValueError)
    assert err.source == str(f)
    assert err.path == path, f"{name}: path {err.path!r} != {path!r} ({err})"
    assert fragment in err.message, f"{name}: {fragment!r} not in {err.message!r}"
    assert str(err).startswith(f"{f}: {path}: ")


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(archzoo.ConfigError, match="no such file"):
        archzoo.load_config(tmp_path / "nope.yaml")
    f = tmp_path / "x.yaml"
    f.write_text("vocab_size: [1,\n")
    with pytest.raises(archzoo.ConfigError, match="not valid YAML"):
        archzoo.load_config(f)
    f.write_text("- 1\n- 2\n")
    with pytest.raises(archzoo.ConfigError, match="mapping"):
        archzoo.load_config(f)


def test_slice_and_index_overrides():
    assert parse_layer_indices("1::2", 8) == [1, 3, 5, 7]
    assert parse_layer_indices([3, 7], 8) == [3, 7]
    assert parse_layer_indices(-1, 8) == [7]
    assert parse_layer_indices("::4", 8) == [0, 4]
    data = copy.deepcopy(BASE)
    data["layers"] = [
        {"at": "1::2", "mixer": {"window": 8}},
        {"at": [3], "mixer": {"type": "mamba", "d_state": 8}},
    ]
    cfg = archzoo.load_config(data)
    kinds = [(b.mixer.type, getattr(b.mixer, "window", None)) for b in cfg.blocks]
    assert kinds == [("attention", None), ("attention", 8), ("attention", None), ("mamba", None)]
    # merged override keeps the default's other keys
    assert cfg.blocks[1].mixer.n_kv_heads == 2


def test_saved_config_roundtrips(tmp_path):
    for path in MODEL_CONFIGS:
        cfg = archzoo.load_config(path)
        again = archzoo.load_config(cfg.to_dict())
        assert again == cfg, path
        assert load_yaml(path)  # file is plain YAML


def test_student_cache_comments_are_true():
    """Each student config states its cache size at 4k and 32k tokens; the figures must be right."""
    import re

    for path in sorted((ROOT / "configs" / "students").glob("*.yaml")):
        m = re.search(r"# cache \(bf16, batch 1\): ([\d.]+) MiB at 4k tokens, ([\d.]+) MiB at 32k", path.read_text())
        assert m, f"{path.name}: no cache comment"
        cfg = archzoo.load_config(path)
        for text, n in zip(m.groups(), (4096, 32768), strict=True):
            assert f"{archzoo.cache_bytes(cfg, 1, n) / 2**20:.1f}" == text, f"{path.name} @ {n}"
