"""The reused-signature scan: the deliveries received since the last full run, read and grouped
by signature in the database, judged by ``signature_reuse`` and stored as findings.

It needs nothing of MetaStudio: a signature belongs to an endpoint, not a room.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta

import sqlalchemy as sa

from receiver.config import EndpointSettings
from receiver.crosscheck import rules
from receiver.crosscheck.run_store import upsert_findings
from receiver.crosscheck.signature_reuse import SignedDelivery, reused_signatures
from receiver.protocol.signing import AuthType
from receiver.store.models import Delivery, DeliveryStatus, Event, UTCDateTime

DELIVERIES = Delivery.__table__  # type: ignore[attr-defined]
EVENTS = Event.__table__  # type: ignore[attr-defined]

# How long after its received_at a delivery may still commit (the writer retries a busy store),
# and how far the id order may lag the received_at order: the reused-signature scan looks back
# this much further than the window alone requires.
LATE_COMMIT = timedelta(seconds=60)


def scan_reused_signatures(
    engine: sa.Engine,
    *,
    endpoints: Mapping[str, EndpointSettings],
    policy: rules.Policy,
    scanned_to: datetime,
    now: datetime,
) -> int:
    """Store a finding for each signature that carried different bodies (see
    ``signature_reuse.reused_signatures``) among the deliveries received since ``scanned_to``
    (where the last scan reached); returns how many were opened or reopened.

    No index serves this, on purpose: each one is paid on every insert of the write path.
    All the deliveries of one signature are received within the endpoint's tolerance of its
    signing time, so those of a signature with a new member were received at most twice the
    tolerance before it: the scan reads the id range from there on (the primary key, read
    backwards from the newest row, finds where it starts) and groups it in the database.
    """
    tolerance = max(
        (e.tolerance_seconds for e in endpoints.values() if e.auth_type != AuthType.NONE),
        default=300.0,
    )
    since = scanned_to - LATE_COMMIT
    floor = since - timedelta(seconds=2 * tolerance) - LATE_COMMIT
    d = DELIVERIES
    body_kept = d.c.status.in_([DeliveryStatus.STORED, DeliveryStatus.UNDECODABLE])
    key = (d.c.endpoint, d.c.signed_at, d.c.time_unit, d.c.key_index)
    with engine.begin() as conn:
        start = conn.execute(
            sa.select(d.c.id).where(d.c.received_at < floor).order_by(d.c.id.desc()).limit(1)
        ).scalar()
        in_range = sa.and_(d.c.id > (start or 0), d.c.signed_at.is_not(None), body_kept)
        reused = (
            sa.select(*key)
            .where(in_range)
            .group_by(*key)
            .having(
                sa.func.count(sa.distinct(d.c.body_sha256)) > 1,
                sa.func.max(d.c.received_at, type_=UTCDateTime()) >= since,
                # MetaStudio's own seconds (most groups, on a busy endpoint) stay in the
                # database; the rule decides on the few that are spread wider.
                _spread_over(engine.dialect.name, policy.reuse_spread),
            )
            .subquery()
        )
        members = (
            sa.select(
                d.c.id,
                *key,
                d.c.body_sha256,
                d.c.received_at,
                EVENTS.c.id,
                EVENTS.c.room_id,
                EVENTS.c.job_id,
            )
            .select_from(
                d.join(reused, sa.and_(*(c == reused.c[c.name] for c in key))).outerjoin(
                    EVENTS, EVENTS.c.delivery_id == d.c.id
                )
            )
            .where(in_range)
        )
        found = [
            SignedDelivery(
                delivery_id=row[0],
                endpoint=row[1],
                signed_at=row[2],
                time_unit=row[3],
                key_index=row[4],
                body_sha256=row[5],
                received_at=row[6],
                event_id=row[7],
                room_id=row[8],
                job_id=row[9],
            )
            for row in conn.execute(members)
        ]
        return upsert_findings(conn, reused_signatures(found, policy), now)


def _spread_over(dialect: str, spread: timedelta) -> sa.ColumnElement[bool]:
    """max(received_at) - min(received_at) > spread, for a group of deliveries."""
    first, last = sa.func.min(DELIVERIES.c.received_at), sa.func.max(DELIVERIES.c.received_at)
    seconds = spread.total_seconds()
    if dialect == "sqlite":  # datetimes are text there: julianday() reads them as days
        return (sa.func.julianday(last) - sa.func.julianday(first)) * 86400.0 > seconds
    return sa.func.extract("epoch", last - first) > seconds
