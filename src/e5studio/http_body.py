"""The one reader of HTTP request bodies (the inference API, the admin API and the web UI) and the one writer
of vector answers.

Reading: the body is streamed under a size limit (a declared ``Content-Length`` over it is refused before a
byte is read), parsed as JSON with every value checked (NaN/Infinity, huge numbers, nesting, lone surrogates),
then judged against a pydantic model (:class:`RequestBody`) that is also the OpenAPI document of the route.
Every refusal is an :class:`~e5studio.errors.InputError` that names the field.

Writing: :func:`vectors_answer` renders numpy rows with orjson once, not element by element.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, TypeVar

import numpy as np
import orjson
from pydantic import BaseModel, ConfigDict, ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Message

from e5studio.errors import InputError, PayloadTooLargeError

MAX_JSON_DEPTH = 32  # no request shape nests deeper than 4
MAX_INT_DIGITS = 30  # an id or a count; longer numbers are refused, not silently changed
_SURROGATE = re.compile("[\ud800-\udfff]")

# ------------------------------------------------------------------------------------------ the bytes


def check_declared(request: Request, limit: int, what: str = "request body") -> None:
    """PayloadTooLargeError when the declared ``Content-Length`` is over ``limit`` (nothing is read)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLargeError(f"{what} is {int(declared)} bytes; the limit is {limit}")


async def read_bytes(request: Request, limit: int, what: str = "request body") -> bytes:
    """The body, streamed; PayloadTooLargeError as soon as it is over ``limit`` (chunked bodies included)."""
    check_declared(request, limit, what)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLargeError(f"{what} is over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def limited(request: Request, limit: int, what: str) -> Request:
    """The same request with a receive channel that stops (HTTP 413) after ``limit`` bytes: for readers that
    take the request itself (starlette's form parser)."""
    check_declared(request, limit, what)
    received = 0

    async def receive() -> Message:
        nonlocal received
        message = await request.receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                raise PayloadTooLargeError(f"{what} is over the limit of {limit} bytes")
        return message

    return Request(request.scope, receive)


async def client_left(request: Request) -> None:
    """Returns once the client has gone (call it after the body was read: the next message is the disconnect)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


# ------------------------------------------------------------------------------------------ JSON values


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
    raw = await read_bytes(request, limit)
    if not raw.strip():
        raise InputError("request body is empty; expected a JSON object")
    body = parse_json(raw)
    if not isinstance(body, dict):
        raise InputError(f"request body must be a JSON object, got {type(body).__name__}")
    return body


# ------------------------------------------------------------------------------------------ shapes


class RequestBody(BaseModel):
    """A request shape: the validation of a parsed body and the OpenAPI document of its route. Strict: JSON
    values are taken as they are (no string to number, no boolean as an integer)."""

    model_config = ConfigDict(strict=True)

    @classmethod
    def refusal(cls, body: dict[str, Any], error: ValidationError) -> str:
        """What to tell the client when ``body`` does not fit (a shape says it in its own words)."""
        first = error.errors(include_url=False)[0]
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in first["loc"]).lstrip(".")
        return f"'{where}': {first['msg']}"


Shape = TypeVar("Shape", bound=RequestBody)


def parse(body: dict[str, Any], shape: type[Shape]) -> Shape:
    """``body`` as ``shape``; InputError naming the first field that does not fit."""
    try:
        return shape.model_validate(body)
    except ValidationError as exc:
        raise InputError(shape.refusal(body, exc)) from None


def json_type(value: Any) -> str:
    """The JSON name of a parsed value's type, for messages."""
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null",
            int: "number", float: "number"}.get(type(value), type(value).__name__)


# ------------------------------------------------------------------------------------------ answers


def float64_rows(rows: np.ndarray) -> np.ndarray:
    """The rows as float64 (exact for float32), contiguous: what orjson writes as numbers, each in the
    shortest form that reads back as the same float64 (as ``json.dumps(rows.tolist())`` writes it)."""
    return np.ascontiguousarray(rows, dtype=np.float64)


def vectors_answer(content: dict[str, Any]) -> Response:
    """A 200 ``application/json`` answer of ``content`` (dicts, lists, str, int, float64 numpy arrays),
    rendered once by orjson (FastAPI's default walks every float in Python, on the event loop)."""
    try:
        body = orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)
    except TypeError:  # e.g. an id beyond 64 bits: Python's encoder writes any int
        body = json.dumps(content, default=_as_list, ensure_ascii=False, allow_nan=False,
                          separators=(",", ":")).encode("utf-8")
    return Response(body, media_type="application/json")


def _as_list(value: object) -> object:
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")
