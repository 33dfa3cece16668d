"""Puts the web UI on an app: its routers, static files, session store, and HTML error pages."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from e5studio.web import datasets, endpoints, jobs
from e5studio.web.common import HERE, LoginRequired, login_url, render
from e5studio.web.sessions import SessionStore

UI_PREFIX = "/ui"


def is_ui_page(request: Request) -> bool:
    """A browser page of the UI (errors are HTML pages there; the UI's own JSON calls get JSON)."""
    path = request.url.path
    return (path == UI_PREFIX or path.startswith(UI_PREFIX + "/")) and not path.startswith(UI_PREFIX + "/api/")


def error_page(request: Request, status: int, message: str) -> Response:
    return render(request, "error.html", status_code=status, status=status, message=message)


def mount_ui(app: FastAPI) -> None:
    app.state.ui_sessions = SessionStore()

    @app.exception_handler(LoginRequired)
    async def on_login_required(request: Request, exc: LoginRequired) -> Response:
        if is_ui_page(request) and request.method == "GET":
            return RedirectResponse(login_url(exc.next_url), status_code=303)
        return JSONResponse({"error": {"message": "log in first: no valid session", "type": "authentication_error",
                                       "code": 401}}, status_code=401)

    @app.get(UI_PREFIX, include_in_schema=False)
    async def ui_root() -> Response:
        return RedirectResponse(UI_PREFIX + "/", status_code=307)

    app.include_router(endpoints.public, include_in_schema=False)
    app.include_router(endpoints.router, include_in_schema=False)
    app.include_router(datasets.router, include_in_schema=False)
    app.include_router(jobs.router, include_in_schema=False)
    app.mount(UI_PREFIX + "/static", StaticFiles(directory=HERE / "static"), name="ui-static")
