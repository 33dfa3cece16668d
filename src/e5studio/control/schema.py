"""The control store's tables as SQLAlchemy Core metadata: the schema at the newest migration, what the
statements of the store are written against. The migrations (:mod:`.migrations`, ``alembic/versions/``) are
the history that builds it; ``tests/control/test_migrations.py`` checks that both agree.

Timestamps of records are ISO 8601 text (UTC, as the store always wrote them); times that are compared
(expiries, leases, heartbeats) are seconds since the epoch (``time.time()`` of the writer: replicas need
synchronised clocks, as every lease does). Names sort and compare bytewise on both databases (PostgreSQL
columns use the ``C`` collation, SQLite's default is binary).
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

metadata = sa.MetaData()


def name_type() -> sa.types.TypeEngine[str]:
    """Text that sorts bytewise on PostgreSQL too (as SQLite's default collation does)."""
    return sa.Text().with_variant(postgresql.TEXT(collation="C"), "postgresql")


projects = sa.Table(
    "projects", metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("name", name_type(), nullable=False, unique=True),
    sa.Column("description", sa.Text, nullable=False, server_default=""),
    sa.Column("created_at", sa.Text, nullable=False),
)

endpoints = sa.Table(
    "endpoints", metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("project_id", sa.Text, sa.ForeignKey("projects.id"), nullable=False),
    sa.Column("name", name_type(), nullable=False),
    sa.Column("description", sa.Text, nullable=False, server_default=""),
    sa.Column("model", sa.Text, nullable=False),
    sa.Column("batch_size", sa.Integer, nullable=False),
    sa.Column("created_at", sa.Text, nullable=False),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("status_reason", sa.Text, nullable=False, server_default=""),
    sa.Column("key_hash", sa.Text, nullable=False),
    sa.Column("key_prefix", sa.Text, nullable=False),
    sa.Column("precision", sa.Text, nullable=False, server_default="fp32"),
    sa.Column("deploy_gate", sa.Text, nullable=False, server_default=""),
    sa.Column("input_type", sa.Text, nullable=False, server_default="none"),  # 0010: the default E5 prefix role
    sa.UniqueConstraint("project_id", "name"),
    sa.CheckConstraint("batch_size IN (1, 32)"),
    sa.Index("endpoints_by_name", "name"),
)

admin_tokens = sa.Table(
    "admin_tokens", metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("token_hash", sa.Text, nullable=False),
    sa.Column("created_at", sa.Text, nullable=False),
)

datasets = sa.Table(
    "datasets", metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("name", name_type(), nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("path", sa.Text, nullable=False),
    sa.Column("description", sa.Text, nullable=False, server_default=""),
    sa.Column("passages", sa.Integer, nullable=False),
    sa.Column("queries", sa.Integer, nullable=False),
    sa.Column("positives", sa.Integer, nullable=False),
    sa.Column("negatives", sa.Integer, nullable=False),
    sa.Column("passages_sha256", sa.Text, nullable=False),
    sa.Column("train_sha256", sa.Text, nullable=False),
    sa.Column("parent_id", sa.Text, sa.ForeignKey("datasets.id")),
    sa.Column("created_at", sa.Text, nullable=False),
    sa.UniqueConstraint("name", "version"),
    sa.CheckConstraint("version >= 1"),
)

jobs = sa.Table(
    "jobs", metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("kind", sa.Text, nullable=False),
    sa.Column("dataset_id", sa.Text, sa.ForeignKey("datasets.id")),
    sa.Column("model", sa.Text, nullable=False),
    sa.Column("output", sa.Text, nullable=False),
    sa.Column("params", sa.Text, nullable=False, server_default="{}"),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("status_reason", sa.Text, nullable=False, server_default=""),
    sa.Column("step", sa.Integer, nullable=False, server_default="0"),
    sa.Column("total_steps", sa.Integer, nullable=False, server_default="0"),
    sa.Column("metrics", sa.Text, nullable=False, server_default="{}"),
    sa.Column("created_at", sa.Text, nullable=False),
    sa.Column("updated_at", sa.Text, nullable=False),
    # 0003: the process working on the job and who owns it
    sa.Column("pid", sa.Integer),
    sa.Column("log_path", sa.Text, nullable=False, server_default=""),
    sa.Column("owner", sa.Text, nullable=False, server_default=""),
    sa.Column("runner_id", sa.Text, nullable=False, server_default=""),
    sa.Column("runner_pid", sa.Integer, nullable=False, server_default="0"),
    # 0008: the lease of the runner (server replica) working on a Running job, and the host it runs on
    sa.Column("lease_owner", sa.Text, nullable=False, server_default=""),
    sa.Column("lease_expires_at", sa.Float),
    sa.Column("runner_host", sa.Text, nullable=False, server_default=""),
    sa.Index("jobs_by_output", "output"),
    sa.Index("jobs_by_status", "status"),
)

# 0006: web UI sessions (only a hash of each session id; flashes encrypted with a key the store never sees)
web_sessions = sa.Table(
    "web_sessions", metadata,
    sa.Column("id_hash", sa.Text, primary_key=True),
    sa.Column("expires_at", sa.Float, nullable=False),
    sa.Column("flashes", sa.Text, nullable=False, server_default="{}"),
    sa.Index("web_sessions_by_expiry", "expires_at"),
)

# 0007: failed logins per client address (the admin API and the web login share them)
login_failures = sa.Table(
    "login_failures", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("address", sa.Text, nullable=False),
    sa.Column("failed_at", sa.Float, nullable=False),
    sa.Index("login_failures_by_address", "address", "failed_at"),
    sa.Index("login_failures_by_time", "failed_at"),
)

# 0009: the servers (replicas) sharing the store, their heartbeat and what each has loaded
replicas = sa.Table(
    "replicas", metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("host", sa.Text, nullable=False, server_default=""),
    sa.Column("pid", sa.Integer, nullable=False, server_default="0"),
    sa.Column("url", sa.Text, nullable=False, server_default=""),
    sa.Column("started_at", sa.Float, nullable=False),
    sa.Column("heartbeat_at", sa.Float, nullable=False),
    sa.Column("endpoints", sa.Text, nullable=False, server_default="{}"),  # JSON: endpoint id -> this replica's state
)

# 0010: knowledge bases (a project's documents as stamped chunk vectors) and their versions (one per embedding)
knowledge_bases = sa.Table(
    "knowledge_bases", metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("project_id", sa.Text, sa.ForeignKey("projects.id"), nullable=False),
    sa.Column("name", name_type(), nullable=False),
    sa.Column("description", sa.Text, nullable=False, server_default=""),
    sa.Column("endpoint_id", sa.Text, nullable=False),
    sa.Column("store_url", sa.Text, nullable=False, server_default=""),  # "" embedded; PostgreSQL URL (no password)
    sa.Column("chunking", sa.Text, nullable=False, server_default="{}"),  # JSON: mode, chunk_tokens, overlap
    sa.Column("text_field", sa.Text, nullable=False, server_default="contents"),
    sa.Column("id_field", sa.Text, nullable=False, server_default=""),
    sa.Column("current_version", sa.Integer, nullable=False, server_default="0"),  # 0: none complete yet
    sa.Column("created_at", sa.Text, nullable=False),
    sa.UniqueConstraint("project_id", "name"),
)

kb_versions = sa.Table(
    "kb_versions", metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("kb_id", sa.Text, sa.ForeignKey("knowledge_bases.id"), nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("endpoint_id", sa.Text, nullable=False),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("status_reason", sa.Text, nullable=False, server_default=""),
    sa.Column("stamp", sa.Text, nullable=False, server_default="{}"),  # JSON: model, precision, prefixes, chunking
    sa.Column("path", sa.Text, nullable=False),
    sa.Column("table_name", sa.Text, nullable=False, server_default=""),
    sa.Column("documents", sa.Integer, nullable=False, server_default="0"),
    sa.Column("chunks", sa.Integer, nullable=False, server_default="0"),
    sa.Column("fields", sa.Text, nullable=False, server_default="[]"),  # JSON: metadata field names
    sa.Column("generation", sa.Integer, nullable=False, server_default="0"),  # bumped by every add and delete
    sa.Column("created_at", sa.Text, nullable=False),
    sa.Column("updated_at", sa.Text, nullable=False),
    sa.UniqueConstraint("kb_id", "version"),
    sa.CheckConstraint("version >= 1"),
)
