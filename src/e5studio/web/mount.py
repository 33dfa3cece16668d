"""Puts the web UI on an app (its state, routers and static files) and shows errors on its pages.

The app's one error handler (``e5studio.app``) decides every status from the one status table; for a page of
the UI it asks :func:`error_page` for the HTML answer.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from e5studio.errors import LoginRequired
from e5studio.web import datasets, endpoints, jobs, kb
from e5studio.web.common import HERE, login_url, render
from e5studio.web.state import WebState, install

UI_PREFIX = "/ui"


def is_ui_page(request: Request) -> bool:
    """A browser page of the UI (errors are HTML pages there; the UI's own JSON calls get JSON)."""
    path = request.url.path
    return (path == UI_PREFIX or path.startswith(UI_PREFIX + "/")) and not path.startswith(UI_PREFIX + "/api/")


def error_page(request: Request, status: int, message: str, error: BaseException) -> Response | None:
    """The answer to ``error`` on a page of the UI (None elsewhere): a page that needs a session sends the
    browser to the login form; any other error is an HTML page with the status and message."""
    if not is_ui_page(request):
        return None
    if isinstance(error, LoginRequired) and request.method == "GET":
        return RedirectResponse(login_url(error.next_url), status_code=303)
    return render(request, "error.html", status_code=status, status=status, message=message)


def mount_ui(app: FastAPI, state: WebState) -> None:
    install(app, state)

    @app.get(UI_PREFIX, include_in_schema=False)
    async def ui_root() -> Response:
        return RedirectResponse(UI_PREFIX + "/", status_code=307)

    # browsers ask for /favicon.ico on every site whatever the page links: a 404 there is a console error
    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon() -> Response:
        return FileResponse(HERE / "static" / "favicon.ico", media_type="image/x-icon",
                            headers={"Cache-Control": "public, max-age=86400"})

    app.include_router(endpoints.public, include_in_schema=False)
    app.include_router(endpoints.router, include_in_schema=False)
    app.include_router(datasets.router, include_in_schema=False)
    app.include_router(jobs.router, include_in_schema=False)
    app.include_router(kb.router, include_in_schema=False)
    app.mount(UI_PREFIX + "/static", StaticFiles(directory=HERE / "static"), name="ui-static")
