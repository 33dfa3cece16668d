"""The deploy gate's verdict recorded with the endpoint (JSON; empty for models that were not gated)."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005_endpoint_deploy_gate"
down_revision = "0004_endpoint_precision"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("endpoints", sa.Column("deploy_gate", sa.Text, nullable=False, server_default=""))


def downgrade() -> None:
    with op.batch_alter_table("endpoints") as batch:
        batch.drop_column("deploy_gate")
