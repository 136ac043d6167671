"""The official SDK (``huaweicloudsdkmetastudio``) as ``receiver.crosscheck.metastudio`` uses it.

Everything that knows the SDK's types lives here: building the client (AK/SK or IAM-token
credentials, no proxy, the SDK's own retries off and its logger quiet), the one request
(``ListSmartLiveRequest``), reading an answer (Table 5) from the raw body, and telling the SDK's
failures apart (refused credentials, refused query, MetaStudio or the network failing).
What to ask, how often, and what to keep is ``metastudio``'s business.
"""

from __future__ import annotations

import logging
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from huaweicloudsdkcore.auth.credentials import BasicCredentials
from huaweicloudsdkcore.client import ClientBuilder
from huaweicloudsdkcore.exceptions.exceptions import (
    ClientRequestException,
    ConnectionException,
    RequestTimeoutException,
    ServerResponseException,
)
from huaweicloudsdkcore.http.http_config import HttpConfig
from huaweicloudsdkcore.signer.signer import Signer
from huaweicloudsdkmetastudio.v1 import ListSmartLiveRequest, MetaStudioClient
from requests.exceptions import RequestException

from receiver.errors import (
    MetaStudioAuthError,
    MetaStudioBadRequest,
    MetaStudioError,
    MetaStudioUnavailable,
)


class _TokenCredentials(BasicCredentials):  # type: ignore[misc]
    """IAM token authentication: ``X-Auth-Token`` (Table 3) instead of an AK/SK signature.

    The SDK has no token credential. ``BasicCredentials`` signs with AK/SK, and without them goes
    looking for STS / ECS-metadata credentials; this subclass only sets the header and builds the
    request URI the way the signer would (``Signer.process_request_uri``).
    """

    def __init__(self, token: str, project_id: str) -> None:
        super().__init__(project_id=project_id)
        self._token = token

    def process_auth_request(self, request: Any, http_client: Any) -> Future[Any]:
        done: Future[Any] = Future()
        done.set_result(self.sign_request(request))
        return done

    def sign_request(self, request: Any) -> Any:
        request.header_params["X-Auth-Token"] = self._token
        Signer.process_request_uri(request)
        return request


class _DirectHttpConfig(HttpConfig):  # type: ignore[misc]
    """No proxy, whatever HTTP(S)_PROXY / ALL_PROXY say: ``None`` entries make ``requests`` drop
    the environment's proxies for every scheme (``Session.merge_environment_settings``)."""

    def get_proxy(self) -> dict[str, None]:
        return {"http": None, "https": None, "all": None}


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a room's jobs, as MetaStudio sent them."""

    jobs: list[dict[str, Any]]
    count: int | None
    request_id: str | None


class _BadAnswer(Exception):
    pass


def build_client(
    *,
    endpoint: str,
    project_id: str,
    ak: str | None,
    sk: str | None,
    token: str | None,
    timeout: float,
    verify_tls: bool,
) -> Any:
    """A ``MetaStudioClient`` for ``endpoint``: the IAM token if given, else AK/SK."""
    # The SDK logs every failure at ERROR on a logger of its own that does not propagate;
    # without a handler Python prints those to stderr. Our errors carry the same facts.
    sdk_log = logging.getLogger(f"HuaweiCloud-SDK-{MetaStudioClient.__name__}")
    if not sdk_log.handlers:
        sdk_log.addHandler(logging.NullHandler())
    credentials = (
        _TokenCredentials(token, project_id)
        if token is not None
        else BasicCredentials(ak=ak, sk=sk, project_id=project_id)
    )
    config = _DirectHttpConfig(
        timeout=(min(timeout, 5.0), timeout),
        # The SDK's own retries (urllib3) are off: attempts are made and counted here.
        retry_times=0,
        ignore_ssl_verification=not verify_tls,
    )
    kinds = f"{BasicCredentials.__name__},{_TokenCredentials.__name__}"
    return (
        ClientBuilder(MetaStudioClient, kinds)
        .with_http_config(config)
        .with_credentials(credentials)
        .with_endpoint(endpoint)
        .build()
    )


def page_request(
    *,
    room_id: str,
    offset: int,
    limit: int,
    states: tuple[str, ...] | None,
    since: str | None,
    until: str | None,
) -> Any:
    """One page of the room's jobs, oldest first: jobs created while we page land after the
    pages read."""
    return ListSmartLiveRequest(
        room_id=room_id,
        offset=offset,
        limit=limit,
        state=",".join(states) if states else None,
        sort_key="create_time",
        sort_dir="asc",
        create_since=since,
        create_until=until,
    )


def read_page(response: Any) -> Page:
    """Table 5 from the raw body: every field as sent, including fields this SDK does not model.

    (The SDK's ``to_dict()`` is deprecated for responses, drops unknown fields and fills absent
    ones with None; ``to_json_object()`` is the answer itself.)
    """
    try:
        body = response.to_json_object()
    except ValueError:
        raise _BadAnswer("the body is not JSON") from None
    if not isinstance(body, dict):
        raise _BadAnswer("the body is not a JSON object")
    jobs = body.get("smart_live_jobs", [])
    if not isinstance(jobs, list) or not all(isinstance(job, dict) for job in jobs):
        raise _BadAnswer("smart_live_jobs is not a list of objects")
    count = body.get("count")
    if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 0):
        raise _BadAnswer(f"count is not a non-negative integer: {count!r}")
    request_id = getattr(response, "x_request_id", None)
    return Page(jobs=jobs, count=count, request_id=request_id if request_id else None)


def classify(
    exc: Exception, *, room_id: str, attempt: int, timeout: float, endpoint: str
) -> tuple[type[MetaStudioError], str, bool]:
    """What a failed page request means: the error to raise, its message (not yet redacted)
    and whether another attempt may help."""
    what = f"MetaStudio job query for room {room_id!r}"
    tries = f"after {attempt} attempt{'s' if attempt > 1 else ''}"
    if isinstance(exc, ClientRequestException | ServerResponseException):
        status = exc.status_code
        detail = f"HTTP {status}, {exc.error_code} {exc.error_msg}, request id {exc.request_id}"
        if status in (401, 403):
            text = f"{what}: MetaStudio refused the credentials ({detail})"
            return MetaStudioAuthError, text, False
        if isinstance(exc, ServerResponseException) or status == 429:
            return MetaStudioUnavailable, f"{what} failed {tries}: {detail}", True
        return MetaStudioBadRequest, f"{what}: MetaStudio refused the query ({detail})", False
    if isinstance(exc, RequestTimeoutException | ConnectionException | RequestException):
        reason = str(exc)
        if "timed out" in reason.lower():
            text = f"{what} failed {tries}: no answer within {timeout:g} s"
        else:
            text = f"{what} failed {tries}: cannot reach {endpoint}: {reason[:300]}"
        return MetaStudioUnavailable, text, True
    if isinstance(exc, _BadAnswer):
        return MetaStudioUnavailable, f"{what}: MetaStudio's answer is not a job list: {exc}", False
    return MetaStudioUnavailable, f"{what} failed: {type(exc).__name__}: {str(exc)[:300]}", False
