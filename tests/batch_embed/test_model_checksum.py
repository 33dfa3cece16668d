"""The model checksum is computed once per state of the model's files and cached (CPU-testable part of the
GPU batch-job work): same value as hashing, no file read on the second call, recomputed when a file changes."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest

from e5studio.engine import model_identity


@pytest.fixture
def model_copy(tiny_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("E5STUDIO_CACHE_DIR", str(tmp_path / "cache"))
    return Path(shutil.copytree(tiny_dir, tmp_path / "model"))


def _plain_digest(path: Path) -> str:
    """The checksum as written before the cache: names and bytes of the shaping files, in order."""
    digest = hashlib.sha256()
    for name, file in model_identity._shaping_files(path):
        digest.update(name.encode() + b"\0" + file.read_bytes())
    return digest.hexdigest()


def test_checksum_is_cached_by_path_size_and_mtime(model_copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = model_identity.model_sha256(model_copy)
    assert first == _plain_digest(model_copy)
    assert model_identity.cache_file().is_file()

    reads: list[Path] = []
    digest = model_identity._digest
    monkeypatch.setattr(model_identity, "_digest", lambda files: reads.append(files[0][1]) or digest(files))
    assert model_identity.model_sha256(model_copy) == first
    assert reads == []  # answered from the cache: no byte of the weights read

    config = model_copy / "config.json"
    config.write_text(config.read_text().replace("}", ', "note": "changed"}', 1))
    os.utime(config, ns=(config.stat().st_atime_ns, config.stat().st_mtime_ns + 10**9))
    changed = model_identity.model_sha256(model_copy)
    assert len(reads) == 1 and changed != first and changed == _plain_digest(model_copy)


def test_an_unwritable_cache_only_costs_time(model_copy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    monkeypatch.setenv("E5STUDIO_CACHE_DIR", str(blocker))
    assert model_identity.model_sha256(model_copy) == _plain_digest(model_copy)
