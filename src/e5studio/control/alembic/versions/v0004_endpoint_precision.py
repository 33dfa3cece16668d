"""An endpoint's precision (fp32 or int8), fixed at creation."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_endpoint_precision"
down_revision = "0003_job_processes"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("endpoints", sa.Column("precision", sa.Text, nullable=False, server_default="fp32"))


def downgrade() -> None:
    with op.batch_alter_table("endpoints") as batch:
        batch.drop_column("precision")
