"""The fake's HTTP surface: a Starlette app over a :class:`~receiver.fake_metastudio.state.
FakeMetaStudio`. ``GET /v1/{project_id}/smart-live-rooms/{room_id}/smart-live-jobs`` checks, in
this order, hang mode, authentication (401), error mode or a scheduled fault (500), the project
and the query (400), then answers Table 5's body; ``/_fake/...`` routes change the fake while it
runs (no authentication: loopback only). Every answer carries ``X-Request-Id`` (Table 4).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from receiver.fake_metastudio.query import InvalidQuery, parse_job_query
from receiver.fake_metastudio.spec import INTERNAL, INVALID, UNAUTHORIZED
from receiver.fake_metastudio.state import FakeMetaStudio, RequestRecord

log = logging.getLogger("receiver.testing.fake_metastudio")


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
