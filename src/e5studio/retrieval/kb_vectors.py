"""Searching a knowledge base version's chunk vectors: exact search over its Parquet shards (the embedded
store), or pgvector's HNSW index in PostgreSQL; both answer the same :class:`ChunkHit` list.

A version of a knowledge base is one folder (``<data dir>/kb/<kb id>/v<N>``) of batches, each an embed-corpus
output whose shards carry the chunk columns (``doc_id``, ``chunk``, ``text``, ``start``, ``end``,
``metadata``); only batches whose manifest says complete are read, so a batch being added is invisible until
it is whole. ``deleted.json`` maps a deleted document id to the last batch it was deleted after (a document
added again in a later batch is live). In PostgreSQL a version is one table (``id, doc_id, chunk, text,
start_char, end_char, metadata jsonb, embedding vector(dim)``, HNSW cosine index) named in the version
record; a filtered search needs pgvector 0.8 or later (iterative index scans).

A search names one version and reads only it: a search never mixes versions.
"""

from __future__ import annotations

import json
import queue
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from e5studio.errors import InputError, UnavailableError

BATCHES_DIR = "batches"
DELETED_FILE = "deleted.json"
MAX_K = 1000
CHUNK_COLUMNS = ("id", "doc_id", "chunk", "text", "start", "end", "metadata", "embedding")
_CACHE_VERSIONS = 4


@dataclass(frozen=True)
class ChunkHit:
    score: float
    doc_id: str
    chunk: int
    text: str
    start: int
    end: int
    metadata: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"score": round(self.score, 6), "document_id": self.doc_id, "chunk": self.chunk, "text": self.text,
                "start": self.start, "end": self.end, "metadata": self.metadata}


@dataclass(frozen=True)
class SearchRequest:
    """One search: the query's unit vector [dim], ``k`` hits, metadata equalities, best chunk per document."""

    vector: np.ndarray
    k: int
    filter: dict[str, Any]
    by_document: bool


def check_request(k: object, filter: object, by_document: object, fields: list[str]) -> tuple[int, dict[str, Any],
                                                                                             bool]:
    """The search parameters, checked: ``k`` 1..MAX_K, ``filter`` an object of known metadata fields to JSON
    scalars, ``by_document`` a boolean; InputError naming the field otherwise."""
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= MAX_K:
        raise InputError(f"'k' must be an integer from 1 to {MAX_K}, got {k!r}")
    if filter is None:
        filter = {}
    if not isinstance(filter, dict):
        raise InputError("'filter' must be an object of metadata field -> value")
    for name, value in filter.items():
        if name not in fields:
            known = ", ".join(fields[:20]) or "none"
            raise InputError(f"'filter': unknown metadata field {name!r} (fields of this knowledge base: {known})")
        if value is not None and not isinstance(value, (str, int, float, bool)):
            raise InputError(f"'filter.{name}' must be a string, number, boolean or null")
        if isinstance(value, str) and "\x00" in value:
            raise InputError(f"'filter.{name}' has a NUL character")
    if not isinstance(by_document, bool):
        raise InputError("'by_document' must be true or false")
    return k, filter, by_document


def _same(stored: Any, wanted: Any) -> bool:
    """JSON equality as PostgreSQL's ``@>`` on a scalar sees it: true is not 1, 1 is 1.0."""
    if isinstance(stored, bool) or isinstance(wanted, bool):
        return isinstance(stored, bool) and isinstance(wanted, bool) and stored == wanted
    return bool(stored == wanted)


def _top(scores: np.ndarray, k: int) -> np.ndarray:
    if len(scores) <= k:
        return np.argsort(-scores, kind="stable")
    part = np.argpartition(-scores, k - 1)[:k]
    return part[np.argsort(-scores[part], kind="stable")]


class EmbeddedChunks:
    """Every live chunk of one version folder in memory: vectors [n, dim] and their rows."""

    def __init__(self, rows: list[dict[str, Any]], vectors: np.ndarray) -> None:
        self.rows = rows
        self.vectors = vectors
        self.doc_ids = np.asarray([r["doc_id"] for r in rows], dtype=object)

    @classmethod
    def load(cls, folder: Path) -> EmbeddedChunks:
        import pyarrow.parquet as pq

        deleted = read_deleted(folder)
        rows: list[dict[str, Any]] = []
        parts: list[np.ndarray] = []
        for batch, output in complete_batches(folder):
            manifest = json.loads((output / "manifest.json").read_text(encoding="utf-8"))
            for entry in sorted(manifest["shards"], key=lambda s: s["window"]):
                if not entry.get("file"):
                    continue
                table = pq.read_table(str(output / entry["file"]), columns=list(CHUNK_COLUMNS))
                column = table.column("embedding").combine_chunks()
                vectors = column.flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape(
                    -1, column.type.list_size)
                data = {name: table.column(name).to_pylist() for name in CHUNK_COLUMNS if name != "embedding"}
                keep = [i for i, d in enumerate(data["doc_id"]) if deleted.get(d, -1) < batch]
                rows += [{name: data[name][i] for name in data} for i in keep]
                parts.append(vectors[keep])
        for row in rows:
            row["metadata"] = json.loads(row["metadata"] or "{}")
        dim = parts[0].shape[1] if parts else 0
        return cls(rows, np.concatenate(parts) if parts else np.zeros((0, dim), dtype=np.float32))

    def search(self, request: SearchRequest) -> list[ChunkHit]:
        if not self.rows:
            return []
        scores = self.vectors @ np.asarray(request.vector, dtype=np.float32)  # [n]
        if request.filter:
            mask = np.fromiter((all(f in r["metadata"] and _same(r["metadata"][f], v) for f, v in
                                    request.filter.items()) for r in self.rows), dtype=bool, count=len(self.rows))
            scores = np.where(mask, scores, -np.inf)
        if request.by_document:
            order = np.argsort(-scores, kind="stable")
            _, first = np.unique(self.doc_ids[order], return_index=True)
            best = order[np.sort(first)]
            picked = best[: request.k]
        else:
            picked = _top(scores, request.k)
        return [self._hit(int(i), float(scores[i])) for i in picked if np.isfinite(scores[i])]

    def _hit(self, i: int, score: float) -> ChunkHit:
        r = self.rows[i]
        return ChunkHit(score, r["doc_id"], int(r["chunk"]), r["text"], int(r["start"]), int(r["end"]), r["metadata"])


def complete_batches(folder: Path) -> list[tuple[int, Path]]:
    """(batch number, output folder) of the version's batches whose embedding is complete, in order."""
    found = []
    root = folder / BATCHES_DIR
    if not root.is_dir():
        return []
    for output in sorted(root.iterdir()):
        if not output.name.isdigit():
            continue
        try:
            manifest = json.loads((output / "manifest.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if manifest.get("status") == "complete":
            found.append((int(output.name), output))
    return found


def read_deleted(folder: Path) -> dict[str, int]:
    try:
        raw = json.loads((folder / DELETED_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise InputError(f"{folder / DELETED_FILE}: cannot read: {exc}") from None
    return {str(k): int(v) for k, v in raw.items()}


class EmbeddedCache:
    """Loaded versions by (folder, generation): a version is read once, again after an add or a delete."""

    def __init__(self) -> None:
        self._loaded: OrderedDict[tuple[str, int], EmbeddedChunks] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, folder: str, generation: int) -> EmbeddedChunks:
        key = (folder, generation)
        with self._lock:
            if key in self._loaded:
                self._loaded.move_to_end(key)
                return self._loaded[key]
        chunks = EmbeddedChunks.load(Path(folder))
        with self._lock:
            self._loaded[key] = chunks
            while len(self._loaded) > _CACHE_VERSIONS:
                self._loaded.popitem(last=False)
        return chunks


class PgvectorChunks:
    """Searches of version tables in PostgreSQL over a few kept connections per URL."""

    def __init__(self, connections: int = 4) -> None:
        self._idle: dict[str, queue.LifoQueue[Any]] = {}
        self._size = connections
        self._lock = threading.Lock()

    def _connect(self, url: str) -> Any:
        import psycopg
        from pgvector.psycopg import register_vector

        try:
            conn = psycopg.connect(url, autocommit=True, connect_timeout=5)
        except psycopg.Error as exc:
            raise UnavailableError(f"the knowledge base's PostgreSQL is not reachable: {str(exc).strip()[:200]}") \
                from None
        register_vector(conn)
        return conn

    def search(self, url: str, table: str, request: SearchRequest) -> list[ChunkHit]:
        import psycopg

        with self._lock:
            idle = self._idle.setdefault(url, queue.LifoQueue())
        try:
            conn = idle.get_nowait()
        except queue.Empty:
            conn = self._connect(url)
        try:
            hits = search_table(conn, table, request)
        except psycopg.OperationalError as exc:
            conn.close()
            raise UnavailableError(f"the knowledge base's PostgreSQL failed: {str(exc).strip()[:200]}") from None
        except BaseException:
            conn.close()
            raise
        if idle.qsize() < self._size:
            idle.put(conn)
        else:
            conn.close()
        return hits


def search_table(conn: Any, table: str, request: SearchRequest) -> list[ChunkHit]:
    """The HNSW (cosine) search of one version table; by document: candidates doubled until ``k`` documents."""
    from psycopg import sql

    vector = np.asarray(request.vector, dtype=np.float32)
    where = sql.SQL("WHERE metadata @> %s::jsonb") if request.filter else sql.SQL("")
    limit = request.k * (4 if request.by_document else 1)
    while True:
        fetch = min(limit, 40_000)
        with conn.transaction():
            conn.execute(sql.SQL("SET LOCAL hnsw.ef_search = {}").format(sql.Literal(max(40, min(fetch, 1000)))))
            if request.filter:  # pgvector >= 0.8: scan on until enough rows pass the filter, in distance order
                conn.execute("SET LOCAL hnsw.iterative_scan = strict_order")
            params: list[Any] = [vector]
            if request.filter:
                params.append(json.dumps(request.filter))
            params.append(vector)
            rows = conn.execute(sql.SQL(
                "SELECT doc_id, chunk, text, start_char, end_char, metadata, 1 - (embedding <=> %s) AS score "
                "FROM {} {} ORDER BY embedding <=> %s LIMIT {}").format(
                    sql.Identifier(table), where, sql.Literal(fetch)), params).fetchall()
        hits = [ChunkHit(float(r[6]), r[0], int(r[1]), r[2], int(r[3]), int(r[4]), r[5]) for r in rows]
        if not request.by_document:
            return hits
        best: dict[str, ChunkHit] = {}
        for hit in hits:
            best.setdefault(hit.doc_id, hit)
        if len(best) >= request.k or len(rows) < fetch or fetch >= 40_000:
            return list(best.values())[: request.k]
        limit *= 2
