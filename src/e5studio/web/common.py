"""What every page of the web UI shares: templates, the session dependency, CSRF-checked form reading, the
JSON body of the UI's own JavaScript calls (both read by ``e5studio.http_body``, as the API reads its bodies)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import Depends, Request
from fastapi.responses import HTMLResponse
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.datastructures import FormData

from e5studio import __version__, http_body
from e5studio.control.store import LIVE
from e5studio.errors import ForbiddenError, LoginRequired
from e5studio.http_body import limited
from e5studio.web.sessions import COOKIE_NAME, Session, SessionStore
from e5studio.web.state import web_state

HERE = Path(__file__).parent
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"
FORM_LIMIT_BYTES = 256 * 1024  # plain forms; uploads have their own limit

templates = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(["html"]),
                        trim_blocks=True, lstrip_blocks=True)


def sessions(request: Request) -> SessionStore:
    return web_state(request).sessions


def ui_session(request: Request) -> Session:
    """FastAPI dependency of every page but the login form: the logged-in session or LoginRequired."""
    session = sessions(request).get(request.cookies.get(COOKIE_NAME))
    if session is None:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        raise LoginRequired(target)
    request.state.ui_session = session
    return session


SessionDep = Annotated[Session, Depends(ui_session)]


def login_url(next_url: str) -> str:
    return f"/ui/login?next={quote(next_url, safe='/')}"


def safe_next(next_url: str | None) -> str:
    """Only paths inside the UI (no open redirect to another site)."""
    if next_url and next_url.startswith("/ui/") and not next_url.startswith("//") and "\\" not in next_url:
        return next_url
    return "/ui/"


def check_csrf_header(request: Request, session: Session) -> None:
    """JSON calls from the UI's JavaScript carry the token in the ``X-CSRF-Token`` header."""
    if not session.check_csrf(request.headers.get(CSRF_HEADER)):
        raise ForbiddenError("the CSRF token is missing or wrong: reload the page and try again")


async def read_form(request: Request, session: Session, limit: int = FORM_LIMIT_BYTES) -> FormData:
    """The posted form (multipart parts spool to temporary files on disk), CSRF token checked first."""
    form = await limited(request, limit, "the form").form(max_files=4, max_fields=64)
    token = form.get(CSRF_FIELD)
    if not isinstance(token, str) or not session.check_csrf(token):
        await form.close()
        raise ForbiddenError("the CSRF token is missing or wrong: reload the page and try again")
    return form


async def read_json(request: Request, session: Session, limit: int) -> dict[str, Any]:
    """The JSON object a page's JavaScript posted (at most ``limit`` bytes), CSRF header checked first; read
    by the API's hardened reader (each refusal names what is wrong)."""
    check_csrf_header(request, session)
    return await http_body.read_json(request, limit)


def text_field(form: FormData, name: str, default: str = "") -> str:
    value = form.get(name, default)
    return value.strip() if isinstance(value, str) else default


def render(request: Request, template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    session: Session | None = getattr(request.state, "ui_session", None)
    html = templates.get_template(template).render(
        request=request, csrf_token=session.csrf_token if session else "", logged_in=session is not None,
        version=__version__, **context)
    response = HTMLResponse(html, status_code=status_code)
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Content-Security-Policy"] = (
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; frame-ancestors 'none'")
    return response


FOOTER_MODELS = 3  # models named in the footer; more are counted


def served_models(request: Request) -> str:
    """The footer's "serving ...": the models of the Live endpoints (the server's default model while none is
    Live), so the page never names a model that is not the one answering."""
    ui = web_state(request)
    try:
        models = sorted({e.model for e in ui.store.list_endpoints() if e.status == LIVE})
    except Exception:  # noqa: BLE001 - a footer must not turn a page (or an error page) into a crash
        models = []
    if not models:
        return ui.settings.default_model
    shown = ", ".join(models[:FOOTER_MODELS])
    return shown + (f" and {len(models) - FOOTER_MODELS} more" if len(models) > FOOTER_MODELS else "")


templates.globals["served_models"] = served_models
