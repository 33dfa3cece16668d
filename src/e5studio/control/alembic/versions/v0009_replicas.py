"""The servers (replicas) sharing the store: heartbeat, and the state of each endpoint's model on each."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009_replicas"
down_revision = "0008_job_leases"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "replicas",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("host", sa.Text, nullable=False, server_default=""),
        sa.Column("pid", sa.Integer, nullable=False, server_default="0"),
        sa.Column("url", sa.Text, nullable=False, server_default=""),
        sa.Column("started_at", sa.Float, nullable=False),
        sa.Column("heartbeat_at", sa.Float, nullable=False),
        sa.Column("endpoints", sa.Text, nullable=False, server_default="{}"),
    )


def downgrade() -> None:
    op.drop_table("replicas")
