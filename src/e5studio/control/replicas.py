"""The servers (replicas) sharing the store: each writes a heartbeat with the state of every endpoint's model on
it (``ready``, ``loading``, ``failed``), so any of them can say on how many replicas an endpoint is ready."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass

import sqlalchemy as sa

from e5studio.control.database import Database
from e5studio.control.schema import replicas

_R = replicas.c
REPLICA_FRESH_S = 15.0  # a replica whose last heartbeat is older than this is not counted
REPLICA_FORGET_S = 3600.0  # rows of replicas silent for longer than this are deleted
MODEL_READY, MODEL_LOADING, MODEL_FAILED = "ready", "loading", "failed"  # an endpoint's model on one replica


@dataclass(frozen=True)
class Replica:
    id: str
    host: str
    pid: int
    url: str
    started_at: float
    heartbeat_at: float
    endpoints: dict[str, str]  # endpoint id -> MODEL_READY | MODEL_LOADING | MODEL_FAILED


@dataclass(frozen=True)
class Readiness:
    """On how many of the live replicas an endpoint's model is ready."""

    ready: int
    replicas: int

    def __str__(self) -> str:
        return f"ready on {self.ready} of {self.replicas} replica{'' if self.replicas == 1 else 's'}"


def _replica(row: sa.RowMapping) -> Replica:
    return Replica(id=row["id"], host=row["host"], pid=row["pid"], url=row["url"], started_at=row["started_at"],
                   heartbeat_at=row["heartbeat_at"], endpoints=json.loads(row["endpoints"]))


class ReplicaTable(Database):
    def heartbeat_replica(self, replica_id: str, endpoints: Mapping[str, str], *, host: str = "", pid: int = 0,
                          url: str = "", now_s: float | None = None) -> None:
        """Record that the replica is alive now, with the state of each endpoint's model on it (and forget
        replicas silent for more than :data:`REPLICA_FORGET_S`)."""
        at = time.time() if now_s is None else now_s
        states = json.dumps(dict(endpoints), sort_keys=True)
        with self._write(serial=False) as conn:
            updated = conn.execute(replicas.update().where(_R.id == replica_id).values(
                heartbeat_at=at, endpoints=states, host=host, pid=pid, url=url))
            if updated.rowcount == 0:
                conn.execute(replicas.insert().values(id=replica_id, host=host, pid=pid, url=url, started_at=at,
                                                      heartbeat_at=at, endpoints=states))
            conn.execute(replicas.delete().where(_R.heartbeat_at < at - REPLICA_FORGET_S))

    def remove_replica(self, replica_id: str) -> None:
        """The replica stops (a clean shutdown): it no longer counts."""
        with self._write(serial=False) as conn:
            conn.execute(replicas.delete().where(_R.id == replica_id))

    def list_replicas(self, *, fresh_s: float = REPLICA_FRESH_S, now_s: float | None = None) -> list[Replica]:
        """Replicas with a heartbeat in the last ``fresh_s`` seconds, oldest first."""
        at = time.time() if now_s is None else now_s
        rows = self._read_all(sa.select(replicas).where(_R.heartbeat_at >= at - fresh_s)
                              .order_by(_R.started_at, _R.id))
        return [_replica(row) for row in rows]

    def endpoint_readiness(self, endpoint_id: str, *, exclude: str = "", now_s: float | None = None) -> Readiness:
        """On how many live replicas (other than ``exclude``) the endpoint's model is ready."""
        live = [r for r in self.list_replicas(now_s=now_s) if r.id != exclude]
        return Readiness(ready=sum(r.endpoints.get(endpoint_id) == MODEL_READY for r in live), replicas=len(live))
