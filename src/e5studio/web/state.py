"""What the web UI's pages share, as one typed object: built by the composition root (``e5studio.app``),
reached by every page through one dependency.

The UI does not import the serving half: what it needs of it (deploy an endpoint's model, the endpoint's
URLs and curl line, its request counts, the *Try it* embedding) comes in as plain callables typed here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Protocol

import numpy as np
from fastapi import Depends, FastAPI
from starlette.requests import Request

from e5studio.control.job_runner import JobRunner
from e5studio.control.store import Endpoint, Store
from e5studio.settings import ServeSettings
from e5studio.web.sessions import SessionStore

_APP_STATE_KEY = "web"


class RequestStats(Protocol):
    """Requests an endpoint answered since the server started, and their latency."""

    @property
    def count(self) -> int: ...

    @property
    def errors(self) -> int: ...

    @property
    def mean_ms(self) -> float | None: ...

    @property
    def p50_ms(self) -> float | None: ...


class Rows(Protocol):
    """Embedded texts: float32 [n, dim] rows and the tokens they took."""

    @property
    def rows(self) -> np.ndarray: ...

    @property
    def tokens(self) -> int: ...


class EmbedTexts(Protocol):
    """Embed ``texts`` (at most the endpoint's batch size) through ``endpoint``; the caller has the right to."""

    async def __call__(self, request: Request, endpoint: Endpoint, texts: list[str]) -> Rows: ...


class LoginGuard(Protocol):
    """Failed logins per client address: ``check`` raises CapacityError (HTTP 429) for a throttled address."""

    def check(self, address: str) -> None: ...

    def failed(self, address: str) -> None: ...


@dataclass(frozen=True)
class WebState:
    settings: ServeSettings
    store: Store
    jobs: JobRunner
    sessions: SessionStore
    deploy: Callable[[Endpoint], None]  # bring the endpoint to Live (load its model)
    endpoint_urls: Callable[[Endpoint], dict[str, str]]  # URLs by API shape: nlp, generic, generic_v2, openai_base
    curl_line: Callable[[str, str], str]  # (url, key) -> a curl command that embeds one query
    endpoint_stats: Callable[[str], RequestStats]  # by endpoint id
    embed: EmbedTexts  # the *Try it* box
    login_guard: LoginGuard  # the login form's failures, throttled per client address


def install(app: FastAPI, state: WebState) -> None:
    setattr(app.state, _APP_STATE_KEY, state)


def web_state(request: Request) -> WebState:
    """FastAPI dependency: the web state of the app answering ``request``."""
    state: WebState = getattr(request.app.state, _APP_STATE_KEY)
    return state


UI = Annotated[WebState, Depends(web_state)]
