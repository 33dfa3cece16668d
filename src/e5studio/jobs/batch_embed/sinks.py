"""Where finished vectors go besides the Parquet shards: the exact search index and PostgreSQL + pgvector.

PostgreSQL (``--sink postgres://user:pass@host:5432/db``): a table ``(id text primary key, text_sha256 text,
embedding vector(dim))`` with an HNSW index on cosine distance (``vector_cosine_ops``). Rows are upserted
one shard per transaction (binary COPY into a temporary table, then ``INSERT ... ON CONFLICT (id) DO UPDATE``
only where the text hash or the vector changed), so rerunning never duplicates a row and a crash in the
middle leaves whole shards. Ids in the table that the output does not have are left alone.
"""

from __future__ import annotations

import re
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from e5studio.errors import InputError
from e5studio.jobs.batch_embed.writer import iter_output, read_manifest
from e5studio.jobspec.layout import INDEX_DIR
from e5studio.retrieval.index import ExactIndex

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,47}$")


def build_index(output: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Build ``output/index`` (exact inner-product search) from the shards; returns its manifest entry."""
    count, dim = int(manifest["count"]), int(manifest["dim"])
    chunks = ((ids, vectors) for ids, _, vectors in iter_output(output))
    index = ExactIndex.build(output / INDEX_DIR, count, dim, chunks)
    return {"kind": "exact", "metric": "inner_product (cosine on unit vectors)", "dir": INDEX_DIR,
            "count": len(index), "dim": index.dim}


def redact(url: str) -> str:
    """``url`` without its password (for messages and reports)."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


@dataclass(frozen=True)
class PostgresSink:
    """Upserts an output folder's vectors into ``table`` of the database at ``url``."""

    url: str
    table: str = "passages"

    def __post_init__(self) -> None:
        if not self.url.startswith(("postgres://", "postgresql://")):
            raise InputError(f"--sink must be a postgres:// or postgresql:// URL, got {redact(self.url)!r}")
        if not _IDENTIFIER.fullmatch(self.table):
            raise InputError(f"--table must be a plain SQL identifier (letters, digits, _), got {self.table!r}")

    def _connect(self) -> Any:
        try:
            import psycopg
        except ImportError:
            raise InputError("the PostgreSQL sink needs psycopg and pgvector: pip install 'e5studio[pgvector]'") \
                from None
        try:
            return psycopg.connect(self.url, autocommit=True, connect_timeout=15)
        except psycopg.Error as exc:
            raise InputError(f"cannot connect to {redact(self.url)}: {str(exc).strip()}") from None

    def prepare(self, conn: Any, dim: int) -> None:
        """Extension, table and HNSW index (idempotent); refuses a table whose vectors have another dimension."""
        import psycopg
        from pgvector.psycopg import register_vector
        from psycopg import sql

        table = sql.Identifier(self.table)
        try:
            conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        except psycopg.Error as exc:
            raise InputError(f"{redact(self.url)}: the pgvector extension is not available "
                             f"({str(exc).strip()}); install pgvector on the server") from None
        register_vector(conn)
        conn.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {} (id text PRIMARY KEY, text_sha256 text NOT NULL, "
                             "embedding vector({}) NOT NULL)").format(table, sql.Literal(dim)))
        row = conn.execute("SELECT atttypmod FROM pg_attribute WHERE attrelid = %s::regclass AND attname = "
                           "'embedding'", (self.table,)).fetchone()
        if row is None or row[0] != dim:
            raise InputError(f"table {self.table} exists with embedding dimension {row[0] if row else 'none'}, "
                             f"the vectors have {dim}; use another --table")
        conn.execute(sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} USING hnsw (embedding vector_cosine_ops)")
                     .format(sql.Identifier(f"{self.table}_embedding_hnsw"), table))

    def write(self, output: Path) -> dict[str, Any]:
        """Upsert every shard of ``output``; returns counts (inserted, updated, unchanged, rows in the table)."""
        from psycopg import sql

        manifest = read_manifest(output)
        if manifest is None or manifest.get("status") != "complete":
            raise InputError(f"{output}: the embedding job is not complete; nothing written to {redact(self.url)}")
        t0 = time.perf_counter()
        inserted = updated = total = 0
        table = sql.Identifier(self.table)
        with self._connect() as conn:
            self.prepare(conn, int(manifest["dim"]))
            for ids, hashes, vectors in iter_output(output):
                with conn.transaction():
                    conn.execute("CREATE TEMP TABLE IF NOT EXISTS e5studio_staging "
                                 "(id text, text_sha256 text, embedding vector) ON COMMIT DELETE ROWS")
                    with conn.cursor() as cur:
                        with cur.copy("COPY e5studio_staging (id, text_sha256, embedding) FROM STDIN "
                                      "WITH (FORMAT BINARY)") as copy:
                            copy.set_types(["text", "text", "vector"])
                            for row_id, digest, vector in zip(ids, hashes, vectors, strict=True):
                                copy.write_row((row_id, digest, vector))
                        cur.execute(sql.SQL(
                            "INSERT INTO {t} AS t (id, text_sha256, embedding) "
                            "SELECT DISTINCT ON (id) id, text_sha256, embedding FROM e5studio_staging "
                            "ON CONFLICT (id) DO UPDATE SET text_sha256 = EXCLUDED.text_sha256, "
                            "embedding = EXCLUDED.embedding "
                            "WHERE t.text_sha256 IS DISTINCT FROM EXCLUDED.text_sha256 "
                            "OR t.embedding IS DISTINCT FROM EXCLUDED.embedding "
                            "RETURNING (xmax = 0)").format(t=table))
                        flags = [r[0] for r in cur.fetchall()]
                inserted += sum(flags)
                updated += len(flags) - sum(flags)
                total += len(ids)
            rows = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(table)).fetchone()[0]
        return {"sink": redact(self.url), "table": self.table, "vectors": total, "inserted": inserted,
                "updated": updated, "unchanged": total - inserted - updated, "rows": int(rows),
                "seconds": round(time.perf_counter() - t0, 3)}
