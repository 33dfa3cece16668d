"""Which model shaped a set of vectors: its name, path, dimension, truncation length and the SHA-256 of the
files that shape the vectors (a rerun with other weights is refused, not mixed in).

Hashing E5-Large's 1.3 GB of weights takes seconds on every run, so the checksum is computed once and cached by
what identifies the files' contents without reading them: each file's resolved path, size and modification
time (for a Hugging Face cache the resolved path holds the revision's blob). Any change to one of them, a
new revision included, computes it again."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from e5studio.engine.checkpoint import WEIGHT_FILES, load_checkpoint
from e5studio.settings import EngineSettings


def cache_file() -> Path:
    """Where computed checksums are kept: ``$E5STUDIO_CACHE_DIR``, else ``$XDG_CACHE_HOME/e5studio`` (default
    ``~/.cache/e5studio``)."""
    configured = os.environ.get("E5STUDIO_CACHE_DIR")
    if configured:
        return Path(configured) / "model_sha256.json"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "e5studio" / "model_sha256.json"


def model_sha256(path: Path) -> str:
    """SHA-256 over the files that shape the vectors: config, tokenizer, weights (names included); computed
    once per state of those files (module docstring)."""
    files = _shaping_files(path)
    key = json.dumps([[name, str(file.resolve()), st.st_size, st.st_mtime_ns]
                      for name, file in files for st in [file.stat()]])
    cache = _read_cache()
    if key in cache:
        return cache[key]
    digest = _digest(files)
    cache[key] = digest
    _write_cache(cache)
    return digest


def _shaping_files(path: Path) -> list[tuple[str, Path]]:
    names = ["config.json", "tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json",
             *WEIGHT_FILES]
    index = path / "model.safetensors.index.json"
    if index.is_file():
        with contextlib.suppress(OSError, ValueError, KeyError):
            names += sorted(set(json.loads(index.read_text())["weight_map"].values()))
    return [(name, path / name) for name in names if (path / name).is_file()]


def _digest(files: list[tuple[str, Path]]) -> str:
    digest = hashlib.sha256()
    for name, file in files:
        digest.update(name.encode() + b"\0")
        with file.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):  # noqa: B023 - f is bound per file
                digest.update(block)
    return digest.hexdigest()


def _read_cache() -> dict[str, str]:
    try:
        data = json.loads(cache_file().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, str)} if isinstance(data, dict) \
        else {}


def _write_cache(cache: dict[str, str]) -> None:
    """Atomically (a reader never sees half a file); a cache that cannot be written is only slower next time."""
    target = cache_file()
    with contextlib.suppress(OSError):
        target.parent.mkdir(parents=True, exist_ok=True)
        entries = dict(list(cache.items())[-256:])  # bounded: the newest 256 model states
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".model_sha256.")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(entries, f)
        os.replace(tmp, target)


def model_identity(engine: EngineSettings) -> dict[str, Any]:
    """Name, resolved path, checksum, dimension and truncation length, without loading the weights."""
    checkpoint = load_checkpoint(engine.model)
    config = checkpoint.config
    max_length = min(engine.max_length or checkpoint.max_length, config.max_position_embeddings)
    return identity(engine.model, checkpoint.path, config.hidden_size, max_length)


def identity(name: str, path: Path, dim: int, max_length: int) -> dict[str, Any]:
    """The identity of the model ``name`` whose files are in ``path`` (a loaded one: the server's), as
    :func:`model_identity` gives it."""
    return {"name": name, "path": str(Path(path).resolve()), "sha256": model_sha256(Path(path)), "dim": dim,
            "max_length": max_length}
