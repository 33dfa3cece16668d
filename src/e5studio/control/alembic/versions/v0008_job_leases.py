"""Job leases: the runner (server replica) working on a Running job renews its lease; once it expires, any
replica marks the job Interrupted. ``runner_host``: the host of the job's process (pids mean nothing elsewhere)."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008_job_leases"
down_revision = "0007_login_failures"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("lease_owner", sa.Text, nullable=False, server_default=""))
    op.add_column("jobs", sa.Column("lease_expires_at", sa.Float))
    op.add_column("jobs", sa.Column("runner_host", sa.Text, nullable=False, server_default=""))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        for column in ("runner_host", "lease_expires_at", "lease_owner"):
            batch.drop_column(column)
