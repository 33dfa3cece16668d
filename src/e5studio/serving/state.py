"""What the serving routes share, as one typed object: built by the composition root (``e5studio.app``),
reached by every route through one dependency."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, FastAPI
from starlette.requests import Request

from e5studio.control.job_runner import JobRunner
from e5studio.control.store import Store
from e5studio.serving.edge import Metrics
from e5studio.serving.models import ModelPool
from e5studio.serving.throttle import LoginThrottle
from e5studio.settings import ServeSettings

_APP_STATE_KEY = "serving"


@dataclass(frozen=True)
class ServingState:
    settings: ServeSettings
    store: Store
    pool: ModelPool  # one loaded model (embedder + batcher) per model key
    metrics: Metrics
    login_throttle: LoginThrottle  # failed admin logins per client address (shared with the web UI's login)
    jobs: JobRunner  # the server's job runner (the admin API submits knowledge-base jobs to it)


def install(app: FastAPI, state: ServingState) -> None:
    setattr(app.state, _APP_STATE_KEY, state)


def state_of(app: FastAPI) -> ServingState:
    state: ServingState = getattr(app.state, _APP_STATE_KEY)
    return state


def serving_state(request: Request) -> ServingState:
    """FastAPI dependency: the serving state of the app answering ``request``."""
    return state_of(request.app)


State = Annotated[ServingState, Depends(serving_state)]
