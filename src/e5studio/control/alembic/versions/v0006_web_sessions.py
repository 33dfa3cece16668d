"""Web UI sessions in the store (every replica knows every session): hashed ids, expiry, encrypted flashes."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006_web_sessions"
down_revision = "0005_endpoint_deploy_gate"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "web_sessions",
        sa.Column("id_hash", sa.Text, primary_key=True),
        sa.Column("expires_at", sa.Float, nullable=False),
        sa.Column("flashes", sa.Text, nullable=False, server_default="{}"),
    )
    op.create_index("web_sessions_by_expiry", "web_sessions", ["expires_at"])


def downgrade() -> None:
    op.drop_index("web_sessions_by_expiry", "web_sessions")
    op.drop_table("web_sessions")
