"""Parquet vector shards and the manifest that lists them, both written atomically.

A shard is ``shards/part-NNNNNN.parquet`` (NNNNNN = its window) with three columns: ``id`` (string),
``text_sha256`` (string, hex SHA-256 of the passage text as read, before any prefix) and ``embedding``
(``fixed_size_list<float32>[dim]``). It is written to a hidden temporary name in the same folder, flushed to
disk and renamed, so a shard's final name only ever holds a complete file. The manifest (``manifest.json``)
is replaced the same way after each shard; a shard counts as done only once the manifest lists it, with
its row count and the SHA-256 of its bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from e5studio.errors import InputError
from e5studio.jobs.files import file_sha256
from e5studio.jobspec.layout import MANIFEST_FILE, SHARDS_DIR

FORMAT = "e5studio.vectors/1"
_TMP_PREFIX = ".tmp-"


def shard_name(window: int) -> str:
    return f"{SHARDS_DIR}/part-{window:06d}.parquet"


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()



def fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """``path`` holds either its old content or ``data``, never a mix, whatever happens."""
    tmp = path.with_name(f"{_TMP_PREFIX}{path.name}.{os.getpid()}")
    with tmp.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def remove_temporaries(directory: Path) -> int:
    """Delete temporary files a killed writer left behind (never a complete file); returns how many."""
    removed = 0
    for folder in (directory, directory / SHARDS_DIR):
        if folder.is_dir():
            for p in folder.iterdir():
                if p.name.startswith(_TMP_PREFIX) and p.is_file():
                    p.unlink()
                    removed += 1
    return removed


@dataclass(frozen=True)
class ShardInfo:
    file: str  # relative to the output folder
    rows: int
    sha256: str
    bytes: int


def write_shard(output: Path, window: int, ids: Sequence[str], hashes: Sequence[str],
                vectors: np.ndarray, extra: dict[str, list[Any]] | None = None) -> ShardInfo:
    """Write ``vectors`` [n, dim] float32 with their ids as the shard of ``window``, atomically; ``extra``:
    more columns (a knowledge base's chunk text, document id, offsets, metadata), one value per row."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if vectors.ndim != 2 or vectors.shape[0] != len(ids) or len(hashes) != len(ids):
        raise ValueError(f"shard {window}: {len(ids)} ids, {len(hashes)} hashes, vectors {vectors.shape}")
    dim = int(vectors.shape[1])
    flat = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1), type=pa.float32())
    table = pa.table({
        "id": pa.array(list(ids), type=pa.string()),
        "text_sha256": pa.array(list(hashes), type=pa.string()),
        "embedding": pa.FixedSizeListArray.from_arrays(flat, dim),
        **{name: pa.array(values) for name, values in (extra or {}).items()},
    })
    name = shard_name(window)
    final = output / name
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f"{_TMP_PREFIX}{final.name}.{os.getpid()}")
    with tmp.open("wb") as f:
        pq.write_table(table, f, compression="zstd")
        f.flush()
        os.fsync(f.fileno())
    sha = file_sha256(tmp)
    size = tmp.stat().st_size
    os.replace(tmp, final)
    fsync_dir(final.parent)
    return ShardInfo(name, len(ids), sha, size)


def read_shard(path: Path) -> tuple[list[str], list[str], np.ndarray]:
    """(ids, text hashes, vectors [n, dim] float32) of one shard."""
    import pyarrow.parquet as pq

    table = pq.read_table(str(path), columns=["id", "text_sha256", "embedding"])
    column = table.column("embedding").combine_chunks()
    dim = column.type.list_size
    vectors = column.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False).reshape(-1, dim)
    return table.column("id").to_pylist(), table.column("text_sha256").to_pylist(), vectors


# ---------------------------------------------------------------------------------------------- manifest


def read_manifest(output: Path) -> dict[str, Any] | None:
    path = output / MANIFEST_FILE
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: cannot read the manifest: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise InputError(f"{path}: not an e5studio vector manifest (format {FORMAT})")
    return manifest


def write_manifest(output: Path, manifest: dict[str, Any]) -> None:
    atomic_write_bytes(output / MANIFEST_FILE, (json.dumps(manifest, indent=1) + "\n").encode("utf-8"))


def done_shards(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """The manifest's shard entries in window order (windows whose lines were all rejected have no file)."""
    return sorted(manifest.get("shards", []), key=lambda s: s["window"])


def iter_output(output: Path, verify: bool = False) -> Iterator[tuple[list[str], list[str], np.ndarray]]:
    """(ids, text hashes, vectors) of every shard the manifest lists, in window order.

    ``verify`` checks each file's SHA-256 and row count against the manifest (InputError on a mismatch).
    """
    manifest = read_manifest(output)
    if manifest is None:
        raise InputError(f"{output}: no {MANIFEST_FILE} (not an embed-corpus output folder)")
    for entry in done_shards(manifest):
        if not entry.get("file"):
            continue
        path = output / entry["file"]
        if not path.is_file():
            raise InputError(f"{path}: listed in the manifest but missing")
        if verify and file_sha256(path) != entry["sha256"]:
            raise InputError(f"{path}: checksum does not match the manifest (file changed or damaged)")
        ids, hashes, vectors = read_shard(path)
        if len(ids) != entry["rows"]:
            raise InputError(f"{path}: {len(ids)} rows, the manifest says {entry['rows']}")
        yield ids, hashes, vectors


def read_columns(path: Path, columns: Sequence[str]) -> dict[str, list[Any]]:
    """Some columns of one shard as Python lists (a knowledge base's chunk columns)."""
    import pyarrow.parquet as pq

    table = pq.read_table(str(path), columns=list(columns))
    return {name: table.column(name).to_pylist() for name in columns}


def read_output(output: Path, verify: bool = False) -> tuple[list[str], np.ndarray]:
    """Every (id, vector) of an output folder, in window order: (ids, vectors [n, dim] float32)."""
    ids: list[str] = []
    parts: list[np.ndarray] = []
    for shard_ids, _, vectors in iter_output(output, verify):
        ids.extend(shard_ids)
        parts.append(vectors)
    manifest = read_manifest(output) or {}
    dim = int(manifest.get("dim", 0))
    return ids, (np.concatenate(parts) if parts else np.zeros((0, dim), dtype=np.float32))
