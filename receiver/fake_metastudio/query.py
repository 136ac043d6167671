"""The job query of Table 2: its parameters parsed into a :class:`JobQuery` (or refused with
:class:`InvalidQuery`, which the app answers 400 ``MSS.00000003``), and a room's jobs filtered,
sorted and paged by it, as Table 5 answers them.

Pure functions over plain job dicts: the state that holds the jobs (and its lock) is
:mod:`receiver.fake_metastudio.state`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from receiver.fake_metastudio.spec import DEFAULT_LIMIT, JOB_STATES, MAX_LIMIT

_UINT = re.compile(r"[0-9]{1,9}")
_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})")
_EARLIEST = datetime.min.replace(tzinfo=UTC)


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


def select_page(jobs: list[dict[str, Any]], query: JobQuery) -> tuple[int, list[dict[str, Any]]]:
    """``count`` (all of ``jobs`` that match) and the page of them, as Table 5 answers them.
    The dicts themselves are not copied: the caller copies what it hands out."""
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
    jobs = sorted(
        jobs,
        key=lambda j: (_created(j) or _EARLIEST, str(j["job_id"])),
        reverse=query.descending,
    )
    return len(jobs), jobs[query.offset : query.offset + query.limit]
