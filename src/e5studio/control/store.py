"""The control store: projects, endpoints and their keys, admin tokens, datasets, jobs (with their leases), web
sessions, failed logins and the replicas sharing it, in one database: the embedded SQLite file by default, or a
PostgreSQL database that several servers share (``--store postgres://...``).

Each entity has its own module (:mod:`.projects`, :mod:`.endpoints`, :mod:`.admin_tokens`, :mod:`.datasets`,
:mod:`.job_records`, :mod:`.web_sessions`, :mod:`.login_failures`, :mod:`.replicas`) over one
:class:`~.database.Database`; :class:`Store` is all of them together, safe to share between the threads of a
server. Keys are returned in clear exactly once, when created or rotated; only their SHA-256 hash and a short
display prefix are stored (:mod:`.keys`).

Every ``*_ref`` argument is an id or a name: ids are tried first, then names.
"""

from __future__ import annotations

from pathlib import Path
from typing import Self

from e5studio.control.admin_tokens import AdminTokenTable
from e5studio.control.database import NAME_PATTERN
from e5studio.control.datasets import Dataset, DatasetTable
from e5studio.control.endpoints import BATCH_SIZES, DEPLOYING, FAILED, LIVE, STATUSES, Endpoint, EndpointTable
from e5studio.control.job_records import (
    JOB_CANCELLED,
    JOB_FAILED,
    JOB_FINAL_STATUSES,
    JOB_INTERRUPTED,
    JOB_OWNER_CLI,
    JOB_OWNER_SERVER,
    JOB_QUEUED,
    JOB_RESUMABLE_STATUSES,
    JOB_RUNNING,
    JOB_STATUSES,
    JOB_SUCCEEDED,
    JobRecord,
    JobTable,
)
from e5studio.control.knowledge_bases import KbVersion, KnowledgeBase, KnowledgeBaseTable
from e5studio.control.login_failures import LoginFailureTable
from e5studio.control.projects import Project
from e5studio.control.replicas import Readiness, Replica, ReplicaTable
from e5studio.control.web_sessions import WebSessionTable
from e5studio.settings import StoreTimeouts


class Store(KnowledgeBaseTable, EndpointTable, AdminTokenTable, DatasetTable, JobTable, WebSessionTable,
            LoginFailureTable, ReplicaTable):
    """Everything the control plane records, in one SQLite or PostgreSQL database; thread-safe.

    ``Store(target)``: a file path, ``:memory:``, ``sqlite:///PATH`` or ``postgres://USER@HOST/DB``; the
    migrations this code knows are applied on open (:mod:`.migrations`).
    """

    @classmethod
    def open(cls, target: str | Path, *, migrate: bool = True, timeouts: StoreTimeouts | None = None) -> Self:
        """The store at ``target`` (see the class); ``migrate=False`` applies nothing but still refuses a
        schema newer than this code (SchemaError); ``timeouts``: the bounds on its calls (default: the defaults)."""
        return cls(target, migrate=migrate, timeouts=timeouts)


__all__ = [
    "BATCH_SIZES", "DEPLOYING", "FAILED", "JOB_CANCELLED", "JOB_FAILED", "JOB_FINAL_STATUSES", "JOB_INTERRUPTED",
    "JOB_OWNER_CLI", "JOB_OWNER_SERVER", "JOB_QUEUED", "JOB_RESUMABLE_STATUSES", "JOB_RUNNING", "JOB_STATUSES",
    "JOB_SUCCEEDED", "LIVE", "NAME_PATTERN", "STATUSES", "Dataset", "Endpoint", "JobRecord", "Project", "Readiness",
    "Replica", "Store", "KbVersion", "KnowledgeBase",
]
