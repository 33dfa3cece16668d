"""Fine-tuning datasets (named versions) and job records."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0002_datasets_jobs"
down_revision = "0001_projects_endpoints_keys"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "datasets",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("name", sa.Text().with_variant(postgresql.TEXT(collation="C"), "postgresql"), nullable=False),
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
    op.create_table(
        "jobs",
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
    )
    op.create_index("jobs_by_output", "jobs", ["output"])


def downgrade() -> None:
    op.drop_index("jobs_by_output", "jobs")
    op.drop_table("jobs")
    op.drop_table("datasets")
