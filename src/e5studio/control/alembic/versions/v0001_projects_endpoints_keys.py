"""Projects, endpoints with their hashed keys, admin tokens."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001_projects_endpoints_keys"
down_revision = None
branch_labels = None
depends_on = None


def _name() -> sa.types.TypeEngine[str]:  # bytewise order on PostgreSQL too (SQLite's default)
    return sa.Text().with_variant(postgresql.TEXT(collation="C"), "postgresql")


def upgrade() -> None:
    op.create_table(
        "projects",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("name", _name(), nullable=False, unique=True),
        sa.Column("description", sa.Text, nullable=False, server_default=""),
        sa.Column("created_at", sa.Text, nullable=False),
    )
    op.create_table(
        "endpoints",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("project_id", sa.Text, sa.ForeignKey("projects.id"), nullable=False),
        sa.Column("name", _name(), nullable=False),
        sa.Column("description", sa.Text, nullable=False, server_default=""),
        sa.Column("model", sa.Text, nullable=False),
        sa.Column("batch_size", sa.Integer, nullable=False),
        sa.Column("created_at", sa.Text, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("status_reason", sa.Text, nullable=False, server_default=""),
        sa.Column("key_hash", sa.Text, nullable=False),
        sa.Column("key_prefix", sa.Text, nullable=False),
        sa.UniqueConstraint("project_id", "name"),
        sa.CheckConstraint("batch_size IN (1, 32)"),
    )
    op.create_index("endpoints_by_name", "endpoints", ["name"])
    op.create_table(
        "admin_tokens",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("token_hash", sa.Text, nullable=False),
        sa.Column("created_at", sa.Text, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("admin_tokens")
    op.drop_index("endpoints_by_name", "endpoints")
    op.drop_table("endpoints")
    op.drop_table("projects")
