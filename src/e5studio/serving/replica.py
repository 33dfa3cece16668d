"""This server as one replica among those sharing the control store: its id, and the heartbeat that tells the
others it is alive and which endpoints' models it has ready (``e5studio.control.replicas``)."""

from __future__ import annotations

import os
import socket

from e5studio.control.store import Store
from e5studio.serving.models import ModelPool

HEARTBEAT_S = 2.0  # how often a replica writes its heartbeat (the others count it for REPLICA_FRESH_S)


class ReplicaHeartbeat:
    def __init__(self, store: Store, pool: ModelPool, url: str = "") -> None:
        self.store = store
        self.pool = pool
        self.id = pool.replica_id or Store.new_job_id()
        self.host = socket.gethostname()
        self.url = url

    def beat(self) -> None:
        """Record this replica alive now, with the state of each endpoint's model here."""
        states = self.pool.states(self.store.list_endpoints())
        self.store.heartbeat_replica(self.id, states, host=self.host, pid=os.getpid(), url=self.url)

    def leave(self) -> None:
        """A clean shutdown: this replica no longer counts."""
        self.store.remove_replica(self.id)
