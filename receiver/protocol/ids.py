"""MetaStudio's room and job ids, and the one form they are compared in.

MetaStudio spells one id two ways (metastudio-list-smart-live-jobs.txt): its callbacks carry 32
lower-case hex characters (``"job_id":"e87104f76d7546ce8a46ac6b04c49c3c"``, Table 10), its job
query API answers and takes dashed UUIDs (``"job_id" : "26f06524-4f75-4b3a-a853-b649a21aaf66"``,
the example response; ``smart-live-rooms/24bad716-87b1-45e5-8912-6102f7693265/...``, the
example request). The callback example's room id ``26f065244f754b3aa853b649a21aaf66`` is that
listed job id undashed: the same value.

- ``id_key``: the comparison key. A UUID-shaped id (32 hex digits, bare or dashed 8-4-4-4-12,
  any case) becomes its 32 lower-case hex digits; any other id is kept exactly as it is, so two
  ids that are not UUIDs are equal only when they are the same text.
- ``api_form``: the spelling sent to the job query API: the dashed UUID, as its example request
  uses, for a UUID-shaped id; any other id as it is.

Stored rows keep the id as it was received (answers show it so) and its key in a ``*_key``
column that the indexes and every comparison use. Pure: no web, no database.
"""

from __future__ import annotations

import re

_BARE = re.compile(r"[0-9a-fA-F]{32}")
_DASHED = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


def is_uuid_shaped(value: str) -> bool:
    """32 hex digits, bare or dashed 8-4-4-4-12, in any case."""
    size = len(value)
    if size == 32:
        return _BARE.fullmatch(value) is not None
    return size == 36 and _DASHED.fullmatch(value) is not None


def id_key(value: str) -> str:
    """The form ids are compared and indexed in (see the module docstring)."""
    size = len(value)
    if size == 32:
        if _BARE.fullmatch(value) is not None:
            return value.lower()
    elif size == 36 and _DASHED.fullmatch(value) is not None:
        return value.replace("-", "").lower()
    return value


def optional_key(value: str | None) -> str | None:
    return None if value is None else id_key(value)


def api_form(value: str) -> str:
    """The spelling the job query API uses: the dashed UUID for a UUID-shaped id."""
    if not is_uuid_shaped(value):
        return value
    bare = value.replace("-", "").lower()
    return f"{bare[:8]}-{bare[8:12]}-{bare[12:16]}-{bare[16:20]}-{bare[20:]}"


def callback_form(value: str) -> str:
    """The spelling MetaStudio's callbacks use: 32 lower-case hex digits for a UUID-shaped id."""
    return id_key(value)


def same_id(a: str | None, b: str | None) -> bool:
    """Whether two ids name the same room or job (None matches nothing)."""
    return a is not None and b is not None and id_key(a) == id_key(b)
