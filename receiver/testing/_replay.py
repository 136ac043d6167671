"""Replaying an export (``metastudio-receiver export``) into a receiver from a test:
:func:`replay_file` signs each recorded event for one endpoint and delivers it to an app
in-process, a listening receiver or an httpx-style client, with
:func:`receiver.tools.replay.replay` doing the pacing, retries and report.
"""

from __future__ import annotations

from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from receiver.testing._callbacks import CallbackFactory
from receiver.testing._running_app import RunningApp

if TYPE_CHECKING:
    from starlette.types import ASGIApp

    from receiver.config import EndpointSettings
    from receiver.tools.replay import ReplayReport
    from receiver.tools.sender import Answer, SignedCallback


def replay_file(
    path: str | Path | IO[str],
    *,
    app: ASGIApp | None = None,
    base_url: str | None = None,
    client: Any = None,
    endpoint: EndpointSettings | None = None,
    registered_url: str | None = None,
    auth_type: str | None = None,
    key: str | None = None,
    signed_uri: str | None = None,
    time_unit: str | None = None,
    lifespan: bool = True,
    **options: Any,
) -> ReplayReport:
    """Replay an export file (``metastudio-receiver export``) into a receiver; the report says
    how far it got (``report.ok``: every event stored).

    Where to: ``app`` (an ASGI app, in-process; its lifespan is run unless ``lifespan=False``),
    ``base_url`` (a receiver listening there) or ``client`` (an httpx-style client, e.g.
    starlette's ``TestClient``). What to sign for: an ``endpoint`` of the receiver's settings,
    or ``registered_url`` / ``auth_type`` / ``key`` / ``signed_uri`` / ``time_unit`` (defaults:
    :data:`DEFAULT_REGISTERED_URL`, MSS_A, :data:`DEFAULT_KEY`, host_path_query, seconds).
    Other ``options`` go to :func:`receiver.tools.replay.replay` (``pace``, ``start_after``,
    ``keep_going``, ``source``, ``stop``, ``progress``, ...); ``retries`` defaults to 0 here.
    """
    from receiver.tools.replay import ReplayTarget, replay
    from receiver.tools.replay_records import read_export
    from receiver.tools.sender import deliver

    if sum(x is not None for x in (app, base_url, client)) != 1:
        raise ValueError("give exactly one of app, base_url or client")
    signer = CallbackFactory().bind(endpoint)
    given = {
        "registered_url": registered_url,
        "auth_type": auth_type,
        "key": key,
        "signed_uri": signed_uri,
        "time_unit": time_unit,
    }
    chosen = {name: value for name, value in given.items() if value is not None}
    signer = signer.bind(None, **chosen)
    target = ReplayTarget(
        registered_url=signer.registered_url,
        auth_type=signer.auth_type,
        key=signer.key,
        signed_uri=signer.signed_uri,
        time_unit=signer.time_unit,
        to=base_url,
    )
    records = read_export(path)
    options.setdefault("retries", 0)
    if app is not None:
        with RunningApp(app, lifespan=lifespan) as running:
            return replay(records, target=target, send=running.send, **options)
    if client is not None:

        def send(callback: SignedCallback) -> Answer:
            return deliver(callback, client=client)

        return replay(records, target=target, send=send, **options)
    return replay(records, target=target, **options)
