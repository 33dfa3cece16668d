"""Failed logins per client address, shared by every replica (throttled together)."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007_login_failures"
down_revision = "0006_web_sessions"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "login_failures",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("address", sa.Text, nullable=False),
        sa.Column("failed_at", sa.Float, nullable=False),
    )
    op.create_index("login_failures_by_address", "login_failures", ["address", "failed_at"])
    op.create_index("login_failures_by_time", "login_failures", ["failed_at"])


def downgrade() -> None:
    op.drop_index("login_failures_by_time", "login_failures")
    op.drop_index("login_failures_by_address", "login_failures")
    op.drop_table("login_failures")
