"""Knowledge bases of projects and their versions (one per embedding of the documents); an endpoint's default
input_type (the E5 prefix by role)."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0010_knowledge_bases"
down_revision = "0009_replicas"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # an endpoint's default input_type (query, passage or none: texts as sent), overridable per request
    with op.batch_alter_table("endpoints") as batch:
        batch.add_column(sa.Column("input_type", sa.Text, nullable=False, server_default="none"))
    op.create_table(
        "knowledge_bases",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("project_id", sa.Text, sa.ForeignKey("projects.id"), nullable=False),
        sa.Column("name", sa.Text().with_variant(postgresql.TEXT(collation="C"), "postgresql"), nullable=False),
        sa.Column("description", sa.Text, nullable=False, server_default=""),
        sa.Column("endpoint_id", sa.Text, nullable=False),
        sa.Column("store_url", sa.Text, nullable=False, server_default=""),
        sa.Column("chunking", sa.Text, nullable=False, server_default="{}"),
        sa.Column("text_field", sa.Text, nullable=False, server_default="contents"),
        sa.Column("id_field", sa.Text, nullable=False, server_default=""),
        sa.Column("current_version", sa.Integer, nullable=False, server_default="0"),
        sa.Column("created_at", sa.Text, nullable=False),
        sa.UniqueConstraint("project_id", "name"),
    )
    op.create_table(
        "kb_versions",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("kb_id", sa.Text, sa.ForeignKey("knowledge_bases.id"), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("endpoint_id", sa.Text, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("status_reason", sa.Text, nullable=False, server_default=""),
        sa.Column("stamp", sa.Text, nullable=False, server_default="{}"),
        sa.Column("path", sa.Text, nullable=False),
        sa.Column("table_name", sa.Text, nullable=False, server_default=""),
        sa.Column("documents", sa.Integer, nullable=False, server_default="0"),
        sa.Column("chunks", sa.Integer, nullable=False, server_default="0"),
        sa.Column("fields", sa.Text, nullable=False, server_default="[]"),
        sa.Column("generation", sa.Integer, nullable=False, server_default="0"),
        sa.Column("created_at", sa.Text, nullable=False),
        sa.Column("updated_at", sa.Text, nullable=False),
        sa.UniqueConstraint("kb_id", "version"),
        sa.CheckConstraint("version >= 1"),
    )


def downgrade() -> None:
    with op.batch_alter_table("endpoints") as batch:
        batch.drop_column("input_type")
    op.drop_table("kb_versions")
    op.drop_table("knowledge_bases")
