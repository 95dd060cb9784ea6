from __future__ import annotations

import pytest
import torch

import archzoo

from conftest import MODEL_CONFIGS


@pytest.mark.parametrize("path", MODEL_CONFIGS, ids=lambda p: p.stem)
def test_save_and_load_roundtrip(tmp_path, path):
    model = archzoo.build_model(path).eval()
    model.save_pretrained(tmp_path / "ckpt")
    assert {p.name for p in (tmp_path / "ckpt").iterdir()} == {"model.safetensors", "config.yaml"}
    again = archzoo.from_pretrained(tmp_path / "ckpt")
    ids = torch.randint(0, model.cfg.vocab_size, (1, 9))
    with torch.no_grad():
        assert torch.equal(model(ids), again(ids))
    assert again.cfg == model.cfg


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(archzoo.ConfigError, match="config.yaml is missing"):
        archzoo.from_pretrained(tmp_path)
