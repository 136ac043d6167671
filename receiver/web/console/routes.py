"""The web console under ``/ui``: rooms and jobs seen, each job's timeline, RTMP strip chart,
findings (acknowledge or mute them), deliveries and rejections, new events live.

Pages are rendered here (receiver.web.console.pages); the data comes from receiver.web.console.data.
Every page needs a session: ``/ui/login`` takes one of ``api_tokens`` and sets the session cookie
(receiver.web.console.sessions); without one a page redirects there (303), and ``/v1`` answers 401.
The
pages' one script and style sheet are served from ``/static``: they hold no data. Answers carry
a Content Security Policy that runs no inline script and loads nothing from elsewhere.
"""

from __future__ import annotations

import asyncio
import hmac
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, quote

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from receiver.errors import QueryError
from receiver.intake.bodies import read_body
from receiver.web.api_v1 import read_store
from receiver.web.console import data as console_data
from receiver.web.console.pages import asset, environment
from receiver.web.console.sessions import (
    COOKIE,
    SESSION_SECONDS,
    Caller,
    cookie_header,
    csrf_token,
    make_session,
    match_token,
    session_caller,
)

if TYPE_CHECKING:
    from receiver.web.runtime import Runtime

SECURITY_HEADERS = {
    "content-security-policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
}
_ASSET_HEADERS = {"x-content-type-options": "nosniff", "cache-control": "no-cache"}
LOGIN_BODY_LIMIT = 4096
# Failed logins wait this long before the answer: guessing tokens over HTTP stays slow.
FAILED_LOGIN_DELAY = 0.5


def _runtime(request: Request) -> Runtime:
    value: Runtime = request.app.state.runtime
    return value


def render_page(template: str, status: int = 200, **values: Any) -> HTMLResponse:
    values.setdefault("csrf", None)
    html = environment().get_template(template).render(**values)
    return HTMLResponse(html, status_code=status, headers=SECURITY_HEADERS)


def session_of(request: Request) -> Caller | None:
    value = request.cookies.get(COOKIE)
    return session_caller(value, _runtime(request).settings.api_tokens) if value else None


def to_login(request: Request) -> Response:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/ui/login?next={quote(target)}", status_code=303)


def _safe_next(value: str | None) -> str:
    """Only a console path: never an address elsewhere (an open redirect)."""
    if value and value.startswith("/ui/") and not value.startswith("//") and "\\" not in value:
        return value
    return "/ui/"


async def login_form(request: Request) -> Response:
    return render_page(
        "login.html",
        title="Log in",
        next=_safe_next(request.query_params.get("next")),
        error=None,
        hours=SESSION_SECONDS // 3600,
    )


async def login(request: Request) -> Response:
    body = await read_body(request, LOGIN_BODY_LIMIT)
    try:
        form = parse_qs(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
    except UnicodeDecodeError:
        raise QueryError("the login form must be UTF-8") from None
    given = (form.get("token") or [""])[0].strip()
    target = _safe_next((form.get("next") or [""])[0])
    token = match_token(given, _runtime(request).settings.api_tokens) if given else None
    if token is None:
        await asyncio.sleep(FAILED_LOGIN_DELAY)
        return render_page(
            "login.html",
            status=401,
            title="Log in",
            next=target,
            error="That is not one of the receiver's API tokens.",
            hours=SESSION_SECONDS // 3600,
        )
    answer = RedirectResponse(target, status_code=303)
    answer.headers.append("set-cookie", cookie_header(make_session(token)))
    return answer


async def logout(request: Request) -> Response:
    caller = session_of(request)
    body = await read_body(request, LOGIN_BODY_LIMIT)
    form = parse_qs(body.decode("utf-8", errors="replace"))
    given = (form.get("csrf") or [""])[0]
    expected = "" if caller is None else csrf_token(caller.token, caller.session or "")
    if caller is not None and not hmac.compare_digest(given.encode(), expected.encode()):
        return Response("refused: no CSRF token", status_code=403, headers=SECURITY_HEADERS)
    answer = RedirectResponse("/ui/login", status_code=303)
    answer.headers.append("set-cookie", cookie_header("", max_age=0))
    return answer


async def overview(request: Request) -> Response:
    caller = session_of(request)
    if caller is None:
        return to_login(request)
    jobs = await read_store(_runtime(request), console_data.jobs_seen)
    return render_page(
        "overview.html",
        title="Rooms and jobs",
        rooms=console_data.rooms_of(jobs),
        csrf=caller.csrf(),
    )


async def job(request: Request) -> Response:
    caller = session_of(request)
    if caller is None:
        return to_login(request)
    job_id = request.path_params["job_id"]
    if not job_id or len(job_id) > 128:
        return render_page(
            "not_found.html", 404, title="Not found", message="No such job.", csrf=None
        )
    page = await read_store(_runtime(request), lambda conn: console_data.job_page(conn, job_id))
    if page is None:
        message = f"Nothing names the job {job_id}."
        return render_page(
            "not_found.html", 404, title="Not found", message=message, csrf=caller.csrf()
        )
    title = f"Job {page['job_id']}"
    return render_page("job.html", title=title, job=page, csrf=caller.csrf(), summary=_summary)


def _summary(event: dict[str, Any]) -> str:
    message = event.get("message") or {}
    kind = event.get("event_type")
    if kind == "RTMP_STREAM_STATE_CHANGE":
        return str(message.get("state", ""))
    if kind == "SHOOT_SCRIPT_SWITCH":
        parts = [message.get("shoot_script_sequence_no"), message.get("shoot_script_title")]
        parts = parts if parts[1] is not None else [parts[0], message.get("scene_script_name")]
        return " ".join(str(p) for p in parts if p is not None)
    if kind == "REPLY_COMMAND_FINISH":
        return f"reply {message.get('reply_id', '')}"
    return ""


async def root(request: Request) -> Response:
    return RedirectResponse("/ui/", status_code=307)


async def script(request: Request) -> Response:
    return Response(asset("console.js"), media_type="text/javascript", headers=_ASSET_HEADERS)


async def style(request: Request) -> Response:
    return Response(asset("console.css"), media_type="text/css", headers=_ASSET_HEADERS)


routes = [
    Route("/ui", root, methods=["GET"]),
    Route("/ui/", overview, methods=["GET"]),
    Route("/ui/login", login_form, methods=["GET"]),
    Route("/ui/login", login, methods=["POST"]),
    Route("/ui/logout", logout, methods=["POST"]),
    Route("/ui/jobs/{job_id}", job, methods=["GET"]),
    Route("/static/console.js", script, methods=["GET"]),
    Route("/static/console.css", style, methods=["GET"]),
]
