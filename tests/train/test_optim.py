"""``archzoo.train.param_groups``: the layers' ``_no_weight_decay`` marks decide, not a list in the trainer."""

from __future__ import annotations

import pytest

import archzoo
from archzoo.train import param_groups

MARKED = {
    "s4": ("A_log_re", "A_im", "B", "log_dt", "D"),
    "mamba": ("A_log", "D", "dt_proj.bias"),
}


def _names(model, group) -> set[str]:
    names = {id(p): n for n, p in model.named_parameters()}
    return {names[id(p)] for p in group["params"]}


@pytest.mark.parametrize("family", sorted(MARKED))
def test_every_marked_parameter_is_in_the_no_decay_group(family, tmp_path):
    model = archzoo.build_model(f"configs/models/{family}.yaml")
    for m in (model, archzoo.from_pretrained(_saved(model, tmp_path))):  # marks survive a reload too
        decay, keep = param_groups(m, 0.1)
        assert decay["weight_decay"] == 0.1 and keep["weight_decay"] == 0.0
        nd = _names(m, keep)
        for i, block in enumerate(m.cfg.blocks):
            if block.mixer.type == family:
                for p in MARKED[family]:
                    assert f"blocks.{i}.mixer.{p}" in nd, f"{family}: blocks.{i}.mixer.{p} is decayed"
        assert "norm.weight" in nd
        assert not any(n.endswith(("o_proj.weight", "in_proj.weight")) for n in nd), "a matrix lost its decay"
        assert len(decay["params"]) + len(keep["params"]) == len(list(m.parameters()))


def test_extra_globs_and_tied_embeddings():
    model = archzoo.build_model("configs/models/gqa.yaml")
    decay, keep = param_groups(model, 0.1, no_decay=["*.q_proj.weight"])
    nd = _names(model, keep)
    assert all(n in nd for n, _ in model.named_parameters() if n.endswith("q_proj.weight"))
    assert "embed.weight" in _names(model, decay), "the tied embedding appears once, decayed"


def _saved(model, tmp_path):
    model.save_pretrained(tmp_path / "m")
    return tmp_path / "m"
