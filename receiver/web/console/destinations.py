"""The console's forwarding pages: ``/ui/destinations`` (each destination's state, lag, last
delivery and error, dead letters) and ``/ui/destinations/{name}`` (one destination: its recent
attempts, its dead letters, and buttons to disable, enable and resend them).

The buttons call the query API (``POST /v1/destinations/{name}/...``) from the page's script with
the session's CSRF token, as the findings' acknowledge buttons do; what they show comes from
receiver.forward.admin, read from the store, so every replica shows the same.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from receiver.errors import NotFound
from receiver.forward import admin, store
from receiver.web.api_v1 import write_store
from receiver.web.console.routes import render_page, session_of, to_login

if TYPE_CHECKING:
    from receiver.web.runtime import Runtime


def _runtime(request: Request) -> Runtime:
    value: Runtime = request.app.state.runtime
    return value


async def destinations_page(request: Request) -> Response:
    caller = session_of(request)
    if caller is None:
        return to_login(request)
    rt = _runtime(request)
    now = datetime.now(UTC)
    places = rt.forwarder.places() if rt.forwarder else None
    views = await write_store(
        rt, lambda c: admin.overview(c, rt.settings.destinations, now=now, places=places)
    )
    return render_page(
        "destinations.html", title="Destinations", destinations=views, csrf=caller.csrf()
    )


async def destination_page(request: Request) -> Response:
    caller = session_of(request)
    if caller is None:
        return to_login(request)
    rt = _runtime(request)
    try:
        destination = admin.find(rt.settings.destinations, request.path_params["name"])
    except NotFound as exc:
        return render_page("not_found.html", 404, title="Not found", message=exc.message, csrf=None)
    now = datetime.now(UTC)
    places = rt.forwarder.places() if rt.forwarder else None

    def read(conn: Any) -> dict[str, Any]:
        (view,) = admin.overview(conn, [destination], now=now, places=places)
        return {
            "view": view,
            "attempts": admin.attempts(conn, destination.name, limit=50)["attempts"],
            "dead": admin.messages(conn, destination.name, state=store.DEAD, limit=100),
            "parked": admin.messages(conn, destination.name, state=store.PENDING, limit=100),
        }

    shown = await write_store(rt, read)
    return render_page(
        "destination.html", title=f"Destination {destination.name}", csrf=caller.csrf(), **shown
    )


routes = [
    Route("/ui/destinations", destinations_page, methods=["GET"]),
    Route("/ui/destinations/{name}", destination_page, methods=["GET"]),
]
