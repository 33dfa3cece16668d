"""The one table from exceptions to HTTP status codes, and the one error body.

Every error answer is JSON in the OpenAI shape (which the OpenAI client reads and SambaStudio clients print):
``{"error": {"message": str, "type": str, "code": int}}``. Routes raise; they never build error responses.
"""

from __future__ import annotations

from typing import Any

from e5studio import errors
from e5studio.serving.batcher import ClientGone

# Most specific first: the first class that matches decides.
STATUS_TABLE: list[tuple[type[BaseException], int, str]] = [
    (errors.PayloadTooLargeError, 413, "payload_too_large"),
    (errors.ConflictError, 409, "conflict"),
    (errors.InputError, 400, "invalid_request_error"),
    (errors.ForbiddenError, 403, "permission_error"),
    (errors.AuthError, 401, "authentication_error"),
    (errors.NotFoundError, 404, "not_found_error"),
    (errors.CapacityError, 429, "rate_limit_error"),
    (errors.UnavailableError, 503, "unavailable_error"),
    (ClientGone, 499, "client_closed_request"),
    (errors.ModelError, 500, "model_error"),
    (errors.E5StudioError, 500, "server_error"),
]


def status_for(exc: BaseException) -> tuple[int, str]:
    for cls, status, kind in STATUS_TABLE:
        if isinstance(exc, cls):
            return status, kind
    return 500, "server_error"


def error_body(message: str, kind: str, status: int) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "code": status}}
