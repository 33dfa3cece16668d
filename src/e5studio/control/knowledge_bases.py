"""Knowledge bases: a project's documents embedded by one endpoint's model into stamped chunk vectors.

A knowledge base names its endpoint, its chunking policy and where its vectors live (``store_url`` "": the
embedded Parquet + exact index in the data dir; else a PostgreSQL + pgvector database). Its vectors are kept in
*versions*: version 1 is made by ``kb create``, each ``kb reembed`` builds the next one beside the current one.
``current_version`` is the one searches use; :meth:`KnowledgeBaseTable.switch_version` moves it in one
transaction once a new version is Ready, so every search (on every replica: each reads it from the store)
sees one version whole, never a mix. A version's ``stamp`` (JSON) records what shaped its vectors: the model
(name, path, SHA-256, dimension, max length), precision, prefixes and chunking.

The URL of a PostgreSQL vector store is kept without a password (the store holds no secrets in clear): the
password comes from ``PGPASSWORD`` or ``~/.pgpass`` of whoever writes and searches.
"""

from __future__ import annotations

import json
import urllib.parse
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from e5studio.control.database import as_lookup, check_name, new_id, now
from e5studio.control.endpoints import EndpointTable
from e5studio.control.projects import id_first
from e5studio.control.schema import kb_versions, knowledge_bases, projects
from e5studio.errors import ConflictError, InputError, NotFoundError

VERSION_BUILDING = "Building"
VERSION_READY = "Ready"
VERSION_FAILED = "Failed"
KB_HINT = ": create one with `e5studio kb create NAME --project PROJECT --endpoint ENDPOINT --data FILE`"


@dataclass(frozen=True)
class KnowledgeBase:
    id: str
    project_id: str
    project_name: str
    name: str
    description: str
    endpoint_id: str
    store_url: str
    chunking: dict[str, Any]
    text_field: str
    id_field: str
    current_version: int
    created_at: str

    @property
    def store_kind(self) -> str:
        return "pgvector" if self.store_url else "embedded"


@dataclass(frozen=True)
class KbVersion:
    id: str
    kb_id: str
    version: int
    endpoint_id: str
    status: str
    status_reason: str
    stamp: dict[str, Any]
    path: str
    table_name: str
    documents: int
    chunks: int
    fields: list[str]
    generation: int
    created_at: str
    updated_at: str


_K = knowledge_bases.c
_V = kb_versions.c
_KB_SELECT = sa.select(knowledge_bases, projects.c.name.label("project_name")).join(
    projects, projects.c.id == _K.project_id)


def _kb(row: sa.RowMapping) -> KnowledgeBase:
    values = {str(k): v for k, v in row.items()}
    values["chunking"] = json.loads(values["chunking"] or "{}")
    return KnowledgeBase(**values)


def _version(row: sa.RowMapping) -> KbVersion:
    values = {str(k): v for k, v in row.items()}
    values["stamp"] = json.loads(values["stamp"] or "{}")
    values["fields"] = json.loads(values["fields"] or "[]")
    return KbVersion(**values)


def check_store_url(url: str) -> str:
    """A PostgreSQL URL for a knowledge base's vectors: ``postgres://`` or ``postgresql://``, no password."""
    if not url:
        return ""
    if not url.startswith(("postgres://", "postgresql://")):
        raise InputError("--store-url must be a postgres:// or postgresql:// URL")
    if "\x00" in url or any(ord(c) < 32 for c in url):
        raise InputError("--store-url has control characters")
    if urllib.parse.urlsplit(url).password:
        raise InputError("--store-url must not hold a password (the control store keeps the URL): put it in "
                         "PGPASSWORD or ~/.pgpass")
    return url


class KnowledgeBaseTable(EndpointTable):
    """Knowledge bases of projects and their versions (module docstring)."""

    def create_kb(self, project_ref: str, name: str, endpoint_ref: str, *, chunking: dict[str, Any],
                  store_url: str = "", text_field: str = "contents", id_field: str = "",
                  description: str = "") -> KnowledgeBase:
        check_name("knowledge base", name)
        store_url = check_store_url(store_url)
        endpoint = self.get_endpoint(project_ref, endpoint_ref)
        with self._write() as conn:
            taken = conn.execute(sa.select(_K.id).where(_K.project_id == endpoint.project_id, _K.name == name)).first()
            if taken:
                raise ConflictError(f"knowledge base {name!r} already exists in project {endpoint.project_name!r}")
            kb_id = new_id()
            conn.execute(knowledge_bases.insert().values(
                id=kb_id, project_id=endpoint.project_id, name=name, description=description,
                endpoint_id=endpoint.id, store_url=store_url, chunking=json.dumps(chunking), text_field=text_field,
                id_field=id_field, current_version=0, created_at=now()))
            return self._get_kb_by_id(conn, kb_id)

    @staticmethod
    def _get_kb_by_id(conn: Connection, kb_id: str) -> KnowledgeBase:
        row = conn.execute(_KB_SELECT.where(_K.id == as_lookup(kb_id))).mappings().first()
        if row is None:
            raise NotFoundError(f"knowledge base {kb_id!r} not found{KB_HINT}")
        return _kb(row)

    def get_kb(self, project_ref: str, kb_ref: str) -> KnowledgeBase:
        """The knowledge base ``kb_ref`` (id or name) of project ``project_ref`` (id or name)."""
        with self._read() as conn:
            return self._get_kb(conn, project_ref, kb_ref)

    def _get_kb(self, conn: Connection, project_ref: str, kb_ref: str) -> KnowledgeBase:
        project = self._get_project(conn, project_ref)
        ref = as_lookup(kb_ref)
        row = conn.execute(_KB_SELECT.where(_K.project_id == project.id, sa.or_(_K.id == ref, _K.name == ref))
                           .order_by(id_first(_K.id, ref)).limit(1)).mappings().first()
        if row is None:
            raise NotFoundError(f"knowledge base {kb_ref!r} not found in project {project.name!r}{KB_HINT}")
        return _kb(row)

    def list_kbs(self, project_ref: str | None = None) -> list[KnowledgeBase]:
        with self._read() as conn:
            query = _KB_SELECT
            if project_ref is not None:
                query = query.where(_K.project_id == self._get_project(conn, project_ref).id)
            rows = conn.execute(query.order_by(projects.c.name, _K.name)).mappings().all()
        return [_kb(row) for row in rows]

    def delete_kb(self, kb_id: str) -> list[KbVersion]:
        """Forget the knowledge base and its versions; returns the versions (their files are the caller's)."""
        with self._write() as conn:
            versions = [_version(r) for r in conn.execute(sa.select(kb_versions).where(_V.kb_id == kb_id))
                        .mappings().all()]
            conn.execute(kb_versions.delete().where(_V.kb_id == kb_id))
            conn.execute(knowledge_bases.delete().where(_K.id == kb_id))
        return versions

    # -- versions

    def add_kb_version(self, kb_id: str, endpoint_id: str, stamp: dict[str, Any], path_of: Any,
                       table_of: Any) -> KbVersion:
        """A new Building version (the next number); ``path_of(version)`` and ``table_of(version)`` name its
        folder and pgvector table. ConflictError while another version is Building."""
        with self._write() as conn:
            building = conn.execute(sa.select(_V.version).where(_V.kb_id == kb_id, _V.status == VERSION_BUILDING)
                                    ).first()
            if building is not None:
                raise ConflictError(f"version {building[0]} of this knowledge base is being built: rerun its "
                                    "command to continue it, or delete it")
            number = (conn.execute(sa.select(sa.func.max(_V.version)).where(_V.kb_id == kb_id)).scalar() or 0) + 1
            stamp_text = json.dumps(stamp, sort_keys=True)
            version_id, at = new_id(), now()
            conn.execute(kb_versions.insert().values(
                id=version_id, kb_id=kb_id, version=number, endpoint_id=endpoint_id, status=VERSION_BUILDING,
                stamp=stamp_text, path=str(path_of(number)), table_name=str(table_of(number)), created_at=at,
                updated_at=at))
            return _version(conn.execute(sa.select(kb_versions).where(_V.id == version_id)).mappings().one())

    def kb_versions(self, kb_id: str) -> list[KbVersion]:
        rows = self._read_all(sa.select(kb_versions).where(_V.kb_id == kb_id).order_by(_V.version))
        return [_version(row) for row in rows]

    def get_kb_version(self, kb_id: str, version: int) -> KbVersion:
        row = self._read_one(sa.select(kb_versions).where(_V.kb_id == kb_id, _V.version == version))
        if row is None:
            raise NotFoundError(f"version {version} of the knowledge base not found")
        return _version(row)

    def current_kb_version(self, project_ref: str, kb_ref: str) -> tuple[KnowledgeBase, KbVersion]:
        """The knowledge base and its current version, read in one transaction (what one search uses);
        ConflictError when no version is complete yet."""
        with self._read() as conn:
            kb = self._get_kb(conn, project_ref, kb_ref)
            row = conn.execute(sa.select(kb_versions).where(_V.kb_id == kb.id, _V.version == kb.current_version)
                               ).mappings().first()
        if row is None:
            raise ConflictError(f"knowledge base {kb.name!r} has no complete version yet: rerun its `e5studio kb "
                                "create` to finish it")
        return kb, _version(row)

    def update_kb_version(self, version_id: str, *, status: str | None = None, reason: str | None = None,
                          documents: int | None = None, chunks: int | None = None,
                          fields: list[str] | None = None, bump: bool = False) -> None:
        values: dict[str, Any] = {"updated_at": now()}
        for name, value in (("status", status), ("status_reason", reason), ("documents", documents),
                            ("chunks", chunks)):
            if value is not None:
                values[name] = value
        if fields is not None:
            values["fields"] = json.dumps(sorted(set(fields)))
        if bump:
            values["generation"] = _V.generation + 1
        with self._write() as conn:
            conn.execute(kb_versions.update().where(_V.id == version_id).values(**values))

    def switch_kb_version(self, kb_id: str, version: int) -> None:
        """Make ``version`` (Ready) the one searches use, and the knowledge base's endpoint its endpoint, in
        one transaction."""
        with self._write() as conn:
            row = conn.execute(sa.select(_V.status, _V.endpoint_id).where(_V.kb_id == kb_id, _V.version == version)
                               ).first()
            if row is None or row[0] != VERSION_READY:
                raise ConflictError(f"version {version} is not ready; searches stay on the current version")
            conn.execute(knowledge_bases.update().where(_K.id == kb_id).values(current_version=version,
                                                                                endpoint_id=row[1]))

    def complete_kb_version(self, kb_id: str, version: int) -> None:
        """The Building ``version`` is complete: Ready and the one searches use, in one transaction (a crash
        leaves it either still Building, continued by a rerun, or searched)."""
        with self._write() as conn:
            updated = conn.execute(kb_versions.update().where(_V.kb_id == kb_id, _V.version == version,
                                                              _V.status == VERSION_BUILDING)
                                   .values(status=VERSION_READY, status_reason="", updated_at=now()))
            if updated.rowcount != 1:
                raise ConflictError(f"version {version} is not being built; searches stay on the current version")
            endpoint_id = conn.execute(sa.select(_V.endpoint_id).where(_V.kb_id == kb_id, _V.version == version)
                                       ).scalar()
            conn.execute(knowledge_bases.update().where(_K.id == kb_id).values(current_version=version,
                                                                                endpoint_id=endpoint_id))

    def delete_kb_version(self, kb_id: str, version: int) -> None:
        with self._write() as conn:
            current = conn.execute(sa.select(_K.current_version).where(_K.id == kb_id)).scalar()
            if current == version:
                raise ConflictError(f"version {version} is the one searches use; switch to another first")
            conn.execute(kb_versions.delete().where(_V.kb_id == kb_id, _V.version == version))
