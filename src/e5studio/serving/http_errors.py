"""The one table from exceptions to HTTP status codes, and the one error body.

Every error answer of the API (and of the web UI's JSON calls) is JSON in the OpenAI shape (which the OpenAI
client reads and SambaStudio clients print): ``{"error": {"message": str, "type": str, "code": int}}``; the web
UI's pages show the same status and message as an HTML page. Routes and pages raise; the one error handler
(installed by ``e5studio.app``) answers.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException

from e5studio import errors

# Most specific first: the first class that matches decides.
STATUS_TABLE: list[tuple[type[BaseException], int, str]] = [
    (errors.PayloadTooLargeError, 413, "payload_too_large"),
    (errors.BodyTimeoutError, 408, "request_timeout"),
    (errors.ConflictError, 409, "conflict"),
    (errors.InputError, 400, "invalid_request_error"),
    (errors.ForbiddenError, 403, "permission_error"),
    (errors.AuthError, 401, "authentication_error"),  # LoginRequired too (the UI's pages redirect instead)
    (errors.NotFoundError, 404, "not_found_error"),
    (errors.CapacityError, 429, "rate_limit_error"),
    (errors.UnavailableError, 503, "unavailable_error"),
    (errors.ClientGone, 499, "client_closed_request"),
    (errors.ModelError, 500, "model_error"),
    (errors.E5StudioError, 500, "server_error"),
]


def status_for(exc: BaseException) -> tuple[int, str]:
    for cls, status, kind in STATUS_TABLE:
        if isinstance(exc, cls):
            return status, kind
    return 500, "server_error"


@dataclass(frozen=True)
class ErrorAnswer:
    """What an exception becomes in an HTTP answer."""

    status: int
    kind: str
    message: str
    headers: dict[str, str] = field(default_factory=dict)  # Retry-After on 429, Allow on 405


def describe(exc: BaseException, method: str, path: str) -> ErrorAnswer:
    """Any exception raised while answering ``method path`` as (status, kind, message): ours through the
    table, starlette's own (no such route, method not allowed), FastAPI's validation errors, and crashes
    (logged with their traceback; the answer names only the exception's type)."""
    if isinstance(exc, errors.E5StudioError):
        status, kind = status_for(exc)
        headers = {}
        if isinstance(exc, errors.CapacityError | errors.StoreUnavailableError):
            headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after_s)))
        return ErrorAnswer(status, kind, str(exc), headers)
    if isinstance(exc, HTTPException):
        message = "no such route" if exc.status_code == 404 else str(exc.detail)
        return ErrorAnswer(exc.status_code, "http_error", f"{message}: {method} {path}", dict(exc.headers or {}))
    if isinstance(exc, RequestValidationError):
        first: Any = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return ErrorAnswer(400, "invalid_request_error", f"{where}: {first.get('msg', 'invalid')}")
    return ErrorAnswer(500, "server_error", f"internal error: {type(exc).__name__}")


def log_crash(exc: BaseException, method: str, path: str, request_id: str) -> None:
    """An unexpected exception, logged with its traceback under the request id the answer carries."""
    logging.getLogger("e5studio").error("unhandled error on %s %s (request %s)", method, path, request_id,
                                        exc_info=exc)


def error_body(message: str, kind: str, status: int, request_id: str | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"message": message, "type": kind, "code": status}
    if request_id is not None:
        error["request_id"] = request_id  # the id the server logged the failure under
    return {"error": error}
