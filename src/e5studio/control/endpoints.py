"""Endpoints (a model served under a project, with a status) and their keys (stored hashed, :mod:`.keys`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from e5studio.control.database import as_lookup, check_name, new_id, now
from e5studio.control.keys import ENDPOINT_KEY_PREFIX, display_prefix, hash_key, new_key, verify_key
from e5studio.control.projects import ProjectTable, id_first
from e5studio.control.schema import endpoints, projects
from e5studio.errors import ConflictError, InputError, NotFoundError
from e5studio.jobspec.params import plain_text
from e5studio.vocabulary import INPUT_TYPES, PRECISIONS, one_of

DEPLOYING = "Deploying"
LIVE = "Live"
FAILED = "Failed"
STATUSES = (DEPLOYING, LIVE, FAILED)

BATCH_SIZES = (1, 32)

# a hash no key produces, compared against when an endpoint is missing so the answer takes the same time
_NO_HASH = "0" * 64
ENDPOINT_HINT = (": create one with `e5studio endpoints create PROJECT NAME` (or on the web UI's project page; "
                 "`e5studio endpoints list` shows them)")


@dataclass(frozen=True)
class Endpoint:
    id: str
    project_id: str
    project_name: str
    name: str
    description: str
    model: str
    batch_size: int
    created_at: str
    status: str
    status_reason: str
    key_prefix: str
    precision: str = "fp32"  # fixed at creation, like the batch size
    # JSON: the deploy gate's verdict when the model is a fine-tuning output (its evaluation sets against the
    # base model, whether it passed, whether the deployer forced it); "" for models that were not gated
    deploy_gate: str = ""
    input_type: str = "none"  # the E5 prefix added by role where a request names none (query, passage, none)


_E, _P = endpoints.c, projects.c
_ENDPOINT_SELECT = sa.select(
    _E.id, _E.project_id, _P.name.label("project_name"), _E.name, _E.description, _E.model, _E.batch_size,
    _E.created_at, _E.status, _E.status_reason, _E.key_prefix, _E.precision, _E.deploy_gate, _E.input_type,
).select_from(endpoints.join(projects, _P.id == _E.project_id))
_ENDPOINT_ORDER = (_P.name, _E.name)

# The request path's one query (built once: no statement building or compiling per call): the endpoint named by
# project and endpoint refs (ids before names), with its key hash for the key check.
_CALL_P, _CALL_E = sa.bindparam("project_ref", type_=sa.String), sa.bindparam("endpoint_ref", type_=sa.String)
_PROJECT_OF_CALL = (  # the project as ProjectTable._get_project picks it (id before name)
    sa.select(_P.id).where(sa.or_(_P.id == _CALL_P, _P.name == _CALL_P))
    .order_by(sa.case((_P.id == _CALL_P, 0), else_=1)).limit(1).scalar_subquery()
)
_ENDPOINT_FOR_CALL = (
    _ENDPOINT_SELECT.add_columns(_E.key_hash)
    .where(_E.project_id == _PROJECT_OF_CALL, sa.or_(_E.id == _CALL_E, _E.name == _CALL_E))
    .order_by(sa.case((_E.id == _CALL_E, 0), else_=1)).limit(1)
)
# without a project: the endpoint with that id, else every endpoint with that name (more than one is an error)
_ENDPOINT_FOR_BARE_CALL = (
    _ENDPOINT_SELECT.add_columns(_E.key_hash).where(sa.or_(_E.id == _CALL_E, _E.name == _CALL_E))
    .order_by(sa.case((_E.id == _CALL_E, 0), else_=1)).limit(2)
)


def _check_batch_size(batch_size: int) -> None:
    if isinstance(batch_size, bool) or batch_size not in BATCH_SIZES:
        raise InputError(
            f"batch size must be 1 or 32, got {batch_size!r}: use 32 for vectorising a knowledge base "
            "(throughput over many texts per call), 1 for a live service (lowest latency per request)"
        )


def _endpoint(row: sa.RowMapping | Mapping[str, Any]) -> Endpoint:
    return Endpoint(
        id=row["id"],
        project_id=row["project_id"],
        project_name=row["project_name"],
        name=row["name"],
        description=row["description"],
        model=row["model"],
        batch_size=row["batch_size"],
        created_at=row["created_at"],
        status=row["status"],
        status_reason=row["status_reason"],
        key_prefix=row["key_prefix"],
        precision=row["precision"],
        deploy_gate=row["deploy_gate"],
        input_type=row["input_type"],
    )


def _check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise InputError(f"precision must be {one_of(PRECISIONS)}, got {precision!r}: int8 runs every dense "
                         "layer in int8 on the CPU (faster, vectors within cosine 0.99 of fp32)")


class EndpointTable(ProjectTable):
    """Endpoints of projects, with one key each (returned in clear once, when created or rotated)."""

    def create_endpoint(
        self, project_ref: str, name: str, model: str, batch_size: int, description: str = "",
        precision: str = "fp32", deploy_gate: str = "", input_type: str = "none",
    ) -> tuple[Endpoint, str]:
        """Create an endpoint in status Deploying; return it with its key, in clear this once only."""
        check_name("endpoint", name)
        _check_batch_size(batch_size)
        _check_precision(precision)
        if input_type not in INPUT_TYPES:
            raise InputError(f"input_type must be {one_of(INPUT_TYPES)}, got {input_type!r}")
        if not isinstance(model, str) or not model.strip():
            raise InputError("model must be a non-empty model id or path")
        plain_text("model", model)  # it names files and is logged
        key = new_key(ENDPOINT_KEY_PREFIX)
        with self._write() as conn:
            project = self._get_project(conn, project_ref)
            taken = conn.execute(sa.select(_E.id).where(_E.project_id == project.id, _E.name == name)).first()
            if taken:
                raise ConflictError(f"endpoint {name!r} already exists in project {project.name!r}")
            endpoint = Endpoint(
                id=new_id(),
                project_id=project.id,
                project_name=project.name,
                name=name,
                description=description,
                model=model,
                batch_size=batch_size,
                created_at=now(),
                status=DEPLOYING,
                status_reason="",
                key_prefix=display_prefix(key),
                precision=precision,
                deploy_gate=deploy_gate,
                input_type=input_type,
            )
            conn.execute(endpoints.insert().values(
                id=endpoint.id, project_id=endpoint.project_id, name=endpoint.name, description=endpoint.description,
                model=endpoint.model, batch_size=endpoint.batch_size, created_at=endpoint.created_at,
                status=endpoint.status, status_reason=endpoint.status_reason, key_hash=hash_key(key),
                key_prefix=endpoint.key_prefix, precision=endpoint.precision, deploy_gate=endpoint.deploy_gate,
                input_type=endpoint.input_type,
            ))
        return endpoint, key

    def list_endpoints(self, project_ref: str | None = None) -> list[Endpoint]:
        """All endpoints, or those of one project, ordered by project name then endpoint name."""
        with self._read() as conn:
            query = _ENDPOINT_SELECT
            if project_ref is not None:
                query = query.where(_E.project_id == self._get_project(conn, project_ref).id)
            rows = conn.execute(query.order_by(*_ENDPOINT_ORDER)).mappings().all()
        return [_endpoint(row) for row in rows]

    def get_endpoint(self, project_ref: str, endpoint_ref: str) -> Endpoint:
        """The endpoint ``endpoint_ref`` (id or name) of project ``project_ref`` (id or name)."""
        with self._read() as conn:
            project = self._get_project(conn, project_ref)
            row = conn.execute(
                _ENDPOINT_SELECT.where(_E.project_id == project.id, sa.or_(_E.id == as_lookup(endpoint_ref),
                                                                           _E.name == as_lookup(endpoint_ref)))
                .order_by(id_first(_E.id, as_lookup(endpoint_ref))).limit(1)
            ).mappings().first()
        if row is None:
            raise NotFoundError(f"endpoint {endpoint_ref!r} not found in project {project.name!r}{ENDPOINT_HINT}")
        return _endpoint(row)

    def get_endpoint_by_id(self, endpoint_id: str) -> Endpoint:
        with self._read() as conn:
            return self._get_endpoint_by_id(conn, endpoint_id)

    @staticmethod
    def _get_endpoint_by_id(conn: Connection, endpoint_id: str) -> Endpoint:
        row = conn.execute(_ENDPOINT_SELECT.where(_E.id == as_lookup(endpoint_id))).mappings().first()
        if row is None:
            raise NotFoundError(f"endpoint {endpoint_id!r} not found{ENDPOINT_HINT}")
        return _endpoint(row)

    def find_endpoint(self, ref: str) -> Endpoint:
        """The endpoint with id ``ref``, else the one endpoint named ``ref`` in any project."""
        with self._read() as conn:
            row = conn.execute(_ENDPOINT_SELECT.where(_E.id == as_lookup(ref))).mappings().first()
            if row is not None:
                return _endpoint(row)
            named = _ENDPOINT_SELECT.where(_E.name == as_lookup(ref)).order_by(*_ENDPOINT_ORDER)
            rows = conn.execute(named).mappings().all()
        if not rows:
            raise NotFoundError(f"endpoint {ref!r} not found{ENDPOINT_HINT}")
        if len(rows) > 1:
            places = ", ".join(f"{row['project_name']} (id {row['id']})" for row in rows)
            raise InputError(f"endpoint name {ref!r} is used in several projects: {places}; use the endpoint id")
        return _endpoint(rows[0])

    def set_status(self, endpoint_id: str, status: str, reason: str = "") -> None:
        if status not in STATUSES:
            raise InputError(f"unknown endpoint status {status!r}; expected one of {', '.join(STATUSES)}")
        with self._write(serial=False) as conn:
            updated = conn.execute(endpoints.update().where(_E.id == endpoint_id)
                                   .values(status=status, status_reason=reason))
            if updated.rowcount == 0:
                raise NotFoundError(f"endpoint {endpoint_id!r} not found{ENDPOINT_HINT}")

    def delete_endpoint(self, endpoint_id: str) -> None:
        with self._write() as conn:
            if conn.execute(endpoints.delete().where(_E.id == endpoint_id)).rowcount == 0:
                raise NotFoundError(f"endpoint {endpoint_id!r} not found{ENDPOINT_HINT}")

    # -- endpoint keys -----------------------------------------------------------------------------

    def rotate_key(self, endpoint_id: str) -> str:
        """Give the endpoint a new key and return it in clear; the old key stops working at once (on every
        server sharing the store: keys are checked against the store on every request, never cached)."""
        key = new_key(ENDPOINT_KEY_PREFIX)
        with self._write() as conn:
            updated = conn.execute(endpoints.update().where(_E.id == endpoint_id)
                                   .values(key_hash=hash_key(key), key_prefix=display_prefix(key)))
            if updated.rowcount == 0:
                raise NotFoundError(f"endpoint {endpoint_id!r} not found{ENDPOINT_HINT}")
        return key

    def endpoint_for_call(self, project_ref: str | None, endpoint_ref: str) -> tuple[Endpoint, str]:
        """What an inference request needs, read fresh (never cached: a rotated key or a deleted endpoint is
        refused at the next request, on every server sharing the store) in one prepared query: the endpoint
        ``endpoint_ref`` of project ``project_ref`` (None: any project, as :meth:`find_endpoint`) and its key
        hash (:func:`.keys.verify_key`). Not found or ambiguous: the errors of :meth:`get_endpoint` /
        :meth:`find_endpoint`."""
        if project_ref is None:
            rows = self._driver_read(_ENDPOINT_FOR_BARE_CALL, {"endpoint_ref": as_lookup(endpoint_ref)})
            found = rows[0] if rows and (len(rows) == 1 or rows[0]["id"] == endpoint_ref) else None
        else:
            rows = self._driver_read(_ENDPOINT_FOR_CALL, {"project_ref": as_lookup(project_ref),
                                                          "endpoint_ref": as_lookup(endpoint_ref)})
            found = rows[0] if rows else None
        if found is None:  # the slow paths say exactly what is missing or ambiguous
            endpoint = (self.find_endpoint(endpoint_ref) if project_ref is None
                        else self.get_endpoint(project_ref, endpoint_ref))
            return endpoint, self._key_hash(endpoint.id)
        return _endpoint(found), found["key_hash"]

    def _key_hash(self, endpoint_id: str) -> str:
        row = self._read_one(sa.select(_E.key_hash).where(_E.id == endpoint_id))
        return row["key_hash"] if row is not None else _NO_HASH

    def endpoints_and_key_hashes(self) -> list[tuple[Endpoint, str]]:
        """Every endpoint with its key hash, in one query: the copy a serving replica answers inference requests
        from (read again every half second, and after each write of its own; ``serving/inference.py``)."""
        rows = self._read_all(_ENDPOINT_SELECT.add_columns(_E.key_hash))
        return [(_endpoint(row), row["key_hash"]) for row in rows]

    def endpoints_opened_by(self, keys: list[str]) -> list[Endpoint]:
        """The endpoints whose current key is one of ``keys``, in one query whatever the number of endpoints (a
        key is found by its hash; keys are 256-bit random values, so an equality lookup leaks nothing usable)."""
        hashes = [hash_key(key) for key in keys if isinstance(key, str)]
        if not hashes:
            return []
        rows = self._read_all(_ENDPOINT_SELECT.where(_E.key_hash.in_(hashes)).order_by(*_ENDPOINT_ORDER))
        return [_endpoint(row) for row in rows]

    def check_endpoint_key(self, endpoint_id: str, key: str) -> bool:
        """Whether ``key`` is the current key of the endpoint (False for an unknown endpoint)."""
        row = self._read_one(sa.select(_E.key_hash).where(_E.id == endpoint_id))
        return verify_key(key, row["key_hash"] if row is not None else _NO_HASH) and row is not None
