"""Projects: named groups of endpoints."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from e5studio.control.database import Database, check_name, new_id, now
from e5studio.errors import ConflictError, NotFoundError


@dataclass(frozen=True)
class Project:
    id: str
    name: str
    description: str
    created_at: str


def _project(row: sqlite3.Row) -> Project:
    return Project(id=row["id"], name=row["name"], description=row["description"], created_at=row["created_at"])


class ProjectTable(Database):
    """Projects; every ``*_ref`` is an id or a name (ids tried first)."""

    def create_project(self, name: str, description: str = "") -> Project:
        check_name("project", name)
        project = Project(id=new_id(), name=name, description=description, created_at=now())
        with self._write() as conn:
            if conn.execute("SELECT 1 FROM projects WHERE name = ?", (name,)).fetchone():
                raise ConflictError(f"project {name!r} already exists")
            conn.execute(
                "INSERT INTO projects (id, name, description, created_at) VALUES (?, ?, ?, ?)",
                (project.id, project.name, project.description, project.created_at),
            )
        return project

    def list_projects(self) -> list[Project]:
        return [_project(row) for row in self._read_all("SELECT * FROM projects ORDER BY name")]

    def get_project(self, ref: str) -> Project:
        with self._lock:
            return self._get_project(self._conn, ref)

    @staticmethod
    def _get_project(conn: sqlite3.Connection, ref: str) -> Project:
        row = conn.execute(
            "SELECT * FROM projects WHERE id = ? OR name = ? ORDER BY id = ? DESC LIMIT 1", (ref, ref, ref)
        ).fetchone()
        if row is None:
            raise NotFoundError(f"project {ref!r} not found: create it with `e5studio projects create NAME` (or on "
                                "the web UI's Projects page)")
        return _project(row)
