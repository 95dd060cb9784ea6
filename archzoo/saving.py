"""save_pretrained: model.safetensors + config.yaml (+ tokenizer/), written atomically.

Files are written into a temporary folder beside the target and swapped in with ``os.replace``,
so a crash mid-save never leaves a half-written checkpoint where a good one was. The reader,
``from_pretrained``, is in ``archzoo.checkpoint`` (it builds a model; this module needs none).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import yaml
from safetensors.torch import save_file

WEIGHTS, CONFIG = "model.safetensors", "config.yaml"


def publish(tmp: str | Path, path: str | Path) -> None:
    """Move a finished temporary file onto ``path`` (``os.replace``: atomic), with the mode a plain ``open`` would
    have given it: ``mkstemp`` makes files only their owner can read (0600), which a report or corpus that others
    on the machine read must not keep."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(tmp, 0o666 & ~mask)
    os.replace(tmp, path)


def atomic_write(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file beside it and ``os.replace``: a reader sees the old
    file or the new one, never half of one."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        publish(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_dir(target: Path, fill) -> None:
    """Call ``fill(tmpdir)`` then move each file it wrote into ``target`` atomically."""
    target.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target))
    try:
        fill(tmp)
        for item in tmp.iterdir():
            dest = target / item.name
            if item.is_dir():
                if dest.exists():
                    shutil.rmtree(dest)
                os.replace(item, dest)
            else:
                os.replace(item, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def save_pretrained(model, path: str | Path) -> None:
    path = Path(path)
    tied = model.cfg.tie_embeddings
    state = {
        k: v.detach().contiguous().cpu() for k, v in model.state_dict().items() if not (tied and k == "lm_head.weight")
    }

    def fill(tmp: Path) -> None:
        save_file(state, str(tmp / WEIGHTS), metadata={"format": "pt", "archzoo": "1"})
        (tmp / CONFIG).write_text(yaml.safe_dump(model.cfg.to_dict(), sort_keys=False))
        if getattr(model, "tokenizer", None) is not None:
            model.tokenizer.save_pretrained(str(tmp / "tokenizer"))

    atomic_write_dir(path, fill)
