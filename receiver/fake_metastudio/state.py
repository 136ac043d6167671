"""What the fake holds while it runs: its jobs, the tokens and AK/SK it accepts, its mode
(ok, error, hang), the faults scheduled for the next queries, and the log of requests it saw;
and who a request is (token, AK/SK signature, none or invalid), by what it accepts.

:class:`FakeMetaStudio` is that state, thread-safe, and the one object tests drive; the HTTP
surface over it is :mod:`receiver.fake_metastudio.app`.
"""

from __future__ import annotations

import copy
import hmac
import json
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

from receiver.errors import ConfigError
from receiver.fake_metastudio.query import JobQuery, select_page
from receiver.fake_metastudio.signature import verify_signature
from receiver.fake_metastudio.spec import DEFAULT_PROJECT_ID, MODES
from receiver.protocol.ids import id_key, same_id


class RequestRecord(NamedTuple):
    """One API request as the fake saw it; ``auth`` is token, aksk, none or invalid."""

    method: str
    path: str
    query: dict[str, str]
    auth: str


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

    def revoke(self, *, ak: str | None = None, token: str | None = None) -> None:
        """Refuse this AK (or token) from now on, as MetaStudio does once a credential is
        deleted: 401 MSS.00000001."""
        with self._lock:
            if ak is not None:
                self._credentials.pop(ak, None)
            if token is not None:
                self._tokens.discard(token)

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
            count, page = select_page(jobs, query)
            return count, copy.deepcopy(page)

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
            verified = verify_signature(
                authorization,
                seen,
                method,
                raw_path,
                query_string,
                body,
                secret_for=self._secret_for,
                now=self._now,
            )
        except Exception:  # any malformed piece the SDK's signer trips on: not verified
            verified = False
        return "aksk" if verified else "invalid"

    def _secret_for(self, ak: str) -> str | None:
        with self._lock:
            return self._credentials.get(ak)
