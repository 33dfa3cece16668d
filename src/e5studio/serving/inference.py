"""The service of every inference route, two calls that return:

    endpoint = await service.authorize(ref, keys)     lookup (the replica's copy of the store) + key check
    rows = await service.embed(endpoint, texts)       batch-size check, admission, tokenise, queue, rows back

A route reads its body between the two (``e5studio.http_body``: read, then ``parse(body, Shape)``), so a
caller without a valid key costs no body parsing and learns nothing about the body.

Endpoints and keys come from :class:`EndpointDirectory`, the replica's copy of every endpoint and key hash of
the control store: read again every ``REFRESH_S`` and at once after any write request this replica answers
(the edge calls :meth:`EndpointDirectory.changed` before the answer leaves), and used only while its read is at
most ``FRESH_S`` old and began after this replica's last write. So a key rotated or
an endpoint deleted through this replica is refused at its next request, and through another replica within
``FRESH_S``. A name the copy does not hold, or a copy too old, is looked up in the store (as before the copy,
off the event loop), which says exactly what is missing. When the store cannot be read ("fail static", as
Envoy and Kubernetes do), requests are answered from the last copy read: a key that opened an endpoint then
opens it now; anything else is 503 with Retry-After (never 500); one log line per outage and the metrics say so.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated

import numpy as np
import sqlalchemy as sa
from fastapi import Depends, FastAPI
from starlette.requests import Request

from e5studio.control.keys import hash_key, verify_key
from e5studio.control.store import Endpoint, Store
from e5studio.errors import AuthError, ForbiddenError, InputError, NotFoundError, StoreUnavailableError
from e5studio.serving.batcher import estimate_tokens
from e5studio.serving.edge import CallRecord, Metrics
from e5studio.serving.models import ModelPool

log = logging.getLogger("e5studio")

MISSING_KEY = ("missing endpoint key: send the header 'key: <endpoint key>' "
               "(or 'Authorization: Bearer <endpoint key>')")
INVALID_KEY = "the key is not valid"  # the same for every route and endpoint: it says nothing of what exists


@dataclass(frozen=True)
class EndpointRef:
    """How a request names its endpoint: ``endpoint`` (name or id) inside ``project`` (name or id), or, without
    a project, an endpoint name or id anywhere (OpenAI's ``model``)."""

    endpoint: str
    project: str | None = None


@dataclass(frozen=True)
class Embedded:
    rows: np.ndarray  # float32 [n, dim]
    tokens: int


def bearer_token(request: Request) -> str | None:
    """The credential of ``Authorization: Bearer <token>`` (OpenAI clients, the admin API)."""
    auth = request.headers.get("authorization", "")
    scheme, _, value = auth.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None


def request_keys(request: Request) -> list[str]:
    """The credentials a request sends: ``key: <key>`` (SambaStudio) and ``Authorization: Bearer <key>``
    (OpenAI), in that order; a request is let in if any of them is valid (a stray header never hides a
    valid one)."""
    keys = []
    key = request.headers.get("key", "").strip()
    if key:
        keys.append(key)
    bearer = bearer_token(request)
    if bearer is not None and bearer not in keys:
        keys.append(bearer)
    return keys


def require_keys(keys: list[str]) -> list[str]:
    """``keys``, or AuthError (HTTP 401) when the request sent none."""
    if not keys:
        raise AuthError(MISSING_KEY)
    return keys


# ------------------------------------------------------------------------------------------ the copy

REFRESH_S = 0.5  # how often a replica reads its copy of the endpoints and key hashes again
FRESH_S = 1.0  # a copy older than this is not used while the store answers (the bound on rotations elsewhere)
STORE_WAIT_S = 1.0  # a read of the store taking longer than this counts as the store away (a hung store)
# what a store that cannot be reached raises (the store's own StoreUnavailableError, and the driver's and the
# pool's errors where a store does not translate them yet)
STORE_AWAY: tuple[type[BaseException], ...] = (
    StoreUnavailableError, sa.exc.OperationalError, sa.exc.TimeoutError, sa.exc.InterfaceError, TimeoutError,
    ConnectionError)
STORE_AWAY_MESSAGE = ("the control store cannot be reached and this key was not valid for this endpoint at the "
                      "last read of it: retry later")
Entry = tuple[Endpoint, str]  # an endpoint and its key hash


class Copy:
    """One read of every endpoint and key hash, indexed as the store's lookups find them (ids before names)."""

    def __init__(self, rows: list[Entry], generation: int, read_at: float) -> None:
        self.generation = generation  # of this process's writes when the read began
        self.read_at = read_at  # time.monotonic() when the read began
        self._by_id: dict[str, Entry] = {}
        self._by_name: dict[str, list[Entry]] = {}
        self._in_project: dict[tuple[str, str], Entry] = {}
        self._projects: dict[str, str] = {}  # project name or id -> project id
        self._hashes = {key_hash for _, key_hash in rows}
        for entry in rows:
            endpoint = entry[0]
            self._by_id[endpoint.id] = entry
            self._by_name.setdefault(endpoint.name, []).append(entry)
            self._in_project[(endpoint.project_id, endpoint.name)] = entry
            self._projects.setdefault(endpoint.project_name, endpoint.project_id)
        for endpoint, _ in rows:  # a project's id wins over another project's name
            self._projects[endpoint.project_id] = endpoint.project_id

    def find(self, ref: EndpointRef) -> Entry | None:
        """What ``endpoint_for_call`` finds for ``ref`` (None where it would say not found or ambiguous)."""
        by_id = self._by_id.get(ref.endpoint)
        if ref.project is None:
            named = self._by_name.get(ref.endpoint, [])
            return by_id or (named[0] if len(named) == 1 else None)
        project_id = self._projects.get(ref.project)
        if project_id is None:
            return None
        if by_id is not None and by_id[0].project_id == project_id:
            return by_id
        return self._in_project.get((project_id, ref.endpoint))

    def opens_any(self, keys: list[str]) -> bool:
        """Whether one of ``keys`` is some endpoint's key."""
        return any(hash_key(key) in self._hashes for key in keys)


FRESH, CHECK, AWAY = "fresh", "check", "away"  # use the copy / ask the store / the store is away: the copy


class EndpointDirectory:
    """The replica's copy of the store's endpoints and key hashes (see the module's docstring)."""

    def __init__(self, store: Store, metrics: Metrics | None = None, refresh_s: float = REFRESH_S,
                 fresh_s: float = FRESH_S) -> None:
        self.store = store
        self._metrics = metrics
        self.refresh_s, self.fresh_s = refresh_s, fresh_s
        self._copy: Copy | None = None
        self._generation = 0  # this replica's write requests (any of them may change an endpoint or a key)
        self._reading_since: float | None = None
        self._away_since: float | None = None  # the outage this replica is in (None: the store answers)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def current(self) -> tuple[Copy | None, str]:
        """The copy and how to use it: FRESH (answer from it), CHECK (ask the store), AWAY (the store cannot be
        read: the copy is all there is)."""
        copy, now, reading = self._copy, time.monotonic(), self._reading_since
        if reading is not None and now - reading > STORE_WAIT_S and self._away_since is None:
            self.failed(TimeoutError(f"a read of it has not been answered for {now - reading:.1f} s"))
        if self._away_since is not None and self._thread is not None:  # (without the reader, nothing would
            return copy, AWAY                                            # notice the store back: ask it again)
        if copy is not None and copy.generation == self._generation and now - copy.read_at <= self.fresh_s:
            return copy, FRESH
        return copy, CHECK

    def refresh(self) -> None:
        """Read the copy again (the refresher thread's round; tests call it too)."""
        generation, started = self._generation, time.monotonic()
        self._reading_since = started
        try:
            rows = self.store.endpoints_and_key_hashes()
        except STORE_AWAY as exc:
            self.failed(exc)
            return
        finally:
            self._reading_since = None
        self._copy = Copy(rows, generation, started)  # one assignment: a reader sees the whole copy or none
        if self._away_since is not None:
            log.warning("the control store answers again after %.1f s: endpoints and keys are checked against it",
                        time.monotonic() - self._away_since)
            self._away_since = None
            if self._metrics is not None:
                self._metrics.store_reachable.set(1)

    def failed(self, exc: BaseException) -> None:
        """The store could not be read: from now until a read succeeds, requests are answered from the copy."""
        if self._away_since is not None:
            return
        self._away_since = time.monotonic()
        copy = self._copy
        age = f"read {time.monotonic() - copy.read_at:.1f} s ago" if copy is not None else "none read yet"
        log.warning("the control store cannot be read (%s): inference requests are answered from this replica's "
                    "last copy of the endpoints and keys (%s); other keys get 503 until the store is back",
                    f"{type(exc).__name__}: {exc}".splitlines()[0][:300], age)
        if self._metrics is not None:
            self._metrics.store_outages.inc()
            self._metrics.store_reachable.set(0)

    def answered_from_copy(self) -> None:
        if self._metrics is not None:
            self._metrics.fail_static_requests.inc()

    def changed(self) -> None:
        """A write answered by this replica: the copy is not used until it has been read again."""
        self._generation += 1
        self._wake.set()

    def start(self) -> None:
        """Read the copy now and every ``refresh_s`` on a thread, and again after each write of this replica."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="e5studio-endpoint-copy", daemon=True)
        self._thread.start()

    def close(self) -> None:
        if self._thread is None:
            return
        self._stop.set()
        self._wake.set()
        self._thread.join(10)
        self._thread = None

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            try:
                self.refresh()
            except Exception:  # a bug, not an outage: requests ask the store meanwhile
                log.exception("reading the endpoints and keys failed")
            self._wake.wait(self.refresh_s)


# Requests of a few short texts (single queries) are tokenised on the event loop: that costs less than the
# hand-off to a thread. Longer ones go to a worker thread, so the loop keeps answering others meanwhile.
INLINE_TOKENIZE_CHARS = 512
INLINE_TOKENIZE_TEXTS = 4


class InferenceService:
    def __init__(self, store: Store, pool: ModelPool, max_body_bytes: int,
                 directory: EndpointDirectory | None = None) -> None:
        self.store = store
        self.pool = pool
        self.max_body_bytes = max_body_bytes  # of an inference request's body
        self.directory = directory or EndpointDirectory(store)

    async def authorize(self, ref: EndpointRef, keys: list[str], note: CallRecord | None = None) -> Endpoint:
        """The endpoint ``ref`` names, if one of ``keys`` is its key: NotFoundError (404), AuthError (401, no
        key) or ForbiddenError (403) otherwise; StoreUnavailableError (503) while the store cannot be read and
        the replica's last copy does not let the key in. ``note``: the request's access-log record, which names
        the endpoint once it is found (refusals too)."""
        require_keys(keys)  # before any lookup: without a key nothing is learnt of what exists
        copy, mode = self.directory.current()
        found = copy.find(ref) if copy is not None and mode != CHECK else None
        if mode == AWAY:
            return self._from_copy(found, keys, note)
        if found is None:  # not in a fresh copy (unknown, ambiguous, or new): the store says exactly what
            try:
                found = await asyncio.wait_for(asyncio.to_thread(self._lookup, ref, keys), STORE_WAIT_S)
            except STORE_AWAY as exc:  # TimeoutError among them: a store that does not answer
                self.directory.failed(exc)
                copy, _ = self.directory.current()
                return self._from_copy(copy.find(ref) if copy is not None else None, keys, note)
        endpoint, key_hash = found
        if note is not None:
            note.endpoint, note.endpoint_id = endpoint.name, endpoint.id
        if not any([verify_key(key, key_hash) for key in keys]):  # each one checked (constant time)
            if mode == FRESH and copy is not None:
                opens = copy.opens_any(keys)
            else:
                try:
                    opens = bool(await asyncio.wait_for(asyncio.to_thread(self.store.endpoints_opened_by, keys),
                                                        STORE_WAIT_S))
                except STORE_AWAY as exc:
                    self.directory.failed(exc)
                    return self._from_copy(None, keys, note)
            if not opens:
                raise AuthError(INVALID_KEY)
            raise ForbiddenError(f"the key is not valid for endpoint {endpoint.name!r}")
        return endpoint

    def _lookup(self, ref: EndpointRef, keys: list[str]) -> Entry:
        """The endpoint and key hash from the store (on a worker thread)."""
        try:
            return self.store.endpoint_for_call(ref.project, ref.endpoint)  # one query
        except (NotFoundError, InputError):  # unknown, or a name used in several projects
            self._require_a_valid_key(keys)
            raise

    def _from_copy(self, found: Entry | None, keys: list[str], note: CallRecord | None) -> Endpoint:
        """The store is away: the endpoint, if one of ``keys`` was its key at the last read (else 503)."""
        if found is None or not any([verify_key(key, found[1]) for key in keys]):
            raise StoreUnavailableError(STORE_AWAY_MESSAGE, retry_after_s=max(1.0, math.ceil(REFRESH_S * 4)))
        self.directory.answered_from_copy()
        if note is not None:
            note.endpoint, note.endpoint_id = found[0].name, found[0].id
        return found[0]

    def _require_a_valid_key(self, keys: list[str]) -> None:
        """AuthError (401, the same answer whatever was asked for) unless one of ``keys`` opens some endpoint:
        a caller without a valid key learns nothing of which projects or endpoints exist; a client with a key
        of its own is told what is missing (404) or not its own (403)."""
        if not self.store.endpoints_opened_by(keys):
            raise AuthError(INVALID_KEY)

    async def embed(self, endpoint: Endpoint, texts: list[str], dimensions: object = None,
                    client_left: Callable[[], Awaitable[None]] | None = None,
                    note: CallRecord | None = None, input_type: str | None = None) -> Embedded:
        """Rows (float32 [n, dim]) of ``texts`` for a caller whose right to ``endpoint`` is settled (by
        :meth:`authorize`, or by the web UI's admin session). ``dimensions``, when given, must equal the model's
        (checked before any compute). If ``client_left`` returns while the request is queued, the request is
        dropped before compute (ClientGone). ``note`` gets the number of texts and tokens. ``input_type``
        (``query``, ``passage``, ``none``; default the endpoint's own) adds that E5 prefix where a text lacks it."""
        if len(texts) > endpoint.batch_size:
            raise InputError(f"Expected a Tensor with batch size <= {endpoint.batch_size}, "
                             f"got batch size: {len(texts)}")
        embedder, batcher = self.pool.get(endpoint)
        if dimensions is not None and dimensions != embedder.dim:
            raise InputError(f"'dimensions' must be {embedder.dim} for this model (it has no shortened "
                             f"embeddings), got {dimensions!r}")
        # admission before any work: an overloaded model says no before the texts are tokenised
        role = input_type or endpoint.input_type
        prefix = None if role == "none" else role
        with batcher.reserve(estimate_tokens(texts, embedder.max_length)) as reservation:
            if len(texts) <= INLINE_TOKENIZE_TEXTS and sum(len(t) for t in texts) <= INLINE_TOKENIZE_CHARS:
                sequences = embedder.tokenize(texts, prefix)
            else:
                sequences = await asyncio.to_thread(embedder.tokenize, texts, prefix)
            rows = await batcher.submit(sequences, disconnected=client_left, reservation=reservation)
        tokens = sum(len(s) for s in sequences)
        if note is not None:
            note.inputs, note.tokens = len(texts), tokens
        return Embedded(rows=rows, tokens=tokens)

    def endpoints_for_key(self, keys: list[str]) -> list[Endpoint]:
        """The endpoints ``keys`` open (the admin token opens all); AuthError if none."""
        if not keys:
            raise AuthError("missing key: send 'Authorization: Bearer <endpoint key>'")
        if any([self.store.check_admin_token(key) for key in keys]):
            return self.store.list_endpoints()
        endpoints = self.store.endpoints_opened_by(keys)  # one query, however many endpoints there are
        if not endpoints:
            raise AuthError(INVALID_KEY)
        return endpoints


_APP_STATE_KEY = "inference"


def install(app: FastAPI, service: InferenceService) -> None:
    """Make ``service`` the one the inference routes of ``app`` reach (the composition root calls this)."""
    setattr(app.state, _APP_STATE_KEY, service)


async def _service(request: Request) -> InferenceService:
    # async: FastAPI runs a plain-function dependency on a thread pool, a hand-off per request
    service: InferenceService = getattr(request.app.state, _APP_STATE_KEY)
    return service


Service = Annotated[InferenceService, Depends(_service)]
