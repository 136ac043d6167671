"""A faithful local fake of MetaStudio's job query API, for tests and demos.

``GET /v1/{project_id}/smart-live-rooms/{room_id}/smart-live-jobs`` answers as
metastudio-list-smart-live-jobs.txt describes it: every query parameter of Table 2, the body of
Tables 5-6, ``X-Request-Id`` (Table 4) on every answer, and the 400/401/500 bodies of Tables 15-17
with their ``MSS.*`` codes. Requests authenticate with ``X-Auth-Token`` or with an AK/SK signature
(``Authorization: SDK-HMAC-SHA256 ...`` + ``X-Sdk-Date``, Table 3) that is recomputed with the
official SDK's own signer, so the real ``huaweicloudsdkmetastudio`` client talks to it unchanged.

Choices the document leaves open, made here on purpose:

- ``limit`` defaults to 10 and is at most 100 (the document gives neither); ``offset`` >= 0.
- A ``project_id`` other than the fake's is answered 400 ``MSS.00000003`` (it is a path parameter,
  Table 1, and 400 is "Parameters error"); a room with no jobs answers ``count`` 0.
- Unknown query parameters are ignored; a parameter given twice is a 400.
- Order of checks: hang mode, then authentication (401), then error mode or a scheduled fault
  (500, see ``fail_requests``), then parameters.
- Ids are matched in either of MetaStudio's spellings (``receiver.protocol.ids``): a job added as a
dashed
  UUID is found, and listed in its room, by its 32-hex-digit form too. Jobs are listed as they
  were added; ``fake_job`` and ``simulate`` add them dashed, as the document's answers show them.

``/_fake/...`` routes change the fake while it runs. They take no authentication: this is a local
test double, never to be exposed beyond loopback.
"""

from __future__ import annotations

import asyncio
import copy
import hmac
import json
import logging
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import parse_qsl

from huaweicloudsdkcore.auth.credentials import BasicCredentials
from huaweicloudsdkcore.sdk_request import SdkRequest
from huaweicloudsdkcore.signer.signer import Signer
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from receiver.errors import ConfigError
from receiver.protocol.ids import id_key, same_id

log = logging.getLogger("receiver.testing.fake_metastudio")

# Defaults a demo can use as they are (the CLI prints them).
DEFAULT_PROJECT_ID = "0a1b2c3d4e5f40718293a4b5c6d7e8f9"
DEFAULT_AK = "FAKEMETASTUDIOAK0001"
DEFAULT_SK = "fake-metastudio-secret-key-0123456789abc"  # a public demo value
DEFAULT_TOKEN = "fake-metastudio-token"  # noqa: S105 -- a public demo value

JOB_STATES = frozenset({"WAITING", "PROCESSING", "SUCCEED", "FAILED", "BLOCKED"})  # Table 6
MODES = ("ok", "error", "hang")
UNAUTHORIZED = {"error_code": "MSS.00000001", "error_msg": "Unauthorized"}  # Table 16
INVALID = {"error_code": "MSS.00000003", "error_msg": "Invalid parameter"}  # Table 15
INTERNAL = {"error_code": "MSS.00000004", "error_msg": "Internal Error"}  # Table 17
# The document gives no default and no maximum for ``limit``: these are the fake's choice.
DEFAULT_LIMIT = 10
MAX_LIMIT = 100
# Signed requests older or newer than this are refused, as Huawei's API gateway does.
MAX_SKEW = timedelta(minutes=15)
SDK_DATE_FORMAT = "%Y%m%dT%H%M%SZ"  # X-Sdk-Date, Table 3: YYYYMMDD'T'HHMMSS'Z'

_AUTHORIZATION = re.compile(
    r"SDK-HMAC-SHA256\s+Access=([^,\s]+),\s*SignedHeaders=([^,\s]+),\s*Signature=([0-9a-fA-F]+)"
)
_UINT = re.compile(r"[0-9]{1,9}")
_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})")
_EARLIEST = datetime.min.replace(tzinfo=UTC)


class RequestRecord(NamedTuple):
    """One API request as the fake saw it; ``auth`` is token, aksk, none or invalid."""

    method: str
    path: str
    query: dict[str, str]
    auth: str


class InvalidQuery(Exception):
    """A query parameter the fake answers with 400 MSS.00000003."""


@dataclass(frozen=True, slots=True)
class JobQuery:
    offset: int = 0
    limit: int = DEFAULT_LIMIT
    states: frozenset[str] | None = None
    descending: bool = False
    since: datetime | None = None
    until: datetime | None = None


def parse_rfc3339(text: str) -> datetime:
    """An RFC 3339 date-time (offset required); ValueError otherwise."""
    if not _RFC3339.fullmatch(text):
        raise ValueError(f"not an RFC 3339 date-time: {text!r}")
    return datetime.fromisoformat(text.upper())


def parse_job_query(items: Sequence[tuple[str, str]]) -> JobQuery:
    """Table 2's query parameters; InvalidQuery names the first bad one."""
    given: dict[str, str] = {}
    for name, value in items:
        if name in given:
            raise InvalidQuery(f"{name}: given more than once")
        given[name] = value

    def integer(name: str, default: int, low: int, high: int) -> int:
        text = given.get(name)
        if text is None:
            return default
        if not _UINT.fullmatch(text) or not low <= int(text) <= high:
            raise InvalidQuery(f"{name}: must be an integer from {low} to {high}, not {text!r}")
        return int(text)

    def moment(name: str) -> datetime | None:
        text = given.get(name)
        if text is None:
            return None
        try:
            return parse_rfc3339(text)
        except ValueError:
            raise InvalidQuery(f"{name}: must be an RFC 3339 date-time, not {text!r}") from None

    states = None
    if "state" in given:
        states = frozenset(given["state"].split(","))
        if not states <= JOB_STATES:
            raise InvalidQuery(f"state: unknown value in {given['state']!r}")
    if given.get("sort_key", "create_time") != "create_time":
        raise InvalidQuery("sort_key: only create_time is supported")
    sort_dir = given.get("sort_dir", "asc")
    if sort_dir not in ("asc", "desc"):
        raise InvalidQuery(f"sort_dir: must be asc or desc, not {sort_dir!r}")
    return JobQuery(
        offset=integer("offset", 0, 0, 10**9 - 1),
        limit=integer("limit", DEFAULT_LIMIT, 1, MAX_LIMIT),
        states=states,
        descending=sort_dir == "desc",
        since=moment("create_since"),
        until=moment("create_until"),
    )


def _created(job: Mapping[str, Any]) -> datetime | None:
    value = job.get("create_time")
    try:
        return parse_rfc3339(value) if isinstance(value, str) else None
    except ValueError:
        return None


class FakeMetaStudio:
    """The fake's state: jobs, accepted credentials, mode and request log. Thread-safe."""

    def __init__(
        self,
        *,
        project_id: str = DEFAULT_PROJECT_ID,
        tokens: Iterable[str] = (),
        credentials: Mapping[str, str] | None = None,
        jobs: Iterable[Mapping[str, Any]] = (),
        now: Callable[[], datetime] | None = None,
        max_hang_seconds: float = 30.0,
    ) -> None:
        self.project_id = project_id
        self.max_hang_seconds = max_hang_seconds
        self._now = now or (lambda: datetime.now(UTC))
        self._lock = threading.Lock()
        self._initial = (frozenset(tokens), dict(credentials or {}), max_hang_seconds)
        self._tokens: set[str] = set(self._initial[0])
        self._credentials: dict[str, str] = dict(self._initial[1])
        # By id_key: MetaStudio's callbacks and its API spell an id two ways
        # (receiver.protocol.ids), and
        # either spelling finds the job, here and in the room of the query path.
        self._jobs: dict[str, dict[str, Any]] = {}
        self._mode = "ok"
        self._faults: list[bool] = []
        self._log: list[RequestRecord] = []
        for job in jobs:
            self.add_job(job)

    def reset(self) -> None:
        """Back to a fresh fake (no jobs, empty log, mode ok, the credentials it was built with),
        so one running server can serve many tests."""
        with self._lock:
            self._tokens = set(self._initial[0])
            self._credentials = dict(self._initial[1])
            self.max_hang_seconds = self._initial[2]
            self._jobs.clear()
            self._log.clear()
            self._faults.clear()
            self._mode = "ok"

    # -- credentials and mode ----------------------------------------------------------------

    def add_token(self, token: str) -> None:
        with self._lock:
            self._tokens.add(token)

    def add_credentials(self, ak: str, sk: str) -> None:
        with self._lock:
            self._credentials[ak] = sk

    @property
    def mode(self) -> str:
        return self._mode

    def set_mode(self, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
        self._mode = mode

    def fail_requests(self, count: int, *, after: int = 0) -> None:
        """A transient outage: of the next authenticated job queries, serve ``after`` as usual,
        answer ``count`` with 500 MSS.00000004, then serve again (e.g. ``after=1``: the second
        page of a paged listing fails)."""
        if count < 0 or after < 0:
            raise ValueError("count and after must be >= 0")
        with self._lock:
            self._faults = [False] * after + [True] * count

    def next_request_fails(self) -> bool:
        with self._lock:
            return self._faults.pop(0) if self._faults else False

    # -- jobs --------------------------------------------------------------------------------

    def add_job(self, job: Mapping[str, Any]) -> dict[str, Any]:
        """Create or replace a job (a SmartLiveJob of Table 6; job_id and room_id required)."""
        for key in ("job_id", "room_id"):
            if not isinstance(job.get(key), str) or not job[key]:
                raise ValueError(f"a job needs a non-empty string {key}")
        stored = copy.deepcopy(dict(job))
        with self._lock:
            self._jobs[id_key(stored["job_id"])] = stored
        return copy.deepcopy(stored)

    def update_job(self, job_id: str, **fields: Any) -> dict[str, Any]:
        """Change fields of a job (found by either spelling; it keeps the spelling it has)."""
        with self._lock:
            current = self._jobs.get(id_key(job_id))
            if current is None:
                raise KeyError(job_id)
            updated = {**current, **copy.deepcopy(fields), "job_id": current["job_id"]}
        return self.add_job(updated)

    def remove_job(self, job_id: str) -> bool:
        with self._lock:
            return self._jobs.pop(id_key(job_id), None) is not None

    def get_job(self, job_id: str) -> dict[str, Any] | None:
        with self._lock:
            job = self._jobs.get(id_key(job_id))
            return copy.deepcopy(job) if job is not None else None

    def jobs(self, room_id: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            chosen = [
                j for j in self._jobs.values() if room_id is None or same_id(j["room_id"], room_id)
            ]
            return copy.deepcopy(chosen)

    def load_jobs(self, path: str | Path) -> int:
        """Add the jobs of a JSON file: a list of jobs, or an answer {"smart_live_jobs": [...]}."""
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"jobs file {str(path)!r}: cannot read it: {exc.strerror}") from None
        except ValueError as exc:
            raise ConfigError(f"jobs file {str(path)!r}: not JSON: {exc}") from None
        if isinstance(data, dict):
            data = data.get("smart_live_jobs")
        if not isinstance(data, list):
            raise ConfigError(f"jobs file {str(path)!r}: must hold a JSON list of jobs")
        for index, job in enumerate(data):
            if not isinstance(job, dict):
                raise ConfigError(f"jobs file {str(path)!r}: item {index} is not an object")
            try:
                self.add_job(job)
            except ValueError as exc:
                raise ConfigError(f"jobs file {str(path)!r}: item {index}: {exc}") from None
        return len(data)

    def query(self, room_id: str, query: JobQuery) -> tuple[int, list[dict[str, Any]]]:
        """``count`` (all matches) and the page, as Table 5 answers them."""
        with self._lock:
            jobs = [j for j in self._jobs.values() if same_id(j["room_id"], room_id)]
            if query.states is not None:
                jobs = [j for j in jobs if j.get("state") in query.states]
            if query.since is not None or query.until is not None:
                # create_since / create_until are inclusive ("not earlier" / "not later", Table 2).
                jobs = [
                    j
                    for j in jobs
                    if (created := _created(j)) is not None
                    and (query.since is None or created >= query.since)
                    and (query.until is None or created <= query.until)
                ]
            jobs.sort(
                key=lambda j: (_created(j) or _EARLIEST, str(j["job_id"])),
                reverse=query.descending,
            )
            page = jobs[query.offset : query.offset + query.limit]
            return len(jobs), copy.deepcopy(page)

    # -- requests ----------------------------------------------------------------------------

    @property
    def requests(self) -> list[RequestRecord]:
        with self._lock:
            return list(self._log)

    def clear_requests(self) -> None:
        with self._lock:
            self._log.clear()

    def record(self, entry: RequestRecord) -> None:
        with self._lock:
            self._log.append(entry)

    def authenticate(
        self,
        *,
        method: str,
        raw_path: str,
        query_string: str,
        headers: Sequence[tuple[bytes, bytes]],
        body: bytes,
    ) -> str:
        """token, aksk, none (no credential) or invalid (one that does not verify)."""
        seen: dict[str, list[str]] = {}
        for raw_name, raw_value in headers:
            try:
                value = raw_value.decode("utf-8")
            except UnicodeDecodeError:
                return "invalid"
            seen.setdefault(raw_name.decode("latin-1").lower(), []).append(value)
        tokens = seen.get("x-auth-token")
        if tokens is not None:
            with self._lock:
                accepted = list(self._tokens)
            ok = len(tokens) == 1 and any(
                hmac.compare_digest(tokens[0].encode(), token.encode()) for token in accepted
            )
            return "token" if ok else "invalid"
        authorization = seen.get("authorization")
        if authorization is None:
            return "none"
        try:
            verified = self._verify_signature(
                authorization, seen, method, raw_path, query_string, body
            )
        except Exception:  # any malformed piece the SDK's signer trips on: not verified
            verified = False
        return "aksk" if verified else "invalid"

    def _verify_signature(
        self,
        authorization: list[str],
        headers: Mapping[str, list[str]],
        method: str,
        raw_path: str,
        query_string: str,
        body: bytes,
    ) -> bool:
        match = (
            _AUTHORIZATION.fullmatch(authorization[0].strip()) if len(authorization) == 1 else None
        )
        if match is None:
            return False
        ak, signed_list, signature = match.groups()
        with self._lock:
            sk = self._credentials.get(ak)
        signed = signed_list.split(";")
        required = {"host", "x-sdk-date"}
        if sk is None or not required <= set(signed) or "authorization" in signed:
            return False
        # X-Project-Id is "mandatory for AK/SK authentication" (Table 3).
        if len(headers.get("x-project-id", [])) != 1:
            return False
        values: dict[str, str] = {}
        for name in signed:
            found = headers.get(name, [])
            if name != name.lower() or name in values or len(found) != 1:
                return False
            values[name] = found[0]
        signed_at = datetime.strptime(values["x-sdk-date"], SDK_DATE_FORMAT).replace(tzinfo=UTC)
        if abs(self._now() - signed_at) > MAX_SKEW:
            return False
        # The SDK's own signer, over the same pieces the client signed: canonical request, string
        # to sign and HMAC are its code, not a copy of the algorithm.
        rebuilt = SdkRequest(
            method=method,
            schema="http",
            host=values["host"],
            resource_path=raw_path,
            query_params=parse_qsl(query_string, keep_blank_values=True),
            header_params=values,
            body=body or None,
        )
        Signer(BasicCredentials(ak=ak, sk=sk)).sign(rebuilt)
        expected = _AUTHORIZATION.fullmatch(rebuilt.header_params["Authorization"])
        return expected is not None and hmac.compare_digest(expected[3], signature.lower())


class _RequestId:
    """``X-Request-Id`` (Table 4) on every answer: a fresh uuid hex."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request_id = uuid.uuid4().hex.encode()

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [*message.get("headers", []), (b"x-request-id", request_id)]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_id)


def _answer(status: int, body: Mapping[str, Any]) -> JSONResponse:
    return JSONResponse(dict(body), status_code=status)


def create_fake_app(fake: FakeMetaStudio) -> Starlette:
    async def list_jobs(request: Request) -> Response:
        raw_path = request.scope.get("raw_path") or request.url.path.encode()
        query_string = request.scope.get("query_string", b"").decode("latin-1")
        auth = fake.authenticate(
            method=request.method,
            raw_path=raw_path.decode("latin-1"),
            query_string=query_string,
            headers=request.scope["headers"],
            body=await request.body(),
        )
        items = parse_qsl(query_string, keep_blank_values=True)
        fake.record(RequestRecord(request.method, request.url.path, dict(items), auth))
        if fake.mode == "hang":
            deadline = time.monotonic() + fake.max_hang_seconds
            while fake.mode == "hang" and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
        if auth not in ("token", "aksk"):
            return _answer(401, UNAUTHORIZED)
        if fake.mode == "error" or fake.next_request_fails():
            return _answer(500, INTERNAL)
        if request.path_params["project_id"] != fake.project_id:
            log.info("fake MetaStudio: 400: unknown project_id")
            return _answer(400, INVALID)
        try:
            query = parse_job_query(items)
        except InvalidQuery as exc:
            log.info("fake MetaStudio: 400: %s", exc)
            return _answer(400, INVALID)
        count, page = fake.query(request.path_params["room_id"], query)
        return _answer(200, {"count": count, "smart_live_jobs": page})

    async def put_job(request: Request) -> Response:
        job = await _json_object(request)
        if job is None:
            return _answer(400, {"error_code": "FAKE.BAD_JOB", "error_msg": "a JSON object"})
        job_id = request.path_params["job_id"]
        existed = fake.get_job(job_id) is not None
        try:
            stored = fake.add_job({**job, "job_id": job_id})
        except ValueError as exc:
            return _answer(400, {"error_code": "FAKE.BAD_JOB", "error_msg": str(exc)})
        return _answer(200 if existed else 201, stored)

    async def patch_job(request: Request) -> Response:
        fields = await _json_object(request)
        if fields is None:
            return _answer(400, {"error_code": "FAKE.BAD_JOB", "error_msg": "a JSON object"})
        fields.pop("job_id", None)  # the path names the job
        try:
            return _answer(200, fake.update_job(request.path_params["job_id"], **fields))
        except KeyError:
            return _answer(404, {"error_code": "FAKE.NO_JOB", "error_msg": "no such job"})
        except ValueError as exc:
            return _answer(400, {"error_code": "FAKE.BAD_JOB", "error_msg": str(exc)})

    async def delete_job(request: Request) -> Response:
        if fake.remove_job(request.path_params["job_id"]):
            return Response(status_code=204)
        return _answer(404, {"error_code": "FAKE.NO_JOB", "error_msg": "no such job"})

    async def list_all_jobs(request: Request) -> Response:
        return _answer(200, {"jobs": fake.jobs(request.query_params.get("room_id"))})

    async def set_faults(request: Request) -> Response:
        body = await _json_object(request) or {}
        count, after = body.get("count", 1), body.get("after", 0)
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (count, after)):
            return _answer(400, {"error_code": "FAKE.BAD_FAULT", "error_msg": "count, after: ints"})
        try:
            fake.fail_requests(count, after=after)
        except ValueError as exc:
            return _answer(400, {"error_code": "FAKE.BAD_FAULT", "error_msg": str(exc)})
        return _answer(200, {"count": count, "after": after})

    async def set_mode(request: Request) -> Response:
        body = await _json_object(request)
        try:
            fake.set_mode(body.get("mode") if body is not None else None)  # type: ignore[arg-type]
        except ValueError as exc:
            return _answer(400, {"error_code": "FAKE.BAD_MODE", "error_msg": str(exc)})
        return _answer(200, {"mode": fake.mode})

    async def requests_log(request: Request) -> Response:
        if request.method == "DELETE":
            fake.clear_requests()
            return Response(status_code=204)
        return _answer(200, {"requests": [entry._asdict() for entry in fake.requests]})

    api = "/v1/{project_id}/smart-live-rooms/{room_id}/smart-live-jobs"
    return Starlette(
        routes=[
            Route(api, list_jobs, methods=["GET"]),
            Route("/_fake/jobs", list_all_jobs, methods=["GET"]),
            Route("/_fake/jobs/{job_id}", put_job, methods=["PUT"]),
            Route("/_fake/jobs/{job_id}", patch_job, methods=["PATCH"]),
            Route("/_fake/jobs/{job_id}", delete_job, methods=["DELETE"]),
            Route("/_fake/mode", set_mode, methods=["POST"]),
            Route("/_fake/faults", set_faults, methods=["POST"]),
            Route("/_fake/requests", requests_log, methods=["GET", "DELETE"]),
        ],
        middleware=[Middleware(_RequestId)],
    )


async def _json_object(request: Request) -> dict[str, Any] | None:
    try:
        data = json.loads(await request.body())
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def fake_job(**overrides: Any) -> dict[str, Any]:
    """A realistic SmartLiveJob with every field of Table 6 (and its nested Tables 7-14)."""
    created = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=30)
    started = created + timedelta(seconds=42)
    ended = started + timedelta(minutes=20)

    def rfc3339(moment: datetime) -> str:
        return moment.strftime("%Y-%m-%dT%H:%M:%SZ")

    rtc_room = uuid.uuid4().hex
    job: dict[str, Any] = {
        "job_id": str(uuid.uuid4()),
        "room_id": str(uuid.uuid4()),
        "room_name": "Spring sale live room",
        "state": "SUCCEED",
        "duration": (ended - started).total_seconds(),
        "start_time": rfc3339(started),
        "end_time": rfc3339(ended),
        "error_info": {"error_code": "", "error_msg": ""},
        "create_time": rfc3339(created),
        "lastupdate_time": rfc3339(ended + timedelta(seconds=3)),
        "rtc_room_info": {
            "app_id": uuid.uuid4().hex,
            "room_id": rtc_room,
            "users": [
                {
                    "user_type": "PLAYER",
                    "user_id": uuid.uuid4().hex,
                    "signature": uuid.uuid4().hex + uuid.uuid4().hex,
                    "ctime": int(ended.timestamp()) + 86400,
                }
            ],
        },
        "live_event_report_url": f"https://metastudio-api.example.com/v1/live-events/{rtc_room}",
        "live_event_callback_config": {
            "live_event_type_callback_url": "https://hooks.example.com/callbacks/shop-a",
            "auth_type": "MSS_A",
            "key": "GCTbw44s6MPLh4GqgDpnfuFHgy25Enly",
            "callback_event_type": [
                "SHOOT_SCRIPT_SWITCH",
                "RTMP_STREAM_STATE_CHANGE",
                "REPLY_COMMAND_FINISH",
            ],
        },
        "rtc_callback_config": {"rtc_callback_event_type": ["LIVE_PROGRESS"]},
        "stream_duration": (ended - started).total_seconds() - 1.5,
        "block_reason": "",
        "cover_url": "https://cdn.example.com/covers/spring-sale.png",
        "co_streamer_config": {
            "voice_config": {
                "voice_asset_id": uuid.uuid4().hex,
                "speed": 100,
                "pitch": 100,
                "volume": 140,
            },
            "streamer_action": "SILENCE",
        },
        "live_job_log": {
            "interaction_records_url": "https://obs.example.com/live-logs/interactions.json"
        },
    }
    job.update(overrides)
    return job


def _uvicorn_config(fake: FakeMetaStudio, *, host: str, port: int) -> Any:
    import uvicorn

    return uvicorn.Config(
        create_fake_app(fake),
        host=host,
        port=port,
        log_config=None,
        access_log=False,
        lifespan="off",
        ws="none",
        timeout_graceful_shutdown=1,
    )


@contextmanager
def serve_fake(fake: FakeMetaStudio, *, host: str = "127.0.0.1") -> Iterator[str]:
    """Run the fake in a background thread on a free port; yields its base URL."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(_uvicorn_config(fake, host=host, port=port))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the fake MetaStudio did not start")
        time.sleep(0.01)
    try:
        yield f"http://{host}:{port}"
    finally:
        fake.set_mode("ok")  # release requests held in hang mode
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def run_fake(
    *,
    host: str = "127.0.0.1",
    port: int = 8090,
    jobs_file: str | Path | None = None,
    project_id: str = DEFAULT_PROJECT_ID,
    tokens: Iterable[str] = (DEFAULT_TOKEN,),
    ak: str | None = DEFAULT_AK,
    sk: str | None = DEFAULT_SK,
) -> None:
    """Serve the fake in the foreground (``metastudio-receiver fake-metastudio``)."""
    import uvicorn

    if (ak is None) != (sk is None):
        raise ConfigError("fake-metastudio: give both an AK and an SK, or neither")
    fake = FakeMetaStudio(
        project_id=project_id,
        tokens=tokens,
        credentials={ak: sk} if ak is not None and sk is not None else {},
    )
    if jobs_file is not None:
        loaded = fake.load_jobs(jobs_file)
        log.info("fake MetaStudio: %d job(s) from %s", loaded, jobs_file)
    uvicorn.Server(_uvicorn_config(fake, host=host, port=port)).run()
