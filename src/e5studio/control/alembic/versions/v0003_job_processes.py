"""The process working on a job (pid, log) and who owns it (a server runner or the command line)."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_job_processes"
down_revision = "0002_datasets_jobs"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("pid", sa.Integer))
    op.add_column("jobs", sa.Column("log_path", sa.Text, nullable=False, server_default=""))
    op.add_column("jobs", sa.Column("owner", sa.Text, nullable=False, server_default=""))
    op.add_column("jobs", sa.Column("runner_id", sa.Text, nullable=False, server_default=""))
    op.add_column("jobs", sa.Column("runner_pid", sa.Integer, nullable=False, server_default="0"))
    op.create_index("jobs_by_status", "jobs", ["status"])


def downgrade() -> None:
    op.drop_index("jobs_by_status", "jobs")
    with op.batch_alter_table("jobs") as batch:
        for column in ("runner_pid", "runner_id", "owner", "log_path", "pid"):
            batch.drop_column(column)
