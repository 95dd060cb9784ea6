"""from_pretrained: an ``ArchZooLM`` from a folder that ``save_pretrained`` wrote (``archzoo.saving``).

The folder holds model.safetensors + config.yaml (+ tokenizer/). Loading builds the model on the
meta device and takes the saved tensors as its parameters, in storage it owns.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from .config import ConfigError, load_config
from .model import ArchZooLM
from .saving import CONFIG, WEIGHTS, atomic_write_dir, save_pretrained

ALIGNMENT = 64  # bytes; what torch's CPU allocator gives (CUDA's gives 512)


def model_from_state(cfg, state: dict[str, torch.Tensor], device: str | torch.device | None = None):
    """An ``ArchZooLM`` of ``cfg`` whose parameters are the tensors of ``state``, each in storage it owns.

    Built on the meta device, so no random init is computed and thrown away; a tied head shares the
    embedding. A tensor that already owns contiguous, ``ALIGNMENT``-aligned storage of its own size is
    taken as is; any other (a view into a safetensors file or buffer, aligned to 8 bytes only) is
    copied, so a reloaded model runs the same CPU kernels on the same addresses' alignment as the
    model that was saved and reproduces its logits bit for bit. A missing tensor raises
    ``ValueError`` naming it (the first five).
    """
    with torch.device("meta"):
        model = ArchZooLM(cfg)
    expected = set(model.state_dict()) - ({"lm_head.weight"} if cfg.tie_embeddings else set())
    missing = sorted(expected - set(state))
    if missing:
        raise ValueError(f"the checkpoint lacks tensors: {', '.join(missing[:5])}{' ...' * (len(missing) > 5)}")
    state = {k: owned(v) for k, v in state.items()}
    if cfg.tie_embeddings:
        state = {**state, "lm_head.weight": state["embed.weight"]}
    model.load_state_dict(state, strict=True, assign=True)
    if cfg.tie_embeddings:
        model.lm_head.weight = model.embed.weight
    # Non-persistent buffers (RoPE frequencies) were created on meta; rebuild them for real.
    rebuild_buffers(model, device)
    return model


def owned(t: torch.Tensor) -> torch.Tensor:
    """``t`` if it owns contiguous storage of exactly its size at an ``ALIGNMENT``-byte address, else such a copy.

    Tensors that ``safetensors`` loads are views into the file's buffer at 8-byte offsets: not
    resizable (so not owned) and often off the 64-byte grid, where CPU kernels take another vector
    path and round differently in the last bit.
    """
    storage = t.untyped_storage()
    if (
        t.is_contiguous()
        and t.storage_offset() == 0
        and storage.nbytes() == t.nbytes
        and storage.resizable()
        and t.data_ptr() % ALIGNMENT == 0
    ):
        return t
    return t.clone(memory_format=torch.contiguous_format)


def from_pretrained(path: str | Path, device: str | torch.device | None = None, dtype: torch.dtype | None = None):
    """Load a folder written by ``save_pretrained``."""
    path = Path(path)
    for name in (CONFIG, WEIGHTS):
        if not (path / name).is_file():
            raise ConfigError(f"not an archzoo checkpoint: {name} is missing", source=str(path))
    cfg = load_config(path / CONFIG)
    model = model_from_state(cfg, load_file(str(path / WEIGHTS), device=str(device or "cpu")), device)
    if dtype is not None:
        model.to(dtype)
    tok = path / "tokenizer"
    if tok.is_dir():
        from transformers import AutoTokenizer

        model.tokenizer = AutoTokenizer.from_pretrained(str(tok))
    return model.eval()


def rebuild_buffers(model, device) -> None:
    """Recreate non-persistent buffers (RoPE frequencies) of a model built on the meta device."""
    from .layers.rope import RotaryEmbedding

    for m in model.modules():
        if isinstance(m, RotaryEmbedding):
            m.inv_freq = m.frequencies(device or "cpu")
        elif hasattr(m, "rebuild_buffers"):
            m.rebuild_buffers(device or "cpu")
    for name, buf in model.named_buffers():
        if buf.is_meta:
            raise RuntimeError(f"buffer {name} was not restored from {WEIGHTS}")


__all__ = ["CONFIG", "WEIGHTS", "atomic_write_dir", "from_pretrained", "model_from_state", "save_pretrained"]
