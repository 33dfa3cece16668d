"""Loaded models: one Embedder + Batcher per model, shared by every endpoint that names it.

Loading happens in a background thread per model; while it runs the endpoints using that model are
*Deploying*; afterwards *Live*, or *Failed* with the reason (e.g. weights not found, with the remedy).

Several servers (replicas) may share the store: each loads the models of every endpoint in it (:meth:`ModelPool.sync`
picks up endpoints created on another replica), reports per endpoint whether its model is ready here
(:meth:`ModelPool.states`, written with the replica's heartbeat), and does not mark an endpoint Deploying or
Failed in the store while another replica serves it (the store's status is what the whole deployment offers).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from e5studio.control.replicas import MODEL_FAILED, MODEL_LOADING, MODEL_READY
from e5studio.control.store import DEPLOYING, FAILED, LIVE, Endpoint, Store
from e5studio.engine import download
from e5studio.engine.checkpoint import ALIASES
from e5studio.engine.embedder import Embedder
from e5studio.errors import E5StudioError, StoreUnavailableError, UnavailableError
from e5studio.serving.allocator import freeze_loaded_objects, unfreeze_objects
from e5studio.serving.batcher import Batcher, QueueLimits
from e5studio.serving.edge import Metrics
from e5studio.settings import EngineSettings


def model_key(model: str, precision: str = "fp32") -> str:
    """One key per model however it is named (alias or hub id), and per precision (an int8 copy is another
    loaded model): ``intfloat/e5-large-v2``, ``intfloat/e5-large-v2@int8``."""
    name = ALIASES.get(model.lower(), model)
    return name if precision == "fp32" else f"{name}@{precision}"


def endpoint_model_key(endpoint: Endpoint) -> str:
    return model_key(endpoint.model, endpoint.precision)


@dataclass
class LoadedModel:
    key: str
    embedder: Embedder | None = None
    batcher: Batcher | None = None
    error: str = ""
    done: threading.Event = field(default_factory=threading.Event)
    published: bool = False  # its endpoints' statuses were written (the store may be away when it loads)


class ModelPool:
    """Loads each model once, keeps endpoint statuses in the store in step with it."""

    def __init__(self, store: Store, engine: EngineSettings, metrics: Metrics, limits: QueueLimits,
                 loader: Callable[[EngineSettings], Embedder] = Embedder.load, replica_id: str = "") -> None:
        self._store = store
        self.replica_id = replica_id  # this server among the replicas sharing the store
        self._restored: list[LoadedModel] | None = None  # the models restore() started (None: not called yet)
        self._engine = engine
        self._metrics = metrics
        self._limits = limits
        self._loaders: list[threading.Thread] = []
        self._loader = loader
        self._models: dict[str, LoadedModel] = {}
        self._lock = threading.Lock()

    def deploy(self, endpoint: Endpoint) -> None:
        """Bring ``endpoint`` to Live (now, if its model is loaded) or start loading its model."""
        key = endpoint_model_key(endpoint)
        with self._lock:
            loaded = self._models.get(key)
            start = loaded is None or (loaded.done.is_set() and loaded.embedder is None)  # new, or retry a failure
            if start:
                loaded = LoadedModel(key)
                self._models[key] = loaded
            assert loaded is not None
            if not loaded.done.is_set() and not self._served_elsewhere(endpoint.id):
                self._store.set_status(endpoint.id, DEPLOYING, f"loading {endpoint.model}")
            if start:  # after Deploying is recorded, so a fast failure cannot be overwritten by it
                loader = threading.Thread(target=self._load, args=(loaded, endpoint.model, endpoint.precision),
                                          daemon=True, name=f"e5studio-load-{key}")
                self._loaders.append(loader)
                loader.start()
        if loaded.done.is_set():
            self._publish(loaded)

    def restore(self) -> None:
        """After a restart: deploy every endpoint in the store."""
        for endpoint in self._store.list_endpoints():
            self.deploy(endpoint)
        with self._lock:
            self._restored = list(self._models.values())

    def sync(self) -> list[Endpoint]:
        """Deploy the endpoints of the store whose model this server has not started loading (created through
        another replica), and unload the loaded models no endpoint uses any more (their endpoints deleted here
        or on another replica: requests already queued finish first); returns the endpoints started."""
        endpoints = self._store.list_endpoints()
        used = {endpoint_model_key(e) for e in endpoints}
        with self._lock:
            known = set(self._models)
            unused = [self._models.pop(key) for key in known - used if self._models[key].done.is_set()]
        for loaded in unused:
            if loaded.batcher is not None:
                threading.Thread(target=self._unload, args=(loaded,), daemon=True,
                                 name=f"e5studio-unload-{loaded.key}").start()
        started = [e for e in endpoints if endpoint_model_key(e) not in known]
        for endpoint in started:
            self.deploy(endpoint)
        with self._lock:
            unpublished = [m for m in self._models.values() if m.done.is_set() and not m.published]
        for loaded in unpublished:  # loaded while the store was away
            self._publish(loaded)
        return started

    def loaded_models(self) -> list[str]:
        """The model keys this server holds (loading, ready or failed)."""
        with self._lock:
            return sorted(self._models)

    def started_up(self) -> bool:
        """Whether every model found at start (:meth:`restore`) finished loading (or failed)."""
        with self._lock:
            restored = self._restored
        return restored is not None and all(m.done.is_set() for m in restored)

    def model_ready(self, key: str) -> bool:
        """Whether the model ``key`` is loaded here and serves."""
        loaded = self._models.get(key)
        return loaded is not None and loaded.done.is_set() and loaded.embedder is not None

    def state(self, endpoint: Endpoint) -> str | None:
        """This server's state of the endpoint's model: ready, loading, failed, or None (not started here)."""
        loaded = self._models.get(endpoint_model_key(endpoint))
        if loaded is None:
            return None
        if not loaded.done.is_set():
            return MODEL_LOADING
        return MODEL_READY if loaded.embedder is not None else MODEL_FAILED

    def states(self, endpoints: list[Endpoint]) -> dict[str, str]:
        """Endpoint id -> this server's state of its model, for the endpoints it has started on."""
        return {e.id: state for e in endpoints if (state := self.state(e)) is not None}

    def _served_elsewhere(self, endpoint_id: str) -> bool:
        """Whether another live replica has the endpoint's model ready (then its status stays as it is)."""
        return self._store.endpoint_readiness(endpoint_id, exclude=self.replica_id).ready > 0

    def _load(self, loaded: LoadedModel, model: str, precision: str) -> None:
        try:
            if download.needs_download(model):  # a first deploy: the download shows in the Deploying reason
                with contextlib.suppress(E5StudioError):  # else the loader says why, with all it tried
                    download.pull(model, progress=self._download_progress(loaded.key))
            embedder = self._loader(replace(self._engine, model=model, precision=precision))
            loaded.batcher = Batcher(embedder.embed_ids, max_batch_tokens=embedder.max_batch_tokens,
                                     limits=self._limits, observer=self._metrics.observer(loaded.key),
                                     name=loaded.key)
            loaded.batcher.calibrate(length=min(128, embedder.max_length))  # the wait bound holds from the start
            loaded.embedder = embedder
            freeze_loaded_objects()  # full collections no longer walk the model's objects
        except E5StudioError as exc:
            loaded.error = str(exc)
        except Exception as exc:  # noqa: BLE001 - a broken model must mark its endpoints Failed, not kill us
            loaded.error = f"{type(exc).__name__}: {exc}"
        loaded.done.set()
        with contextlib.suppress(StoreUnavailableError):  # else written by a later sync, once the store answers
            self._publish(loaded)

    @staticmethod
    def _unload(loaded: LoadedModel) -> None:
        """Finish the model's queued requests, drop it, and collect its objects (frozen since it loaded)."""
        if loaded.batcher is not None:
            loaded.batcher.close()
        loaded.batcher, loaded.embedder = None, None
        unfreeze_objects()  # the collection inside the next freeze frees the dropped model's cycles
        freeze_loaded_objects()

    def _download_progress(self, key: str) -> download.ByteProgress:
        """Sets "Deploying: downloading 412/1,340 MB" on the endpoints of ``key`` (at most once a second)."""
        import time

        last = [0.0]

        def shown(done: int, total: int) -> None:
            now = time.monotonic()
            if now - last[0] < 1.0 and done < total:
                return
            last[0] = now
            reason = f"Deploying: downloading {done / 1e6:,.0f}/{total / 1e6:,.0f} MB"
            for endpoint in self._store.list_endpoints():
                if endpoint_model_key(endpoint) == key:
                    self._store.set_status(endpoint.id, DEPLOYING, reason)

        return shown

    def _publish(self, loaded: LoadedModel) -> None:
        for endpoint in self._store.list_endpoints():
            if endpoint_model_key(endpoint) != loaded.key:
                continue
            if loaded.embedder is not None:
                self._store.set_status(endpoint.id, LIVE, "")
            elif not self._served_elsewhere(endpoint.id):
                self._store.set_status(endpoint.id, FAILED, loaded.error)
        loaded.published = True

    def get(self, endpoint: Endpoint) -> tuple[Embedder, Batcher]:
        """The loaded model of a Live endpoint, or UnavailableError saying why not."""
        loaded = self._models.get(endpoint_model_key(endpoint))
        if loaded is None or not loaded.done.is_set():
            raise UnavailableError(f"endpoint {endpoint.name!r} is {DEPLOYING}: model {endpoint.model} is loading")
        if loaded.embedder is None or loaded.batcher is None:
            raise UnavailableError(f"endpoint {endpoint.name!r} is {FAILED}: {loaded.error}")
        return loaded.embedder, loaded.batcher

    def wait(self, timeout: float | None = None) -> bool:
        """Block until every model started so far finished loading (tests, readiness)."""
        return all(m.done.wait(timeout) for m in list(self._models.values()))

    def loading(self) -> list[str]:
        return [k for k, m in self._models.items() if not m.done.is_set()]

    def close(self, load_timeout_s: float = 300.0) -> bool:
        """Wait for models still loading (a process must not exit while a loader thread is inside the engine:
        that aborts it), finish queued requests and stop every worker. False if a load outlived the timeout."""
        deadline = time.monotonic() + load_timeout_s
        for loader in list(self._loaders):
            loader.join(max(0.0, deadline - time.monotonic()))
        loaded_all = not any(loader.is_alive() for loader in self._loaders)
        for loaded in list(self._models.values()):
            if loaded.batcher is not None:
                loaded.batcher.close()
        return loaded_all
