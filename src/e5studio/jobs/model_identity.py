"""Which model shaped a set of vectors: its name, path, dimension, truncation length and the SHA-256 of the
files that shape the vectors (a rerun with other weights is refused, not mixed in)."""

from __future__ import annotations

import contextlib
import hashlib
import json
from pathlib import Path
from typing import Any

from e5studio.engine.checkpoint import WEIGHT_FILES, load_checkpoint
from e5studio.settings import EngineSettings


def model_sha256(path: Path) -> str:
    """SHA-256 over the files that shape the vectors: config, tokenizer, weights (names included)."""
    names = ["config.json", "tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json",
             *WEIGHT_FILES]
    index = path / "model.safetensors.index.json"
    if index.is_file():
        with contextlib.suppress(OSError, ValueError, KeyError):
            names += sorted(set(json.loads(index.read_text())["weight_map"].values()))
    digest = hashlib.sha256()
    for name in names:
        file = path / name
        if file.is_file():
            digest.update(name.encode() + b"\0")
            with file.open("rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):  # noqa: B023 - f is bound per file
                    digest.update(block)
    return digest.hexdigest()


def model_identity(engine: EngineSettings) -> dict[str, Any]:
    """Name, resolved path, checksum, dimension and truncation length, without loading the weights."""
    checkpoint = load_checkpoint(engine.model)
    config = checkpoint.config
    max_length = min(engine.max_length or checkpoint.max_length, config.max_position_embeddings)
    return {"name": engine.model, "path": str(checkpoint.path.resolve()), "sha256": model_sha256(checkpoint.path),
            "dim": config.hidden_size, "max_length": max_length}
