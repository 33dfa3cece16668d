"""A knowledge base version's table in PostgreSQL + pgvector, and the stamp table any client can read.

Each version is one table ``(id text primary key, doc_id, chunk, text, start_char, end_char, metadata jsonb,
embedding vector(dim))`` with an HNSW cosine index and an index on ``doc_id``; ``e5studio_kb_versions`` holds
one row per version table with its stamp (JSONB). A batch is upserted one shard per transaction (binary COPY
into a temporary table, then ``INSERT ... ON CONFLICT (id) DO UPDATE``), so rerunning after a crash never
duplicates a row. Writing into a table whose recorded stamp differs is refused, naming both stamps.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from e5studio.errors import ConflictError, InputError, UnavailableError
from e5studio.jobs.batch_embed.writer import read_manifest
from e5studio.retrieval.kb_stamp import describe

STAMPS_TABLE = "e5studio_kb_versions"
_COLUMNS = ["id", "doc_id", "chunk", "text", "start", "end", "metadata", "embedding"]


def connect(url: str) -> Any:
    import psycopg
    from pgvector.psycopg import register_vector

    try:
        conn = psycopg.connect(url, autocommit=True, connect_timeout=15)
    except psycopg.Error as exc:
        raise UnavailableError(f"cannot connect to the knowledge base's PostgreSQL: {str(exc).strip()[:300]}") \
            from None
    try:
        conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
    except psycopg.Error as exc:
        conn.close()
        raise InputError(f"the pgvector extension is not available ({str(exc).strip()}); install it") from None
    register_vector(conn)
    return conn


def prepare(conn: Any, table: str, dim: int, stamp: dict[str, Any], kb: str, version: int) -> None:
    """The version table, its indexes and its stamp row (idempotent); a different recorded stamp is refused."""
    from psycopg import sql
    from psycopg.types.json import Jsonb

    conn.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {} (table_name text PRIMARY KEY, knowledge_base text NOT NULL, "
                         "version integer NOT NULL, stamp jsonb NOT NULL, created_at timestamptz NOT NULL "
                         "DEFAULT now())").format(sql.Identifier(STAMPS_TABLE)))
    row = conn.execute(sql.SQL("SELECT stamp FROM {} WHERE table_name = %s").format(sql.Identifier(STAMPS_TABLE)),
                       (table,)).fetchone()
    if row is not None and row[0] != json.loads(json.dumps(stamp)):
        raise ConflictError(f"table {table} holds vectors stamped {describe(row[0])}; these are stamped "
                            f"{describe(stamp)}: mixing them is refused (run `e5studio kb reembed`)")
    if row is None:
        conn.execute(sql.SQL("INSERT INTO {} (table_name, knowledge_base, version, stamp) VALUES (%s, %s, %s, %s) "
                             "ON CONFLICT DO NOTHING").format(sql.Identifier(STAMPS_TABLE)),
                     (table, kb, version, Jsonb(stamp)))
    t = sql.Identifier(table)
    conn.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {} (id text PRIMARY KEY, doc_id text NOT NULL, chunk integer "
                         "NOT NULL, text text NOT NULL, start_char integer NOT NULL, end_char integer NOT NULL, "
                         "metadata jsonb NOT NULL, embedding vector({}) NOT NULL)").format(t, sql.Literal(dim)))
    conn.execute(sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} USING hnsw (embedding vector_cosine_ops)")
                 .format(sql.Identifier(f"{table}_hnsw"), t))
    conn.execute(sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} (doc_id)").format(sql.Identifier(f"{table}_doc"), t))


def write_batch(url: str, table: str, output: Path, stamp: dict[str, Any], kb: str, version: int,
                deleted: dict[str, int], batch: int) -> int:
    """Upsert a complete batch's chunks (those of documents not deleted after it); returns the rows written."""
    import pyarrow.parquet as pq
    from psycopg import sql
    from psycopg.types.json import Jsonb

    manifest = read_manifest(output)
    if manifest is None or manifest.get("status") != "complete":
        raise InputError(f"{output}: the batch is not complete; nothing written to PostgreSQL")
    written = 0
    with connect(url) as conn:
        prepare(conn, table, int(manifest["dim"]), stamp, kb, version)
        for entry in sorted(manifest["shards"], key=lambda s: s["window"]):
            if not entry.get("file"):
                continue
            data = pq.read_table(str(output / entry["file"]), columns=_COLUMNS)
            column = data.column("embedding").combine_chunks()
            vectors = column.flatten().to_numpy(zero_copy_only=False).reshape(-1, column.type.list_size)
            cols = {name: data.column(name).to_pylist() for name in _COLUMNS if name != "embedding"}
            with conn.transaction():
                conn.execute("CREATE TEMP TABLE IF NOT EXISTS e5studio_kb_staging (id text, doc_id text, "
                             "chunk integer, text text, start_char integer, end_char integer, metadata jsonb, "
                             "embedding vector) ON COMMIT DELETE ROWS")
                with conn.cursor() as cur:
                    with cur.copy("COPY e5studio_kb_staging FROM STDIN WITH (FORMAT BINARY)") as copy:
                        copy.set_types(["text", "text", "int4", "text", "int4", "int4", "jsonb", "vector"])
                        for i, vector in enumerate(vectors):
                            if deleted.get(cols["doc_id"][i], -1) >= batch:
                                continue
                            copy.write_row((cols["id"][i], cols["doc_id"][i], cols["chunk"][i], cols["text"][i],
                                            cols["start"][i], cols["end"][i], Jsonb(json.loads(cols["metadata"][i])),
                                            vector))
                            written += 1
                    cur.execute(sql.SQL(
                        "INSERT INTO {} AS t SELECT * FROM e5studio_kb_staging ON CONFLICT (id) DO UPDATE SET "
                        "doc_id = EXCLUDED.doc_id, chunk = EXCLUDED.chunk, text = EXCLUDED.text, start_char = "
                        "EXCLUDED.start_char, end_char = EXCLUDED.end_char, metadata = EXCLUDED.metadata, "
                        "embedding = EXCLUDED.embedding").format(sql.Identifier(table)))
    return written


def delete_document(url: str, table: str, doc_id: str) -> int:
    from psycopg import sql

    with connect(url) as conn:
        exists = conn.execute("SELECT to_regclass(%s)", (table,)).fetchone()
        if exists is None or exists[0] is None:
            return 0
        return int(conn.execute(sql.SQL("DELETE FROM {} WHERE doc_id = %s").format(sql.Identifier(table)),
                                (doc_id,)).rowcount)


def drop_table(url: str, table: str) -> None:
    from psycopg import sql

    with connect(url) as conn:
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(table)))
        exists = conn.execute("SELECT to_regclass(%s)", (STAMPS_TABLE,)).fetchone()
        if exists is not None and exists[0] is not None:
            conn.execute(sql.SQL("DELETE FROM {} WHERE table_name = %s").format(sql.Identifier(STAMPS_TABLE)),
                         (table,))
