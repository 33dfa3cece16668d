"""Projects: named groups of endpoints."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from e5studio.control.database import Database, as_lookup, check_name, new_id, now
from e5studio.control.schema import projects
from e5studio.errors import ConflictError, NotFoundError


@dataclass(frozen=True)
class Project:
    id: str
    name: str
    description: str
    created_at: str


def _project(row: sa.RowMapping) -> Project:
    return Project(id=row["id"], name=row["name"], description=row["description"], created_at=row["created_at"])


def id_first(column: sa.ColumnElement[Any], ref: str) -> sa.ColumnElement[int]:
    """An ORDER BY term that puts the row whose id is ``ref`` before one whose name is ``ref``."""
    return sa.case((column == ref, 0), else_=1)


class ProjectTable(Database):
    """Projects; every ``*_ref`` is an id or a name (ids tried first)."""

    def create_project(self, name: str, description: str = "") -> Project:
        check_name("project", name)
        project = Project(id=new_id(), name=name, description=description, created_at=now())
        with self._write() as conn:
            if conn.execute(sa.select(projects.c.id).where(projects.c.name == name)).first():
                raise ConflictError(f"project {name!r} already exists")
            conn.execute(projects.insert().values(id=project.id, name=project.name, description=project.description,
                                                  created_at=project.created_at))
        return project

    def list_projects(self) -> list[Project]:
        return [_project(row) for row in self._read_all(sa.select(projects).order_by(projects.c.name))]

    def get_project(self, ref: str) -> Project:
        with self._read() as conn:
            return self._get_project(conn, ref)

    @staticmethod
    def _get_project(conn: Connection, ref: str) -> Project:
        row = conn.execute(
            sa.select(projects).where(sa.or_(projects.c.id == as_lookup(ref), projects.c.name == as_lookup(ref)))
            .order_by(id_first(projects.c.id, as_lookup(ref))).limit(1)
        ).mappings().first()
        if row is None:
            raise NotFoundError(f"project {ref!r} not found: create it with `e5studio projects create NAME` (or on "
                                "the web UI's Projects page)")
        return _project(row)
