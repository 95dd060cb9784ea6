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


@pytest.mark.parametrize("path", MODEL_CONFIGS, ids=lambda p: p.stem)
def test_reloaded_tensors_own_aligned_storage(tmp_path, path):
    """Every reloaded parameter and buffer owns its storage at a 64-byte address, as the saved model's do
    (safetensors' own tensors are views into the file at 8-byte offsets, where CPU kernels round differently)."""
    model = archzoo.build_model(path)
    model.save_pretrained(tmp_path / "ckpt")
    again = archzoo.from_pretrained(tmp_path / "ckpt")
    saved = dict(model.named_parameters(remove_duplicate=False))
    for name, t in [*again.named_parameters(remove_duplicate=False), *again.named_buffers()]:
        assert t.data_ptr() % 64 == 0, f"{name} at {t.data_ptr():#x} is not 64-byte aligned"
        assert t.untyped_storage().resizable(), f"{name} is a view into a buffer the model does not own"
        if name in saved:
            assert torch.equal(t, saved[name]), f"{name} differs from the saved parameter"
    if model.cfg.tie_embeddings:
        assert again.lm_head.weight is again.embed.weight


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(archzoo.ConfigError, match="config.yaml is missing"):
        archzoo.from_pretrained(tmp_path)


def test_atomic_writes_keep_the_modes_open_gives(tmp_path):
    """A report row, a corpus or a config written through a temporary file is as readable as one written with
    open(): mkstemp's owner-only 0600 does not leak into what others on the machine read."""
    import os

    from archzoo.data.generate import write_jsonl
    from archzoo.saving import atomic_write

    old = os.umask(0o022)
    try:
        atomic_write(tmp_path / "a.json", "{}")
        write_jsonl(["x"], tmp_path / "b.jsonl")
        with open(tmp_path / "c.txt", "w") as f:
            f.write("plain")
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()}
    assert modes == {"a.json": 0o644, "b.jsonl": 0o644, "c.txt": 0o644}
