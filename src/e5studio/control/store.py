"""The control store: projects, endpoints and their keys, admin tokens, datasets and jobs in one SQLite database.

Each entity has its own module (:mod:`.projects`, :mod:`.endpoints`, :mod:`.admin_tokens`, :mod:`.datasets`,
:mod:`.job_records`) over one :class:`~.database.Database`; :class:`Store` is all of them together, safe to
share between the threads of a server. Keys are returned in clear exactly once, when created or rotated;
only their SHA-256 hash and a short display prefix are stored (:mod:`.keys`).

Every ``*_ref`` argument is an id or a name: ids are tried first, then names.
"""

from __future__ import annotations

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
    JOB_RESUMABLE_STATUSES,
    JOB_RUNNING,
    JOB_STATUSES,
    JOB_SUCCEEDED,
    JobRecord,
    JobTable,
)
from e5studio.control.projects import Project


class Store(EndpointTable, AdminTokenTable, DatasetTable, JobTable):
    """Projects, endpoints, keys, admin tokens, datasets and jobs in one SQLite database; thread-safe."""


__all__ = [
    "BATCH_SIZES", "DEPLOYING", "FAILED", "JOB_CANCELLED", "JOB_FAILED", "JOB_FINAL_STATUSES", "JOB_INTERRUPTED",
    "JOB_OWNER_CLI", "JOB_OWNER_SERVER", "JOB_RESUMABLE_STATUSES", "JOB_RUNNING", "JOB_STATUSES", "JOB_SUCCEEDED",
    "LIVE", "NAME_PATTERN", "STATUSES", "Dataset", "Endpoint", "JobRecord", "Project", "Store",
]
