"""The service of every inference route, two calls that return:

    endpoint = await service.authorize(ref, keys)     lookup (control store, never cached) + key check
    rows = await service.embed(endpoint, texts)       batch-size check, admission, tokenise, queue, rows back

A route reads its body between the two (``e5studio.http_body``: read, then ``parse(body, Shape)``), so a
caller without a valid key costs no body parsing and learns nothing about the body.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated

import numpy as np
from fastapi import Depends, FastAPI
from starlette.requests import Request

from e5studio.control.keys import verify_key
from e5studio.control.store import Endpoint, Store
from e5studio.errors import AuthError, ForbiddenError, InputError, NotFoundError
from e5studio.serving.batcher import estimate_tokens
from e5studio.serving.edge import CallRecord
from e5studio.serving.models import ModelPool

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


# Requests of a few short texts (single queries) are tokenised on the event loop: that costs less than the
# hand-off to a thread. Longer ones go to a worker thread, so the loop keeps answering others meanwhile.
INLINE_TOKENIZE_CHARS = 512
INLINE_TOKENIZE_TEXTS = 4


class InferenceService:
    def __init__(self, store: Store, pool: ModelPool, max_body_bytes: int) -> None:
        self.store = store
        self.pool = pool
        self.max_body_bytes = max_body_bytes  # of an inference request's body

    async def authorize(self, ref: EndpointRef, keys: list[str], note: CallRecord | None = None) -> Endpoint:
        """The endpoint ``ref`` names, if one of ``keys`` is its key: NotFoundError (404), AuthError (401, no
        key) or ForbiddenError (403) otherwise. Read fresh from the store at every call, so a rotated key or a
        deleted endpoint is refused at once on every replica. ``note``: the request's access-log record, which
        names the endpoint once it is found (refusals too)."""
        require_keys(keys)  # before any lookup: without a key nothing is learnt of what exists
        try:
            endpoint, key_hash = self.store.endpoint_for_call(ref.project, ref.endpoint)  # one query
        except (NotFoundError, InputError):  # unknown, or a name used in several projects
            self._require_a_valid_key(keys)
            raise
        if note is not None:
            note.endpoint, note.endpoint_id = endpoint.name, endpoint.id
        if not any([verify_key(key, key_hash) for key in keys]):  # each one checked (constant time)
            self._require_a_valid_key(keys)
            raise ForbiddenError(f"the key is not valid for endpoint {endpoint.name!r}")
        return endpoint

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
