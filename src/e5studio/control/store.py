"""The control store: projects, endpoints, endpoint keys, admin tokens, datasets and jobs in one SQLite database.

One :class:`Store` holds one connection (``check_same_thread=False``) guarded by a lock, so it can be
shared by the threads of a server. Writes run in ``BEGIN IMMEDIATE`` transactions; file databases use
WAL mode so readers in other processes are not blocked. Keys are returned in clear exactly once, when
created or rotated; only their SHA-256 hash and a short display prefix are stored (:mod:`.keys`).

Every ``*_ref`` argument is an id or a name: ids are tried first, then names.
"""

from __future__ import annotations

import json
import re
import secrets
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType
from typing import Any

from e5studio.control.keys import ADMIN_TOKEN_PREFIX, ENDPOINT_KEY_PREFIX, display_prefix, hash_key, new_key, verify_key
from e5studio.control.migrations import apply_migrations
from e5studio.errors import ConflictError, InputError, NotFoundError

DEPLOYING = "Deploying"
LIVE = "Live"
FAILED = "Failed"
STATUSES = (DEPLOYING, LIVE, FAILED)

BATCH_SIZES = (1, 32)
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
_NAME_RE = re.compile(NAME_PATTERN)
_BUSY_TIMEOUT_S = 30.0

# a hash no key produces, compared against when an endpoint is missing so the answer takes the same time
_NO_HASH = "0" * 64


@dataclass(frozen=True)
class Project:
    id: str
    name: str
    description: str
    created_at: str


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


@dataclass(frozen=True)
class Dataset:
    """One registered version of a fine-tuning dataset (passages.jsonl + train.jsonl in ``path``)."""

    id: str
    name: str
    version: int
    path: str
    description: str
    passages: int
    queries: int
    positives: int
    negatives: int
    passages_sha256: str
    train_sha256: str
    parent_id: str | None
    created_at: str

    @property
    def ref(self) -> str:
        """``name@version``, accepted wherever a dataset is named."""
        return f"{self.name}@{self.version}"


JOB_RUNNING = "Running"  # a process works on it (or is about to)
JOB_SUCCEEDED = "Succeeded"  # finished; its outputs are complete
JOB_FAILED = "Failed"  # stopped by an error (status_reason says which); resumable
JOB_INTERRUPTED = "Interrupted"  # stopped by Ctrl-C, a server shutdown or restart; resumable
JOB_CANCELLED = "Cancelled"  # stopped on request (recorded before the process is signalled); resumable
JOB_STATUSES = (JOB_RUNNING, JOB_SUCCEEDED, JOB_FAILED, JOB_INTERRUPTED, JOB_CANCELLED)
JOB_FINAL_STATUSES = (JOB_SUCCEEDED, JOB_FAILED, JOB_INTERRUPTED, JOB_CANCELLED)
JOB_RESUMABLE_STATUSES = (JOB_FAILED, JOB_INTERRUPTED, JOB_CANCELLED)

JOB_OWNER_SERVER = "server"  # started by the server's JobRunner (runner_id, runner_pid name that runner)
JOB_OWNER_CLI = "cli"  # started by a command (`e5studio train`) in a terminal


@dataclass(frozen=True)
class Job:
    """A long-running job (kind ``train`` or ``batch_embed``): its inputs, status, progress, metrics, process.

    ``pid`` is the process working on it while one does (None otherwise); ``owner`` says who started that
    process (``server``, ``cli``, or ``""`` for jobs recorded before processes were); ``runner_id`` and
    ``runner_pid`` name the server runner that owns a ``server`` job; ``log_path`` is its combined output.
    """

    id: str
    kind: str
    dataset_id: str | None
    model: str
    output: str
    params: dict[str, Any] = field(hash=False)
    status: str = JOB_RUNNING
    status_reason: str = ""
    step: int = 0
    total_steps: int = 0
    metrics: dict[str, Any] = field(default_factory=dict, hash=False)
    created_at: str = ""
    updated_at: str = ""
    pid: int | None = None
    log_path: str = ""
    owner: str = ""
    runner_id: str = ""
    runner_pid: int = 0

    @property
    def finished(self) -> bool:
        """Whether the job is in a final status (no process should be working on it)."""
        return self.status in JOB_FINAL_STATUSES

    @property
    def progress(self) -> float:
        """Share of steps done, 0.0 to 1.0."""
        return self.step / self.total_steps if self.total_steps else 0.0


def _dataset(row: sqlite3.Row) -> Dataset:
    return Dataset(**{k: row[k] for k in row.keys()})  # noqa: SIM118 - sqlite3.Row has no __iter__ of keys


def _job(row: sqlite3.Row) -> Job:
    values = {k: row[k] for k in row.keys()}  # noqa: SIM118
    values["params"] = json.loads(values["params"])
    values["metrics"] = json.loads(values["metrics"])
    return Job(**values)


_ENDPOINT_SELECT = """
    SELECT e.id, e.project_id, p.name AS project_name, e.name, e.description, e.model, e.batch_size,
           e.created_at, e.status, e.status_reason, e.key_prefix
    FROM endpoints e JOIN projects p ON p.id = e.project_id
"""
_ENDPOINT_ORDER = " ORDER BY p.name, e.name"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


def _new_id() -> str:
    return secrets.token_hex(8)


def _check_name(kind: str, name: str) -> None:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise InputError(
            f"invalid {kind} name {name!r}: use 1-64 characters, letters, digits, '_', '.' or '-', "
            f"starting with a letter or digit (pattern {NAME_PATTERN})"
        )


def _check_batch_size(batch_size: int) -> None:
    if isinstance(batch_size, bool) or batch_size not in BATCH_SIZES:
        raise InputError(
            f"batch size must be 1 or 32, got {batch_size!r}: use 32 for vectorising a knowledge base "
            "(throughput over many texts per call), 1 for a live service (lowest latency per request)"
        )


def _project(row: sqlite3.Row) -> Project:
    return Project(id=row["id"], name=row["name"], description=row["description"], created_at=row["created_at"])


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
    )


class Store:
    """Projects, endpoints and keys in SQLite; safe to share between threads."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        in_memory = self.path == ":memory:"
        if not in_memory:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(self.path, timeout=_BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
        try:
            self._conn.row_factory = sqlite3.Row
            self._conn.execute("PRAGMA foreign_keys = ON")
            if not in_memory:
                self._conn.execute("PRAGMA journal_mode = WAL")
            apply_migrations(self._conn)
        except BaseException:
            self._conn.close()
            raise

    # -- lifecycle ---------------------------------------------------------------------------------

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction under the lock: committed on success, rolled back on any error."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def _read_all(self, sql: str, params: tuple[object, ...] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._conn.execute(sql, params).fetchall()

    # -- projects ----------------------------------------------------------------------------------

    def create_project(self, name: str, description: str = "") -> Project:
        _check_name("project", name)
        project = Project(id=_new_id(), name=name, description=description, created_at=_now())
        with self._write() as conn:
            if conn.execute("SELECT 1 FROM projects WHERE name = ?", (name,)).fetchone():
                raise ConflictError(f"project {name!r} already exists")
            conn.execute(
                "INSERT INTO projects (id, name, description, created_at) VALUES (?, ?, ?, ?)",
                (project.id, project.name, project.description, project.created_at),
            )
        return project

    def list_projects(self) -> list[Project]:
        return [_project(row) for row in self._read_all("SELECT * FROM projects ORDER BY name")]

    def get_project(self, ref: str) -> Project:
        with self._lock:
            return self._get_project(self._conn, ref)

    @staticmethod
    def _get_project(conn: sqlite3.Connection, ref: str) -> Project:
        row = conn.execute(
            "SELECT * FROM projects WHERE id = ? OR name = ? ORDER BY id = ? DESC LIMIT 1", (ref, ref, ref)
        ).fetchone()
        if row is None:
            raise NotFoundError(f"project {ref!r} not found")
        return _project(row)

    # -- endpoints ---------------------------------------------------------------------------------

    def create_endpoint(
        self, project_ref: str, name: str, model: str, batch_size: int, description: str = ""
    ) -> tuple[Endpoint, str]:
        """Create an endpoint in status Deploying; return it with its key, in clear this once only."""
        _check_name("endpoint", name)
        _check_batch_size(batch_size)
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
                id=_new_id(),
                project_id=project.id,
                project_name=project.name,
                name=name,
                description=description,
                model=model,
                batch_size=batch_size,
                created_at=_now(),
                status=DEPLOYING,
                status_reason="",
                key_prefix=display_prefix(key),
            )
            conn.execute(
                "INSERT INTO endpoints (id, project_id, name, description, model, batch_size, created_at,"
                " status, status_reason, key_hash, key_prefix) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
            raise NotFoundError(f"endpoint {endpoint_ref!r} not found in project {project.name!r}")
        return _endpoint(row)

    def get_endpoint_by_id(self, endpoint_id: str) -> Endpoint:
        with self._lock:
            return self._get_endpoint_by_id(self._conn, endpoint_id)

    @staticmethod
    def _get_endpoint_by_id(conn: sqlite3.Connection, endpoint_id: str) -> Endpoint:
        row = conn.execute(_ENDPOINT_SELECT + " WHERE e.id = ?", (endpoint_id,)).fetchone()
        if row is None:
            raise NotFoundError(f"endpoint {endpoint_id!r} not found")
        return _endpoint(row)

    def find_endpoint(self, ref: str) -> Endpoint:
        """The endpoint with id ``ref``, else the one endpoint named ``ref`` in any project."""
        with self._lock:
            row = self._conn.execute(_ENDPOINT_SELECT + " WHERE e.id = ?", (ref,)).fetchone()
            if row is not None:
                return _endpoint(row)
            rows = self._conn.execute(_ENDPOINT_SELECT + " WHERE e.name = ?" + _ENDPOINT_ORDER, (ref,)).fetchall()
        if not rows:
            raise NotFoundError(f"endpoint {ref!r} not found")
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
                raise NotFoundError(f"endpoint {endpoint_id!r} not found")

    def delete_endpoint(self, endpoint_id: str) -> None:
        with self._write() as conn:
            if conn.execute("DELETE FROM endpoints WHERE id = ?", (endpoint_id,)).rowcount == 0:
                raise NotFoundError(f"endpoint {endpoint_id!r} not found")

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
                raise NotFoundError(f"endpoint {endpoint_id!r} not found")
        return key

    def check_endpoint_key(self, endpoint_id: str, key: str) -> bool:
        """Whether ``key`` is the current key of the endpoint (False for an unknown endpoint)."""
        with self._lock:
            row = self._conn.execute("SELECT key_hash FROM endpoints WHERE id = ?", (endpoint_id,)).fetchone()
        return verify_key(key, row["key_hash"] if row is not None else _NO_HASH) and row is not None

    # -- admin tokens ------------------------------------------------------------------------------

    def ensure_admin_token(self) -> str | None:
        """Create the admin token on first start and return it in clear; None when one already exists."""
        token = new_key(ADMIN_TOKEN_PREFIX)
        with self._write() as conn:
            if conn.execute("SELECT 1 FROM admin_tokens LIMIT 1").fetchone():
                return None
            conn.execute(
                "INSERT INTO admin_tokens (id, token_hash, created_at) VALUES (?, ?, ?)",
                (_new_id(), hash_key(token), _now()),
            )
        return token

    def check_admin_token(self, token: str) -> bool:
        """Whether ``token`` is a current admin token; every stored hash is compared in constant time."""
        hashes = [row["token_hash"] for row in self._read_all("SELECT token_hash FROM admin_tokens")]
        matches = [verify_key(token, stored) for stored in hashes]
        return any(matches)

    def rotate_admin_token(self) -> str:
        """Replace every admin token with a new one and return it in clear."""
        token = new_key(ADMIN_TOKEN_PREFIX)
        with self._write() as conn:
            conn.execute("DELETE FROM admin_tokens")
            conn.execute(
                "INSERT INTO admin_tokens (id, token_hash, created_at) VALUES (?, ?, ?)",
                (_new_id(), hash_key(token), _now()),
            )
        return token

    # -- datasets ----------------------------------------------------------------------------------

    def add_dataset(self, name: str, path: str, *, passages: int, queries: int, positives: int, negatives: int,
                    passages_sha256: str, train_sha256: str, parent_id: str | None = None,
                    description: str = "") -> Dataset:
        """Record a validated dataset as the next version of ``name`` (version 1 for a new name).

        Registering the same files (path and both checksums) as the newest version returns that version.
        """
        _check_name("dataset", name)
        with self._write() as conn:
            latest = conn.execute("SELECT * FROM datasets WHERE name = ? ORDER BY version DESC LIMIT 1",
                                  (name,)).fetchone()
            if latest is not None and (latest["path"], latest["passages_sha256"], latest["train_sha256"]) == (
                    path, passages_sha256, train_sha256):
                return _dataset(latest)
            dataset = Dataset(id=_new_id(), name=name, version=(latest["version"] + 1) if latest else 1, path=path,
                              description=description, passages=passages, queries=queries, positives=positives,
                              negatives=negatives, passages_sha256=passages_sha256, train_sha256=train_sha256,
                              parent_id=parent_id, created_at=_now())
            conn.execute(
                "INSERT INTO datasets (id, name, version, path, description, passages, queries, positives, negatives,"
                " passages_sha256, train_sha256, parent_id, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (dataset.id, dataset.name, dataset.version, dataset.path, dataset.description, dataset.passages,
                 dataset.queries, dataset.positives, dataset.negatives, dataset.passages_sha256,
                 dataset.train_sha256, dataset.parent_id, dataset.created_at),
            )
        return dataset

    def get_dataset(self, ref: str) -> Dataset:
        """A dataset by id, by ``name@version``, or by name (its newest version)."""
        name, _, version = ref.rpartition("@") if "@" in ref else (ref, "", "")
        with self._lock:
            row = self._conn.execute("SELECT * FROM datasets WHERE id = ?", (ref,)).fetchone()
            if row is None and version:
                if not version.isdigit():
                    raise InputError(f"dataset reference {ref!r}: the version after '@' must be a number")
                row = self._conn.execute("SELECT * FROM datasets WHERE name = ? AND version = ?",
                                         (name, int(version))).fetchone()
            elif row is None:
                row = self._conn.execute("SELECT * FROM datasets WHERE name = ? ORDER BY version DESC LIMIT 1",
                                         (name,)).fetchone()
        if row is None:
            raise NotFoundError(f"dataset {ref!r} not found (see `e5studio datasets list`)")
        return _dataset(row)

    def list_datasets(self) -> list[Dataset]:
        """Every version of every dataset, by name then version."""
        return [_dataset(row) for row in self._read_all("SELECT * FROM datasets ORDER BY name, version")]

    # -- jobs --------------------------------------------------------------------------------------

    @staticmethod
    def new_job_id() -> str:
        """A fresh job id, for callers that must name the job's folders before recording it."""
        return _new_id()

    def create_job(self, kind: str, model: str, output: str, params: dict[str, Any],
                   dataset_id: str | None = None, *, job_id: str | None = None, owner: str = "",
                   log_path: str = "", runner_id: str = "", runner_pid: int = 0) -> Job:
        """Record a job in status Running (with ``job_id`` from :meth:`new_job_id`, or a new id)."""
        now = _now()
        job = Job(id=job_id or _new_id(), kind=kind, dataset_id=dataset_id, model=model, output=output,
                  params=dict(params), created_at=now, updated_at=now, log_path=log_path, owner=owner,
                  runner_id=runner_id, runner_pid=runner_pid)
        with self._write() as conn:
            if dataset_id is not None and conn.execute("SELECT 1 FROM datasets WHERE id = ?",
                                                       (dataset_id,)).fetchone() is None:
                raise NotFoundError(f"dataset {dataset_id!r} not found")
            if conn.execute("SELECT 1 FROM jobs WHERE id = ?", (job.id,)).fetchone() is not None:
                raise ConflictError(f"job {job.id!r} already exists")
            conn.execute(
                "INSERT INTO jobs (id, kind, dataset_id, model, output, params, status, status_reason, step,"
                " total_steps, metrics, created_at, updated_at, pid, log_path, owner, runner_id, runner_pid)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (job.id, job.kind, job.dataset_id, job.model, job.output, json.dumps(job.params), job.status,
                 job.status_reason, job.step, job.total_steps, json.dumps(job.metrics), job.created_at,
                 job.updated_at, job.pid, job.log_path, job.owner, job.runner_id, job.runner_pid),
            )
        return job

    def update_job(self, job_id: str, *, status: str | None = None, status_reason: str | None = None,
                   step: int | None = None, total_steps: int | None = None,
                   metrics: dict[str, Any] | None = None) -> Job:
        """Change the given fields of a job (``metrics`` is merged into the stored ones); returns the job."""
        if status is not None and status not in JOB_STATUSES:
            raise InputError(f"unknown job status {status!r}; expected one of {', '.join(JOB_STATUSES)}")
        with self._write() as conn:
            row = conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                raise NotFoundError(f"job {job_id!r} not found")
            job = _job(row)
            merged = {**job.metrics, **(metrics or {})}
            values = (status or job.status, job.status_reason if status_reason is None else status_reason,
                      job.step if step is None else step, job.total_steps if total_steps is None else total_steps,
                      json.dumps(merged), _now(), job_id)
            conn.execute("UPDATE jobs SET status = ?, status_reason = ?, step = ?, total_steps = ?, metrics = ?,"
                         " updated_at = ? WHERE id = ?", values)
            return _job(conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone())

    def transition_job(self, job_id: str, from_statuses: tuple[str, ...], status: str, status_reason: str) -> bool:
        """Set ``status`` (and its reason) only if the job is now in one of ``from_statuses``; whether it was.

        The check and the change are one transaction, so two processes deciding a job's fate (a cancel
        and the job's own ending, say) never overwrite each other.
        """
        if status not in JOB_STATUSES:
            raise InputError(f"unknown job status {status!r}; expected one of {', '.join(JOB_STATUSES)}")
        marks = ", ".join("?" for _ in from_statuses) or "NULL"
        with self._write() as conn:
            if conn.execute("SELECT 1 FROM jobs WHERE id = ?", (job_id,)).fetchone() is None:
                raise NotFoundError(f"job {job_id!r} not found")
            updated = conn.execute(f"UPDATE jobs SET status = ?, status_reason = ?, updated_at = ? WHERE id = ?"
                                   f" AND status IN ({marks})", (status, status_reason, _now(), job_id,
                                                                 *from_statuses))
            return updated.rowcount == 1

    def set_job_process(self, job_id: str, pid: int | None, *, owner: str | None = None,
                        runner_id: str | None = None, runner_pid: int | None = None) -> Job:
        """Record the process working on a job (``pid`` None: none now); owner fields change only where given."""
        with self._write() as conn:
            row = conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                raise NotFoundError(f"job {job_id!r} not found")
            job = _job(row)
            conn.execute("UPDATE jobs SET pid = ?, owner = ?, runner_id = ?, runner_pid = ? WHERE id = ?",
                         (pid, job.owner if owner is None else owner,
                          job.runner_id if runner_id is None else runner_id,
                          job.runner_pid if runner_pid is None else runner_pid, job_id))
            return _job(conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone())

    def get_job(self, job_id: str) -> Job:
        with self._lock:
            row = self._conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise NotFoundError(f"job {job_id!r} not found")
        return _job(row)

    def list_jobs(self, kind: str | None = None, *, status: str | None = None) -> list[Job]:
        """Jobs, newest first (all kinds, or one; all statuses, or one)."""
        where = [(clause, value) for clause, value in (("kind = ?", kind), ("status = ?", status)) if value is not None]
        sql = "SELECT * FROM jobs" + (" WHERE " + " AND ".join(c for c, _ in where) if where else "")
        rows = self._read_all(sql + " ORDER BY created_at DESC, rowid DESC", tuple(v for _, v in where))
        return [_job(row) for row in rows]

    def latest_job_for_output(self, kind: str, output: str) -> Job | None:
        """The newest job of ``kind`` writing to ``output`` (what ``--resume`` continues), or None."""
        rows = self._read_all("SELECT * FROM jobs WHERE kind = ? AND output = ? ORDER BY created_at DESC, rowid DESC"
                              " LIMIT 1", (kind, output))
        return _job(rows[0]) if rows else None
