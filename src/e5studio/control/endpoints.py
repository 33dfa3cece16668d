"""Endpoints (a model served under a project, with a status) and their keys (stored hashed, :mod:`.keys`)."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from e5studio.control.database import check_name, new_id, now
from e5studio.control.keys import ENDPOINT_KEY_PREFIX, display_prefix, hash_key, new_key, verify_key
from e5studio.control.projects import ProjectTable
from e5studio.errors import ConflictError, InputError, NotFoundError

DEPLOYING = "Deploying"
LIVE = "Live"
FAILED = "Failed"
STATUSES = (DEPLOYING, LIVE, FAILED)

BATCH_SIZES = (1, 32)
PRECISIONS = ("fp32", "int8")  # the engine's (e5studio.engine.runtimes.PRECISIONS); control imports no ML code

# a hash no key produces, compared against when an endpoint is missing so the answer takes the same time
_NO_HASH = "0" * 64
ENDPOINT_HINT = (": create one with `e5studio endpoints create PROJECT NAME` (or on the web UI's project page; "
                 "`e5studio endpoints list` shows them)")


@dataclass(frozen=True)
class Endpoint:
    id: str
    project_id: str
    project_name: str
    name: str
    description: str
    model: str
    batch_size: int
    created_at: str
    status: str
    status_reason: str
    key_prefix: str
    precision: str = "fp32"  # fixed at creation, like the batch size
    # JSON: the deploy gate's verdict when the model is a fine-tuning output (its evaluation sets against the
    # base model, whether it passed, whether the deployer forced it); "" for models that were not gated
    deploy_gate: str = ""


_ENDPOINT_SELECT = """
    SELECT e.id, e.project_id, p.name AS project_name, e.name, e.description, e.model, e.batch_size,
           e.created_at, e.status, e.status_reason, e.key_prefix, e.precision, e.deploy_gate
    FROM endpoints e JOIN projects p ON p.id = e.project_id
"""
_ENDPOINT_ORDER = " ORDER BY p.name, e.name"


def _check_batch_size(batch_size: int) -> None:
    if isinstance(batch_size, bool) or batch_size not in BATCH_SIZES:
        raise InputError(
            f"batch size must be 1 or 32, got {batch_size!r}: use 32 for vectorising a knowledge base "
            "(throughput over many texts per call), 1 for a live service (lowest latency per request)"
        )


def _endpoint(row: sqlite3.Row) -> Endpoint:
    return Endpoint(
        id=row["id"],
        project_id=row["project_id"],
        project_name=row["project_name"],
        name=row["name"],
        description=row["description"],
        model=row["model"],
        batch_size=row["batch_size"],
        created_at=row["created_at"],
        status=row["status"],
        status_reason=row["status_reason"],
        key_prefix=row["key_prefix"],
        precision=row["precision"],
        deploy_gate=row["deploy_gate"],
    )


def _check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise InputError(f"precision must be fp32 or int8, got {precision!r}: int8 runs every dense layer in int8 "
                         "on the CPU (faster, vectors within cosine 0.99 of fp32)")


class EndpointTable(ProjectTable):
    """Endpoints of projects, with one key each (returned in clear once, when created or rotated)."""

    def create_endpoint(
        self, project_ref: str, name: str, model: str, batch_size: int, description: str = "",
        precision: str = "fp32", deploy_gate: str = "",
    ) -> tuple[Endpoint, str]:
        """Create an endpoint in status Deploying; return it with its key, in clear this once only."""
        check_name("endpoint", name)
        _check_batch_size(batch_size)
        _check_precision(precision)
        if not isinstance(model, str) or not model.strip():
            raise InputError("model must be a non-empty model id or path")
        key = new_key(ENDPOINT_KEY_PREFIX)
        with self._write() as conn:
            project = self._get_project(conn, project_ref)
            taken = conn.execute(
                "SELECT 1 FROM endpoints WHERE project_id = ? AND name = ?", (project.id, name)
            ).fetchone()
            if taken:
                raise ConflictError(f"endpoint {name!r} already exists in project {project.name!r}")
            endpoint = Endpoint(
                id=new_id(),
                project_id=project.id,
                project_name=project.name,
                name=name,
                description=description,
                model=model,
                batch_size=batch_size,
                created_at=now(),
                status=DEPLOYING,
                status_reason="",
                key_prefix=display_prefix(key),
                precision=precision,
                deploy_gate=deploy_gate,
            )
            conn.execute(
                "INSERT INTO endpoints (id, project_id, name, description, model, batch_size, created_at,"
                " status, status_reason, key_hash, key_prefix, precision, deploy_gate)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    endpoint.id,
                    endpoint.project_id,
                    endpoint.name,
                    endpoint.description,
                    endpoint.model,
                    endpoint.batch_size,
                    endpoint.created_at,
                    endpoint.status,
                    endpoint.status_reason,
                    hash_key(key),
                    endpoint.key_prefix,
                    endpoint.precision,
                    endpoint.deploy_gate,
                ),
            )
        return endpoint, key

    def list_endpoints(self, project_ref: str | None = None) -> list[Endpoint]:
        """All endpoints, or those of one project, ordered by project name then endpoint name."""
        with self._lock:
            if project_ref is None:
                rows = self._conn.execute(_ENDPOINT_SELECT + _ENDPOINT_ORDER).fetchall()
            else:
                project = self._get_project(self._conn, project_ref)
                rows = self._conn.execute(
                    _ENDPOINT_SELECT + " WHERE e.project_id = ?" + _ENDPOINT_ORDER, (project.id,)
                ).fetchall()
        return [_endpoint(row) for row in rows]

    def get_endpoint(self, project_ref: str, endpoint_ref: str) -> Endpoint:
        """The endpoint ``endpoint_ref`` (id or name) of project ``project_ref`` (id or name)."""
        with self._lock:
            project = self._get_project(self._conn, project_ref)
            row = self._conn.execute(
                _ENDPOINT_SELECT + " WHERE e.project_id = ? AND (e.id = ? OR e.name = ?)"
                " ORDER BY e.id = ? DESC LIMIT 1",
                (project.id, endpoint_ref, endpoint_ref, endpoint_ref),
            ).fetchone()
        if row is None:
            raise NotFoundError(f"endpoint {endpoint_ref!r} not found in project {project.name!r}{ENDPOINT_HINT}")
        return _endpoint(row)

    def get_endpoint_by_id(self, endpoint_id: str) -> Endpoint:
        with self._lock:
            return self._get_endpoint_by_id(self._conn, endpoint_id)

    @staticmethod
    def _get_endpoint_by_id(conn: sqlite3.Connection, endpoint_id: str) -> Endpoint:
        row = conn.execute(_ENDPOINT_SELECT + " WHERE e.id = ?", (endpoint_id,)).fetchone()
        if row is None:
            raise NotFoundError(f"endpoint {endpoint_id!r} not found{ENDPOINT_HINT}")
        return _endpoint(row)

    def find_endpoint(self, ref: str) -> Endpoint:
        """The endpoint with id ``ref``, else the one endpoint named ``ref`` in any project."""
        with self._lock:
            row = self._conn.execute(_ENDPOINT_SELECT + " WHERE e.id = ?", (ref,)).fetchone()
            if row is not None:
                return _endpoint(row)
            rows = self._conn.execute(_ENDPOINT_SELECT + " WHERE e.name = ?" + _ENDPOINT_ORDER, (ref,)).fetchall()
        if not rows:
            raise NotFoundError(f"endpoint {ref!r} not found{ENDPOINT_HINT}")
        if len(rows) > 1:
            places = ", ".join(f"{row['project_name']} (id {row['id']})" for row in rows)
            raise InputError(f"endpoint name {ref!r} is used in several projects: {places}; use the endpoint id")
        return _endpoint(rows[0])

    def set_status(self, endpoint_id: str, status: str, reason: str = "") -> None:
        if status not in STATUSES:
            raise InputError(f"unknown endpoint status {status!r}; expected one of {', '.join(STATUSES)}")
        with self._write() as conn:
            updated = conn.execute(
                "UPDATE endpoints SET status = ?, status_reason = ? WHERE id = ?", (status, reason, endpoint_id)
            )
            if updated.rowcount == 0:
                raise NotFoundError(f"endpoint {endpoint_id!r} not found{ENDPOINT_HINT}")

    def delete_endpoint(self, endpoint_id: str) -> None:
        with self._write() as conn:
            if conn.execute("DELETE FROM endpoints WHERE id = ?", (endpoint_id,)).rowcount == 0:
                raise NotFoundError(f"endpoint {endpoint_id!r} not found{ENDPOINT_HINT}")

    # -- endpoint keys -----------------------------------------------------------------------------

    def rotate_key(self, endpoint_id: str) -> str:
        """Give the endpoint a new key and return it in clear; the old key stops working at once."""
        key = new_key(ENDPOINT_KEY_PREFIX)
        with self._write() as conn:
            updated = conn.execute(
                "UPDATE endpoints SET key_hash = ?, key_prefix = ? WHERE id = ?",
                (hash_key(key), display_prefix(key), endpoint_id),
            )
            if updated.rowcount == 0:
                raise NotFoundError(f"endpoint {endpoint_id!r} not found{ENDPOINT_HINT}")
        return key

    def check_endpoint_key(self, endpoint_id: str, key: str) -> bool:
        """Whether ``key`` is the current key of the endpoint (False for an unknown endpoint)."""
        with self._lock:
            row = self._conn.execute("SELECT key_hash FROM endpoints WHERE id = ?", (endpoint_id,)).fetchone()
        return verify_key(key, row["key_hash"] if row is not None else _NO_HASH) and row is not None
