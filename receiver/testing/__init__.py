"""Helpers for your own tests (as ``structlog.testing`` is for structlog's users).

Sign and build callbacks exactly as MetaStudio does, deliver them, run a faithful fake of
MetaStudio's job query API, and replay real events (an export of ``metastudio-receiver export``)
into a receiver::

    from receiver.testing import build_callback, deliver, replay_file

    callback = build_callback(event_type="SHOOT_SCRIPT_SWITCH", message={...},
                              registered_url="https://hooks.example.com/callbacks/shop-a",
                              key="...")
    report = replay_file("tests/data/export.jsonl", app=create_app(settings),
                         registered_url="https://hooks.example.com/callbacks/shop-a", key="...")
    assert report.ok

The pytest plugin (``receiver.testing.plugin``, installed as ``metastudio_receiver``) wraps these
in the fixtures ``metastudio_callback``, ``fake_metastudio`` and ``metastudio_replay``.

Importing this package is cheap: the heavy modules load on first use of a name.
"""

from __future__ import annotations

import contextlib
import importlib
import threading
from collections.abc import Awaitable, Coroutine, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

if TYPE_CHECKING:
    import asyncio

    import httpx2
    from starlette.types import ASGIApp, Message

    from receiver.config import EndpointSettings
    from receiver.fake_metastudio.server import FakeMetaStudio, fake_job, serve_fake
    from receiver.protocol.events import encode
    from receiver.protocol.signing import sign_request
    from receiver.tools.replay import ReplayReport
    from receiver.tools.sender import (
        Answer,
        SignedCallback,
        build_callback,
        deliver,
        deliver_async,
        retarget,
    )

__all__ = [
    "DEFAULT_KEY",
    "DEFAULT_REGISTERED_URL",
    "Answer",
    "CallbackFactory",
    "FakeMetaStudio",
    "FakeMetaStudioServer",
    "ReplayReport",
    "RunningApp",
    "SignedCallback",
    "build_callback",
    "deliver",
    "deliver_async",
    "encode",
    "fake_job",
    "replay_file",
    "retarget",
    "serve_fake",
    "sign_request",
]

# Loaded on first use (PEP 562), so that the pytest plugin costs nothing at start-up.
_LAZY = {
    "Answer": "receiver.tools.sender",
    "SignedCallback": "receiver.tools.sender",
    "build_callback": "receiver.tools.sender",
    "deliver": "receiver.tools.sender",
    "deliver_async": "receiver.tools.sender",
    "retarget": "receiver.tools.sender",
    "sign_request": "receiver.protocol.signing",
    "encode": "receiver.protocol.events",
    "ReplayReport": "receiver.tools.replay",
    "FakeMetaStudio": "receiver.fake_metastudio.server",
    "fake_job": "receiver.fake_metastudio.server",
    "serve_fake": "receiver.fake_metastudio.server",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


DEFAULT_REGISTERED_URL = "https://hooks.example.com/callbacks/shop-a"
# A public test value of the longest length MetaStudio allows (32 characters).
DEFAULT_KEY = "test-key-not-a-secret-0123456789"

_T = TypeVar("_T")


# -- signing, bound to one endpoint ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CallbackFactory:
    """``build_callback`` bound to one endpoint: ``factory(event_type, message) -> SignedCallback``.

    The ``metastudio_callback`` fixture is one of these. ``endpoint_table()`` gives the matching
    ``[[endpoints]]`` table for the receiver's settings, so both sides agree by construction.
    """

    registered_url: str = DEFAULT_REGISTERED_URL
    key: str = field(default=DEFAULT_KEY, repr=False)
    auth_type: str = "MSS_A"
    signed_uri: str = "host_path_query"
    time_unit: str = "seconds"
    message_as: str = "string"

    def __call__(
        self,
        event_type: str,
        message: Mapping[str, Any] | None = None,
        *,
        body: bytes | None = None,
        when: float | None = None,
        extra_headers: Mapping[str, str] | None = None,
        **changes: Any,
    ) -> SignedCallback:
        """One signed callback; keyword ``changes`` override this factory's fields once
        (e.g. ``key="wrong"``, ``message_as="object"``)."""
        from receiver.tools.sender import build_callback

        bound = replace(self, **changes) if changes else self
        return build_callback(
            event_type=event_type,
            message=message,
            body=body,
            registered_url=bound.registered_url,
            auth_type=bound.auth_type,
            key=bound.key,
            when=when,
            signed_uri=bound.signed_uri,
            time_unit=bound.time_unit,
            message_as=bound.message_as,
            extra_headers=extra_headers,
        )

    def bind(self, endpoint: EndpointSettings | None = None, **changes: Any) -> CallbackFactory:
        """A copy for another endpoint: from a configured ``EndpointSettings`` (its first key)
        and/or explicit field changes."""
        if endpoint is not None:
            unit = endpoint.time_unit.value
            changes = {
                "registered_url": endpoint.registered_url,
                "auth_type": endpoint.auth_type.value,
                "key": endpoint.keys[0] if endpoint.keys else "",
                "signed_uri": endpoint.signed_uri.value,
                "time_unit": "seconds" if unit == "auto" else unit,
                **changes,
            }
        return replace(self, **changes)

    @property
    def endpoint_name(self) -> str:
        """The last path segment of the registered URL (``/callbacks/{name}``)."""
        return urlsplit(self.registered_url).path.rstrip("/").rpartition("/")[2] or "default"

    def endpoint_table(self, **overrides: Any) -> dict[str, Any]:
        """The receiver's ``[[endpoints]]`` table that verifies what this factory signs."""
        table: dict[str, Any] = {
            "name": self.endpoint_name,
            "registered_url": self.registered_url,
            "auth_type": self.auth_type,
            "signed_uri": self.signed_uri,
            "time_unit": self.time_unit,
        }
        if self.auth_type.upper() == "NONE":
            table["allow_unauthenticated"] = not urlsplit(self.registered_url).query
        else:
            table["keys"] = [self.key]
        table.update(overrides)
        return table

    def deliver(self, callback: SignedCallback, *, to: str | None = None, **options: Any) -> Answer:
        """Shortcut for :func:`receiver.tools.sender.deliver`."""
        from receiver.tools.sender import deliver

        return deliver(callback, to=to, **options)


# -- the fake MetaStudio, served ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FakeMetaStudioServer:
    """A :class:`FakeMetaStudio` served on loopback (the ``fake_metastudio`` fixture)."""

    base_url: str
    fake: FakeMetaStudio
    project_id: str
    ak: str
    sk: str = field(repr=False)
    token: str = field(repr=False)
    ak_env: str = "HUAWEICLOUD_SDK_AK"
    sk_env: str = "HUAWEICLOUD_SDK_SK"

    def add_job(self, **overrides: Any) -> dict[str, Any]:
        """Add a realistic job (``fake_job(**overrides)``) and return it."""
        from receiver.fake_metastudio.server import fake_job

        return self.fake.add_job(fake_job(**overrides))

    @property
    def environ(self) -> dict[str, str]:
        """The environment the receiver's ``[metastudio]`` section reads AK/SK from."""
        return {self.ak_env: self.ak, self.sk_env: self.sk}

    def metastudio_table(self, **overrides: Any) -> dict[str, Any]:
        """The receiver's ``[metastudio]`` table pointing at this fake."""
        table: dict[str, Any] = {
            "endpoint": self.base_url,
            "project_id": self.project_id,
            "ak_env": self.ak_env,
            "sk_env": self.sk_env,
            "crosscheck_interval_seconds": 0,
        }
        table.update(overrides)
        return table


# -- an ASGI app, running in a thread of its own -------------------------------------------------


class RunningApp:
    """An ASGI app with its lifespan started, on an event loop in a background thread, so sync
    code (a test, :func:`receiver.tools.replay.replay`) can deliver to it in-process.

    ``with RunningApp(create_app(settings)) as running: running.send(callback)``. Give
    ``lifespan=False`` when the app already runs (e.g. inside a ``TestClient`` block).
    """

    def __init__(self, app: ASGIApp, *, lifespan: bool = True, timeout: float = 30.0) -> None:
        import asyncio

        self.app = app
        self.lifespan = lifespan
        self.timeout = timeout
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="receiver-testing-app", daemon=True
        )
        self._client: httpx2.AsyncClient | None = None
        self._to_app: asyncio.Queue[Message] | None = None
        self._from_app: asyncio.Queue[Message] | None = None
        self._task: asyncio.Future[None] | None = None

    def __enter__(self) -> RunningApp:
        self._thread.start()
        try:
            if self.lifespan:
                self._call(self._startup())
            self._client = self._call(self._open_client())
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _call(self, work: Coroutine[Any, Any, _T]) -> _T:
        import asyncio

        return asyncio.run_coroutine_threadsafe(work, self._loop).result(self.timeout)

    def send(self, callback: SignedCallback) -> Answer:
        """Deliver one callback to the app and return its answer."""
        from receiver.tools.sender import deliver_async

        if self._client is None:
            raise RuntimeError("RunningApp is not started: use it in a with block")
        return self._call(deliver_async(callback, client=self._client))

    async def _open_client(self) -> httpx2.AsyncClient:
        import httpx2

        from receiver.tools.sender import USER_AGENT

        return httpx2.AsyncClient(
            transport=httpx2.ASGITransport(app=self.app),
            headers={"user-agent": USER_AGENT},
            timeout=self.timeout,
        )

    async def _next(self, wanted: str) -> Message | None:
        """The app's next lifespan message; None when the app has no lifespan at all."""
        import asyncio

        assert self._from_app is not None and self._task is not None
        getting: asyncio.Future[Message] = asyncio.ensure_future(self._from_app.get())
        waiting: set[asyncio.Future[Any]] = {getting, self._task}
        await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        if not getting.done():
            # The app ended first; a message it sent just before may still be in the queue.
            getting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await getting
        if getting.done() and not getting.cancelled():
            message: Message = getting.result()
            return message
        if not self._from_app.empty():
            return self._from_app.get_nowait()
        error = self._task.exception()
        if error is not None and wanted == "startup":
            return None  # an app that refuses the lifespan scope has none (as uvicorn's "auto")
        if error is not None:
            raise error
        return None

    async def _startup(self) -> None:
        import asyncio

        self._to_app, self._from_app = asyncio.Queue(), asyncio.Queue()
        scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}}
        self._task = asyncio.ensure_future(
            _as_coroutine(self.app(scope, self._to_app.get, self._from_app.put))
        )
        await self._to_app.put({"type": "lifespan.startup"})
        message = await self._next("startup")
        if message is None:
            self._task = None
        elif message["type"] == "lifespan.startup.failed":
            task, self._task = self._task, None
            error: BaseException | None = None
            try:
                await task  # the app raises what it reported (starlette does)
            except Exception as exc:
                error = exc
            lines = str(message.get("message", "")).strip().splitlines() or ["no reason given"]
            reason = f"{type(error).__name__}: {error}" if error is not None else lines[-1]
            raise RuntimeError(f"the app did not start: {reason}") from error

    async def _shutdown(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None
        if self._task is None or self._to_app is None:
            return
        await self._to_app.put({"type": "lifespan.shutdown"})
        message = await self._next("shutdown")
        task, self._task = self._task, None
        if message is not None and message["type"] == "lifespan.shutdown.failed":
            raise RuntimeError(f"the app did not shut down: {message.get('message', '')}")
        await task

    def close(self) -> None:
        if not self._thread.is_alive():
            return
        try:
            self._call(self._shutdown())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=self.timeout)
            self._loop.close()


async def _as_coroutine(awaitable: Awaitable[None]) -> None:
    await awaitable


# -- replaying an export -----------------------------------------------------------------------


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
    from receiver.tools.replay import ReplayTarget, read_export, replay
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
