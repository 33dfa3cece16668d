"""One exception hierarchy for the whole package.

Every error a user can cause or meet is an :class:`E5StudioError`; its subclass says which kind
(bad input, auth, capacity, not found, model). The CLI prints ``str(error)`` without a traceback and
the HTTP layer maps each class to one status code
(``e5studio.serving.http_errors.STATUS_TABLE``, used for the API and the web UI alike).
"""

from __future__ import annotations


class E5StudioError(Exception):
    """Base class of every error e5studio raises on purpose."""


class InputError(E5StudioError):
    """The caller sent something malformed or out of range."""


class AuthError(E5StudioError):
    """Missing or wrong credentials."""


class CapacityError(E5StudioError):
    """The server is full (queue bound reached) or a client is throttled; retry after ``retry_after_s``."""

    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class NotFoundError(E5StudioError):
    """A named thing (project, endpoint, dataset, job) does not exist."""


class ModelError(E5StudioError):
    """A model could not be resolved, read or run."""


class ClientGone(E5StudioError):
    """The client disconnected before its request was computed; nothing was computed for it."""


class LoginRequired(AuthError):
    """No valid web UI session: pages redirect to the login form, the UI's JSON calls answer 401."""

    def __init__(self, next_url: str) -> None:
        super().__init__("log in first: no valid session")
        self.next_url = next_url


class ConflictError(InputError):
    """The request clashes with existing state (a name already taken)."""


class UnavailableError(E5StudioError):
    """The target exists but cannot serve now (endpoint deploying or failed)."""


class StoreUnavailableError(UnavailableError):
    """The control store cannot be reached or did not answer within its bound (HTTP 503 with Retry-After).

    Retryable: nothing was changed by the call that met it."""

    def __init__(self, message: str, retry_after_s: float = 2.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class PayloadTooLargeError(InputError):
    """The request body is over the server's limit."""


class BodyTimeoutError(InputError):
    """The request body did not arrive within the server's read timeout."""


class ForbiddenError(AuthError):
    """Credentials were given but are not valid for this target."""


class ParamError(InputError):
    """A job parameter is unknown or out of range; ``field`` names it (for the form field to mark)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class SchemaError(E5StudioError):
    """The control store's schema cannot be used by this version: newer than it knows, or unrecognised."""


class Terminated(BaseException):
    """SIGTERM arrived: the train command stops like on Ctrl-C (checkpoints make ``--resume`` exact).

    A BaseException, like KeyboardInterrupt, so that no ``except Exception`` on the way swallows it. The job
    becomes Interrupted, unless it is Cancelled already: the server records a cancel before it signals, and
    sends a plain SIGTERM when it shuts down.
    """
