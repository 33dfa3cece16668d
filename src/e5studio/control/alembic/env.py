"""Alembic's environment for the control store: the migrations run on the connection (and inside the
transaction) that :func:`e5studio.control.migrations.upgrade` hands over in ``config.attributes``; run from
the ``alembic`` command line (writing a new revision), ``sqlalchemy.url`` of the config is used instead."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context

connection = context.config.attributes.get("connection")
if connection is None:  # the alembic command line: `alembic -x ... revision -m "..."` and the like
    engine = sa.create_engine(context.config.get_main_option("sqlalchemy.url") or "sqlite://")
    with engine.connect() as own, own.begin():
        context.configure(connection=own, render_as_batch=True)
        context.run_migrations()
else:
    context.configure(connection=connection, render_as_batch=True)
    with context.begin_transaction():  # inside the caller's transaction: no transaction of its own
        context.run_migrations()
