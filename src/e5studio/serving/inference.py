"""The one service call of every inference route: endpoint lookup, key check, the texts, batch-size check,
tokenise, queue, rows back. Routes only translate their API shape into a list of texts and the rows back.

    route (API shape) -> InferenceService.embed -> Batcher (queue, token-budget batches) -> Embedder

The texts are read only after the key check, so a caller without a valid key costs no body parsing and
learns nothing about the body.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from starlette.requests import Request

from e5studio.control.keys import verify_key
from e5studio.control.store import Endpoint, Store
from e5studio.errors import AuthError, ForbiddenError, InputError, PayloadTooLargeError
from e5studio.serving.access_log import call_record
from e5studio.serving.batcher import estimate_tokens
from e5studio.serving.models import ModelPool

TextReader = Callable[[], Awaitable[list[str]]]
MAX_JSON_DEPTH = 32  # no request shape nests deeper than 4
MAX_INT_DIGITS = 30  # an id or a count; longer numbers are refused, not silently changed
_SURROGATE = re.compile("[\ud800-\udfff]")


@dataclass(frozen=True)
class EndpointRef:
    """How a request names its endpoint: ``endpoint`` (name or id) inside ``project`` (name or id), or, without
    a project, an endpoint name or id anywhere (OpenAI's ``model``)."""

    endpoint: str
    project: str | None = None


@dataclass(frozen=True)
class Embedded:
    endpoint: Endpoint
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


def _refuse_constant(name: str) -> Any:
    raise InputError(f"request body has {name}: not a JSON number (numbers must be finite)")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise InputError(f"request body has the number {text[:40]}, out of range (numbers must be finite)")
    return value


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise InputError(f"request body has a number of {len(text.lstrip('-'))} digits; at most {MAX_INT_DIGITS}")
    return int(text)


def parse_json(raw: bytes) -> Any:
    """JSON text as Python values; InputError naming the problem for anything not JSON or out of range
    (NaN/Infinity, numbers that overflow or have too many digits, nesting deeper than ``MAX_JSON_DEPTH``,
    strings with lone surrogates, which no UTF-8 text can hold)."""
    try:
        value = json.loads(raw.decode("utf-8"), parse_constant=_refuse_constant, parse_float=_finite_float,
                           parse_int=_bounded_int)
    except UnicodeDecodeError:
        raise InputError("request body is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"request body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise InputError(f"request body is nested too deeply (at most {MAX_JSON_DEPTH} levels)") from None
    _check_values(value)
    return value


def _check_values(value: Any) -> None:
    """Nesting depth and lone surrogates, with the path of the first offending value."""
    stack: list[tuple[Any, str, int]] = [(value, "", 0)]
    while stack:
        item, path, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise InputError(f"request body is nested too deeply at {path!r} (at most {MAX_JSON_DEPTH} levels)")
        if isinstance(item, str):
            _check_text(item, path)
        elif isinstance(item, list):
            stack.extend((v, f"{path}[{i}]", depth + 1) for i, v in enumerate(item))
        elif isinstance(item, dict):
            for k, v in item.items():
                _check_text(k, f"{path}.{k!r}" if path else repr(k))
                stack.append((v, f"{path}.{k}" if path else k, depth + 1))


def _check_text(text: str, path: str) -> None:
    found = _SURROGATE.search(text)
    if found is not None:
        raise InputError(f"'{path}' has a lone surrogate (U+{ord(found.group()):04X}) at character {found.start()}:"
                         f" strings must be valid Unicode (encodable as UTF-8)")


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
    body = parse_json(raw)
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


# Requests of a few short texts (single queries) are tokenised on the event loop: 0.07 ms for a 60-character
# query, 0.33-0.42 ms at the limit (1 or 4 texts, 512 characters; MiniLM's tokenizer, this machine); the thread
# hand-off it replaces cost 0.23 ms more per single query, measured in the server.
# Longer ones go to a worker thread, so the loop keeps answering others meanwhile.
INLINE_TOKENIZE_CHARS = 512
INLINE_TOKENIZE_TEXTS = 4


class InferenceService:
    def __init__(self, store: Store, pool: ModelPool) -> None:
        self.store = store
        self.pool = pool

    async def embed(self, request: Request, ref: EndpointRef, read_texts: TextReader,
                    dimensions: object = None) -> Embedded:
        """Look ``ref`` up, check the request's key, read its texts, then :meth:`run` them. What the request
        did is noted in its access-log record."""
        endpoint, key_hash = self.store.endpoint_for_call(ref.project, ref.endpoint)  # one query, never cached
        record = call_record(request)
        record.endpoint, record.endpoint_id = endpoint.name, endpoint.id
        self.check_key(endpoint, request_keys(request), key_hash)
        texts = await read_texts()
        result = await self.run(request, endpoint, texts, dimensions)
        record.inputs, record.tokens = len(texts), result.tokens
        return result

    async def run(self, request: Request, endpoint: Endpoint, texts: list[str],
                  dimensions: object = None) -> Embedded:
        """Batch-size check, tokenise, queue: rows (float32 [n, dim]) for a caller whose right to ``endpoint``
        is settled (by :meth:`embed`, or by the web UI's admin session). ``dimensions``, when given, must equal
        the model's (checked before any compute). A client that leaves while queued is dropped before compute."""
        if len(texts) > endpoint.batch_size:
            raise InputError(f"Expected a Tensor with batch size <= {endpoint.batch_size}, "
                             f"got batch size: {len(texts)}")
        embedder, batcher = self.pool.get(endpoint)
        if dimensions is not None and dimensions != embedder.dim:
            raise InputError(f"'dimensions' must be {embedder.dim} for this model (it has no shortened "
                             f"embeddings), got {dimensions!r}")
        # admission before any work: an overloaded model says no before the texts are tokenised
        with batcher.reserve(estimate_tokens(texts, embedder.max_length)) as reservation:
            if len(texts) <= INLINE_TOKENIZE_TEXTS and sum(len(t) for t in texts) <= INLINE_TOKENIZE_CHARS:
                sequences = embedder.tokenize(texts)  # a short request: less than a thread hand-off costs
            else:
                sequences = await asyncio.to_thread(embedder.tokenize, texts)
            rows = await batcher.submit(sequences, disconnected=lambda: _disconnect(request),
                                        reservation=reservation)
        return Embedded(endpoint=endpoint, rows=rows, tokens=sum(len(s) for s in sequences))

    @staticmethod
    def check_key(endpoint: Endpoint, keys: list[str], key_hash: str) -> None:
        """Refuse unless one of ``keys`` is the endpoint's key (``key_hash``, read with the endpoint)."""
        if not keys:
            raise AuthError("missing endpoint key: send the header 'key: <endpoint key>' "
                            "(or 'Authorization: Bearer <endpoint key>')")
        if not any([verify_key(key, key_hash) for key in keys]):  # each one checked (constant time)
            raise ForbiddenError(f"the key is not valid for endpoint {endpoint.name!r}")

    def endpoints_for_key(self, keys: list[str]) -> list[Endpoint]:
        """The endpoints ``keys`` open (the admin token opens all); AuthError if none."""
        if not keys:
            raise AuthError("missing key: send 'Authorization: Bearer <endpoint key>'")
        endpoints = self.store.list_endpoints()
        if any([self.store.check_admin_token(key) for key in keys]):
            return endpoints
        endpoints = [e for e in endpoints if any([self.store.check_endpoint_key(e.id, key) for key in keys])]
        if not endpoints:
            raise AuthError("the key is not valid for any endpoint")
        return endpoints


async def _disconnect(request: Request) -> None:
    """Returns once the client has gone (the body was read already, so the next message is the disconnect)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return
