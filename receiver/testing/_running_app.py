"""An ASGI app run in-process for sync code: :class:`RunningApp` starts its lifespan on an event
loop in a background thread and delivers signed callbacks to it through an httpx client on an
ASGI transport, as :func:`receiver.testing.replay_file` and a user's tests need.

asyncio and httpx are imported when an app is first run, not on import.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Awaitable, Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    import asyncio

    import httpx2
    from starlette.types import ASGIApp, Message

    from receiver.tools.sender import Answer, SignedCallback

_T = TypeVar("_T")


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
