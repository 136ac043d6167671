"""Keyset pages: one page of a filtered list in id order, and the cursor to the next one.

Pages are ordered by id. Ids are handed out in commit order (on PostgreSQL the write transaction
holds an advisory lock while it allocates them, see ``receiver.store.write``; SQLite has one
writer at a time), so a row committed after a page was read always has a larger id than every
row on that page: following ``next_cursor`` sees every row exactly once while new ones arrive.

A cursor is opaque to clients: base64url of ``v1.<last id>.<filter digest>``. It is refused (400)
when it is malformed or was issued for other filters.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from receiver.errors import QueryError


@dataclass(frozen=True, slots=True)
class Page:
    items: list[dict[str, Any]]
    next_cursor: str | None


# What each of a list's filters narrows: filter name -> (column, comparison), in the order the
# conditions are added. A filter given as None narrows nothing.
Conditions = dict[str, tuple[Any, Callable[[Any, Any], Any]]]


@dataclass(frozen=True, slots=True)
class Listing:
    """One list: its pages' order (the rows' id), its filters, and each row's answer."""

    id_column: sa.ColumnElement[int]
    conditions: Conditions
    render: Callable[[Any], dict[str, Any]]


def matching(
    query: sa.Select[Any], filters: Mapping[str, Any], conditions: Conditions
) -> sa.Select[Any]:
    """``query`` narrowed by each of ``conditions`` whose filter is given."""
    for name, (column, compare) in conditions.items():
        value = filters.get(name)
        if value is not None:
            query = query.where(compare(column, value))
    return query


def page(
    conn: Connection,
    listing: Listing,
    query: sa.Select[Any],
    filters: Mapping[str, Any],
    *,
    limit: int,
    cursor: str | None,
    also: Sequence[Any] = (),
) -> Page:
    """The ``limit`` rows of ``query`` after ``cursor``, narrowed by ``filters`` (name -> value,
    None for not given: the cursor names them), then by the conditions ``also``."""
    after = decode_cursor(cursor, filters)
    query = matching(query, filters, listing.conditions).where(*also)
    id_column = listing.id_column
    if after is not None:
        query = query.where(id_column > after)
    rows = conn.execute(query.order_by(id_column).limit(limit + 1)).all()
    more = len(rows) > limit
    rows = rows[:limit]
    next_cursor = encode_cursor(rows[-1].id, filters) if more and rows else None
    return Page([listing.render(row) for row in rows], next_cursor)


def encode_cursor(last_id: int, filters: Mapping[str, Any]) -> str:
    raw = f"v1.{last_id}.{_digest(filters)}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str | None, filters: Mapping[str, Any]) -> int | None:
    if cursor is None:
        return None
    try:
        if len(cursor) > 200:
            raise ValueError
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
        version, last_id, digest = raw.split(".")
        if version != "v1" or not last_id.isdigit() or len(last_id) > 19:
            raise ValueError
    except (ValueError, UnicodeDecodeError, binascii.Error):
        raise QueryError("cursor: not a cursor this API issued") from None
    if digest != _digest(filters):
        raise QueryError("cursor: was issued for other filters; start again without it")
    return int(last_id)


def _digest(filters: Mapping[str, Any]) -> str:
    canonical = repr(sorted((k, repr(v)) for k, v in filters.items() if v is not None))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]
