"""What every inference route does after parsing its API shape: endpoint lookup, key check, batch-size
check, tokenise, queue, rows back. Routes only translate shapes."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

import numpy as np
from starlette.requests import Request

from e5studio.control.store import Endpoint, Store
from e5studio.errors import AuthError, ForbiddenError, InputError, PayloadTooLargeError
from e5studio.serving.metrics import Metrics
from e5studio.serving.models import ModelPool


@dataclass(frozen=True)
class Embedded:
    rows: np.ndarray  # float32 [n, dim]
    tokens: int


def request_key(request: Request) -> str | None:
    """The endpoint key from ``key: <key>`` (SambaStudio) or ``Authorization: Bearer <key>`` (OpenAI)."""
    key = request.headers.get("key")
    if key:
        return key.strip()
    auth = request.headers.get("authorization", "")
    scheme, _, value = auth.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None


async def read_json(request: Request, limit: int) -> dict[str, Any]:
    """The body as a JSON object, streamed with a size limit; InputError naming what is wrong."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLargeError(f"request body is {int(declared)} bytes; the limit is {limit}")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLargeError(f"request body is over the limit of {limit} bytes")
        chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw.strip():
        raise InputError("request body is empty; expected a JSON object")
    try:
        body = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise InputError("request body is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"request body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    if not isinstance(body, dict):
        raise InputError(f"request body must be a JSON object, got {type(body).__name__}")
    return body


def string_list(value: Any, field: str) -> list[str]:
    """A non-empty list of strings (a bare string counts as a list of one only where the caller says so)."""
    if not isinstance(value, list):
        raise InputError(f"'{field}' must be a list of strings, got {_json_type(value)}")
    if not value:
        raise InputError(f"'{field}' is an empty list; send at least one text")
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise InputError(f"'{field}[{i}]' must be a string, got {_json_type(item)}")
    return value


def _json_type(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null",
            int: "number", float: "number"}.get(type(value), type(value).__name__)


class InferenceService:
    def __init__(self, store: Store, pool: ModelPool, metrics: Metrics, max_body_bytes: int) -> None:
        self.store = store
        self.pool = pool
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes

    def authorize(self, endpoint: Endpoint, request: Request) -> None:
        key = request_key(request)
        if key is None:
            raise AuthError("missing endpoint key: send the header 'key: <endpoint key>' "
                            "(or 'Authorization: Bearer <endpoint key>')")
        if not self.store.check_endpoint_key(endpoint.id, key):
            raise ForbiddenError(f"the key is not valid for endpoint {endpoint.name!r}")

    async def embed(self, request: Request, endpoint: Endpoint, texts: list[str],
                    dimensions: object = None) -> Embedded:
        """Key already checked. Batch-size check, tokenise, queue, rows (float32 [n, dim]).
        ``dimensions``, when given, must equal the model's (checked before any compute)."""
        if len(texts) > endpoint.batch_size:
            raise InputError(f"Expected a Tensor with batch size <= {endpoint.batch_size}, "
                             f"got batch size: {len(texts)}")
        embedder, batcher = self.pool.get(endpoint)
        if dimensions is not None and dimensions != embedder.dim:
            raise InputError(f"'dimensions' must be {embedder.dim} for this model (it has no shortened "
                             f"embeddings), got {dimensions!r}")
        sequences = await asyncio.to_thread(embedder.tokenize, texts)
        rows = await batcher.submit(sequences, disconnected=lambda: _disconnect(request))
        return Embedded(rows=rows, tokens=sum(len(s) for s in sequences))


async def _disconnect(request: Request) -> None:
    """Returns once the client has gone (the body was read already, so the next message is the disconnect)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return
