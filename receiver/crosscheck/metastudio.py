"""The MetaStudio job-query client, over the official SDK (``huaweicloudsdkmetastudio``).

One API: ``GET /v1/{project_id}/smart-live-rooms/{room_id}/smart-live-jobs`` (``list_smart_live``,
metastudio-list-smart-live-jobs.txt). ``MetaStudioJobs.list_room_jobs`` pages through it with
``offset``/``limit`` until ``count`` is reached, narrows with ``state`` and
``create_since``/``create_until``, and returns the jobs exactly as MetaStudio sent them.

- The SDK is blocking (``requests``): every call runs in a worker thread, never on the event loop.
- Retries: 5xx, 429, time-outs and connection failures, with bounded exponential back-off and an
  overall deadline; the SDK's own retries are off so the attempts are counted here.
- A short cache per (room, states, since, until), and single-flight: concurrent callers of one
  key share one query, so a burst of callbacks for a room makes one API call.
- Failures become ``MetaStudioBadRequest`` (400 and other 4xx), ``MetaStudioAuthError``
  (401/403) or ``MetaStudioUnavailable``; messages name the HTTP status, MetaStudio's
  ``error_code`` and the request id, and never the AK, SK or token.

Never imports the store: what to do with the jobs is ``receiver.crosscheck.rules``'s business.
Whatever knows the SDK's types (client, credentials, request, answer, failures) is in
``metastudio_sdk``; this module decides what to ask, how often, and what to keep.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from receiver.config import MetaStudioSettings
from receiver.crosscheck import metastudio_sdk
from receiver.errors import ConfigError, MetaStudioBadRequest
from receiver.protocol.ids import api_form, id_key

log = logging.getLogger("receiver.metastudio")

# The document gives no maximum for ``limit``; 100 is what the fake allows and a common cap.
PAGE_LIMIT = 100
_CACHE_MAX = 4096

CacheKey = tuple[str, tuple[str, ...] | None, str | None, str | None]


@dataclass(frozen=True, slots=True)
class RoomJobs:
    """One room's jobs as MetaStudio listed them. The dicts are shared with the cache: read only."""

    room_id: str
    jobs: tuple[dict[str, Any], ...]
    # Table 5 ``count``: the total MetaStudio reported (on the last page read).
    count: int
    fetched_at: datetime
    request_ids: tuple[str, ...]
    # False when paging stopped before ``count`` was reached (an empty page, or the page bound):
    # a job missing from ``jobs`` is then not evidence that MetaStudio does not know it.
    complete: bool = True
    pages: int = 1


class MetaStudioJobs:
    """``list_room_jobs`` over ``MetaStudioClient.list_smart_live``, with retries and a cache.

    ``calls`` counts HTTP requests made (every page and every attempt); ``queries`` counts
    ``list_room_jobs`` results that needed the API (cache misses after single-flight).
    """

    def __init__(
        self,
        *,
        endpoint: str,
        project_id: str,
        ak: str | None = None,
        sk: str | None = None,
        token: str | None = None,
        timeout: float = 10.0,
        retries: int = 2,
        backoff: float = 0.2,
        backoff_max: float = 2.0,
        deadline: float = 60.0,
        cache_ttl: float = 10.0,
        page_limit: int = PAGE_LIMIT,
        max_pages: int = 100,
        verify_tls: bool = True,
        now: Callable[[], datetime] | None = None,
        sleep: Callable[[float], Awaitable[None]] | None = None,
    ) -> None:
        parts = urlsplit(endpoint)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"metastudio.endpoint: must be an http(s) URL, not {endpoint!r}")
        if not project_id:
            raise ConfigError("metastudio.project_id: required, a non-empty string")
        if token is None and not (ak and sk):
            raise ConfigError("metastudio: needs an IAM token, or both an AK and an SK")
        if timeout <= 0 or retries < 0 or page_limit < 1 or max_pages < 1 or cache_ttl < 0:
            raise ConfigError(
                "metastudio: timeout must be > 0, retries >= 0, page_limit and max_pages >= 1, "
                "cache_ttl >= 0"
            )
        self.endpoint = endpoint.rstrip("/")
        self.project_id = project_id
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.backoff_max = backoff_max
        self.deadline = deadline
        self.cache_ttl = cache_ttl
        self.page_limit = page_limit
        self.max_pages = max_pages
        self.calls = 0
        self.queries = 0
        self._secrets = tuple(s for s in (ak, sk, token) if s)
        self._now = now or (lambda: datetime.now(UTC))
        self._sleep = sleep or asyncio.sleep
        self._cache: dict[CacheKey, RoomJobs] = {}
        self._inflight: dict[CacheKey, asyncio.Task[RoomJobs]] = {}
        # Bumped by invalidate(): an answer whose query started before is not cached.
        self._generation = 0
        self._room_generation: dict[str, int] = {}
        self._client: Any = metastudio_sdk.build_client(
            endpoint=self.endpoint,
            project_id=project_id,
            ak=ak,
            sk=sk,
            token=token,
            timeout=timeout,
            verify_tls=verify_tls,
        )

    @classmethod
    def from_settings(
        cls, settings: MetaStudioSettings, *, environ: Mapping[str, str], **options: Any
    ) -> MetaStudioJobs:
        """Credentials from the environment: the token of ``token_env`` if set, else AK/SK."""
        common: dict[str, Any] = {"endpoint": settings.endpoint, "project_id": settings.project_id}
        if settings.token_env is not None:
            token = environ.get(settings.token_env)
            if not token:
                raise ConfigError(
                    f"metastudio.token_env: environment variable {settings.token_env} is not set"
                )
            return cls(**common, token=token, **options)
        found: dict[str, Any] = {}
        for key, variable in (("ak", settings.ak_env), ("sk", settings.sk_env)):
            value = environ.get(variable)
            if not value:
                raise ConfigError(
                    f"metastudio.{key}_env: environment variable {variable} is not set"
                )
            found[key] = value
        return cls(**common, **found, **options)

    # -- the public query --------------------------------------------------------------------

    async def list_room_jobs(
        self,
        room_id: str,
        *,
        states: Sequence[str] | None = None,
        create_since: datetime | None = None,
        create_until: datetime | None = None,
    ) -> RoomJobs:
        """Every job of the room (narrowed as asked), from the cache when fresh.

        ``room_id`` in either spelling: MetaStudio is asked with its own, the dashed UUID of the
        document's example request (``receiver.protocol.ids.api_form``), and one cache entry serves
        both.

        ``states``: Table 6 states, sent comma-joined (order does not matter; empty means all).
        ``create_since`` / ``create_until``: timezone-aware; inclusive, as Table 2 says.
        """
        key = _cache_key(room_id, states, create_since, create_until)
        cached = self._cache.get(key)
        if cached is not None and self._fresh(cached):
            return cached
        loop = asyncio.get_running_loop()
        task = self._inflight.get(key)
        if task is None or task.done() or task.get_loop() is not loop:
            task = loop.create_task(self._fetch_and_keep(key, self._generation_of(key[0])))
            self._inflight[key] = task
            task.add_done_callback(lambda done: self._forget(key, done))
        # shield: a caller that gives up does not cancel the query the others wait for.
        return await asyncio.shield(task)

    def invalidate(self, room_id: str | None = None) -> None:
        """Drop cached answers (of one room, in either spelling, or all); answers of queries in
        flight then are not cached, and later callers start a fresh query."""
        if room_id is not None:
            room_id = api_form(room_id)
        if room_id is None:
            self._generation += 1
        else:
            self._room_generation[room_id] = self._room_generation.get(room_id, 0) + 1
        for key in [k for k in self._cache if room_id is None or k[0] == room_id]:
            del self._cache[key]
        for key in [k for k in self._inflight if room_id is None or k[0] == room_id]:
            del self._inflight[key]

    def close(self) -> None:
        self._client.close()
        self._client.get_http_client().executor.shutdown(wait=False)

    # -- cache and single-flight -------------------------------------------------------------

    def _generation_of(self, room_id: str) -> tuple[int, int]:
        return self._generation, self._room_generation.get(room_id, 0)

    def _fresh(self, answer: RoomJobs) -> bool:
        age = (self._now() - answer.fetched_at).total_seconds()
        return 0 <= age < self.cache_ttl

    def _forget(self, key: CacheKey, task: asyncio.Task[RoomJobs]) -> None:
        if self._inflight.get(key) is task:
            del self._inflight[key]
        if not task.cancelled():
            task.exception()  # retrieved: no "exception was never retrieved" if all callers left

    async def _fetch_and_keep(self, key: CacheKey, generation: tuple[int, int]) -> RoomJobs:
        answer = await self._fetch(key)
        if generation == self._generation_of(key[0]) and self.cache_ttl > 0:
            if len(self._cache) >= _CACHE_MAX:
                for old in [k for k, v in self._cache.items() if not self._fresh(v)]:
                    del self._cache[old]
                if len(self._cache) >= _CACHE_MAX:
                    self._cache.clear()
            self._cache[key] = answer
        return answer

    # -- paging ------------------------------------------------------------------------------

    async def _fetch(self, key: CacheKey) -> RoomJobs:
        room_id = key[0]
        self.queries += 1
        deadline = time.monotonic() + self.deadline
        jobs: list[dict[str, Any]] = []
        seen: set[str] = set()
        request_ids: list[str] = []
        offset = count = pages = 0
        complete = False
        while pages < self.max_pages:
            page = await self._page(key, offset, deadline)
            pages += 1
            if page.request_id:
                request_ids.append(page.request_id)
            for job in page.jobs:
                # Paging by offset over a list that changes meanwhile can repeat a job.
                job_id = job.get("job_id")
                if isinstance(job_id, str):
                    if id_key(job_id) in seen:
                        continue
                    seen.add(id_key(job_id))
                jobs.append(job)
            offset += len(page.jobs)
            count = page.count if page.count is not None else len(jobs)
            if page.count is None and len(page.jobs) < self.page_limit:
                complete = True  # no count given: a short page is the last one
                break
            if page.count is not None and offset >= page.count:
                complete = True
                break
            if not page.jobs:
                break  # count says there is more, but the page is empty: do not loop on it
        if not complete:
            log.warning(
                "MetaStudio room %s: stopped after %d page(s), %d of %d job(s)",
                room_id,
                pages,
                len(jobs),
                count,
            )
        return RoomJobs(
            room_id=room_id,
            jobs=tuple(jobs),
            count=count,
            fetched_at=self._now(),
            request_ids=tuple(request_ids),
            complete=complete,
            pages=pages,
        )

    async def _page(self, key: CacheKey, offset: int, deadline: float) -> metastudio_sdk.Page:
        room_id, states, since, until = key
        attempt = 0
        while True:
            attempt += 1
            request = metastudio_sdk.page_request(
                room_id=room_id,
                offset=offset,
                limit=self.page_limit,
                states=states,
                since=since,
                until=until,
            )
            self.calls += 1
            try:
                response = await asyncio.to_thread(self._client.list_smart_live, request)
                return metastudio_sdk.read_page(response)
            except Exception as exc:  # every failure is classified below, none escapes raw
                kind, text, retryable = metastudio_sdk.classify(
                    exc,
                    room_id=room_id,
                    attempt=attempt,
                    timeout=self.timeout,
                    endpoint=self.endpoint,
                )
                error = kind(self._redact(text))
            pause = min(self.backoff * 2 ** (attempt - 1), self.backoff_max)
            if not retryable or attempt > self.retries or time.monotonic() + pause >= deadline:
                raise error from None
            log.info("MetaStudio room %s: attempt %d failed, retrying: %s", room_id, attempt, error)
            await self._sleep(pause)

    def _redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text


def _cache_key(
    room_id: str,
    states: Sequence[str] | None,
    since: datetime | None,
    until: datetime | None,
) -> CacheKey:
    if not isinstance(room_id, str) or not room_id:
        raise MetaStudioBadRequest("room_id: must be a non-empty string")
    room_id = api_form(room_id)
    chosen: tuple[str, ...] | None = None
    if states:
        values = states.split(",") if isinstance(states, str) else list(states)
        if not all(isinstance(v, str) and v and "," not in v for v in values):
            raise MetaStudioBadRequest(f"states: each must be a non-empty state name: {states!r}")
        chosen = tuple(sorted(set(values)))
    return (
        room_id,
        chosen,
        _rfc3339(since, "create_since", round_up=True),
        _rfc3339(until, "create_until", round_up=False),
    )


def _rfc3339(moment: datetime | None, name: str, *, round_up: bool) -> str | None:
    """RFC 3339 in UTC, whole seconds (the document's form, e.g. 2021-01-10T08:43:17Z).

    Job times have whole seconds, so the inclusive bounds stay exact: a since with a fraction
    rounds up, an until rounds down.
    """
    if moment is None:
        return None
    if not isinstance(moment, datetime) or moment.utcoffset() is None:
        raise MetaStudioBadRequest(f"{name}: must be a timezone-aware datetime, not {moment!r}")
    utc = moment.astimezone(UTC)
    if round_up and utc.microsecond:
        utc += timedelta(seconds=1)
    return utc.strftime("%Y-%m-%dT%H:%M:%SZ")
