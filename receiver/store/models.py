"""The tables (SQLModel), and nothing else.

Every column names its SQL type explicitly so that the Alembic migrations in ``migrations/`` say
the same thing on SQLite and PostgreSQL, and ``alembic check`` can hold them to it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Dialect
from sqlmodel import Field, SQLModel

# Named here too: queries and tests import it with the tables.
from receiver.store.statuses import DeliveryStatus as DeliveryStatus


class UTCDateTime(sa.types.TypeDecorator[datetime]):
    """A timestamp that is always UTC-aware in Python (SQLite keeps no zone of its own)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        if dialect.name == "sqlite":
            return value.astimezone(UTC).replace(tzinfo=None)
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


# 64-bit ids on PostgreSQL; SQLite only auto-increments an INTEGER PRIMARY KEY (its rowid).
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
# JSONB on PostgreSQL (indexable, compact); JSON text on SQLite.
Json = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


class Delivery(SQLModel, table=True):
    """One verified callback as received.

    ``stored`` and ``undecodable`` rows keep the raw body; a ``duplicate`` row records that an
    identical delivery came again (``duplicate_of`` points at the original) without a second copy.
    ``dedup_key`` (sha256 of endpoint, signing time and body) is unique: the database, not a
    read-then-write, decides which of two simultaneous copies is the original.
    """

    __tablename__ = "deliveries"
    __table_args__ = (
        sa.Index("ix_deliveries_status_id", "status", "id"),
        # The prune finds an original's receipts by it. Partial: a stored delivery (the hot
        # path's insert) has no duplicate_of and costs this index nothing (migration 0009).
        sa.Index(
            "ix_deliveries_duplicate_of",
            "duplicate_of",
            sqlite_where=sa.text("duplicate_of IS NOT NULL"),
            postgresql_where=sa.text("duplicate_of IS NOT NULL"),
        ),
    )

    id: int | None = Field(default=None, sa_column=sa.Column(BigId, primary_key=True))
    endpoint: str = Field(sa_column=sa.Column(sa.String(64), nullable=False))
    status: str = Field(sa_column=sa.Column(sa.String(16), nullable=False))
    dedup_key: str | None = Field(
        default=None, sa_column=sa.Column(sa.String(64), nullable=True, unique=True)
    )
    duplicate_of: int | None = Field(
        default=None,
        sa_column=sa.Column(BigId, sa.ForeignKey("deliveries.id"), nullable=True),
    )
    received_at: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False))
    signed_at: datetime | None = Field(default=None, sa_column=sa.Column(UTCDateTime()))
    key_index: int | None = Field(default=None, sa_column=sa.Column(sa.SmallInteger()))
    time_unit: str | None = Field(default=None, sa_column=sa.Column(sa.String(16)))
    body: bytes | None = Field(default=None, sa_column=sa.Column(sa.LargeBinary()))
    body_sha256: str = Field(sa_column=sa.Column(sa.String(64), nullable=False))
    body_size: int = Field(sa_column=sa.Column(sa.Integer(), nullable=False))
    headers: dict[str, Any] = Field(default_factory=dict, sa_column=sa.Column(Json, nullable=False))
    query: list[Any] = Field(default_factory=list, sa_column=sa.Column(Json, nullable=False))
    remote_addr: str | None = Field(default=None, sa_column=sa.Column(sa.String(64)))
    error: str | None = Field(default=None, sa_column=sa.Column(sa.String(500)))


class Event(SQLModel, table=True):
    """The decoded event of a stored delivery (one per delivery)."""

    __tablename__ = "events"
    # Each selective filter of GET /v1/events is an equality on a leading column followed by the
    # id order, so one index answers a page by reading only that page's rows (keyset pagination).
    # An endpoint filter has none: endpoints are few, so its rows are dense in the id order.
    # Rooms and jobs are looked up by their key (``receiver.protocol.ids``: one form for the two
    # spellings
    # MetaStudio uses); room_id and job_id keep the spelling that was received, for answers.
    __table_args__ = (
        sa.Index("ix_events_job_key_id", "job_key", "id"),
        sa.Index("ix_events_job_key_event_type_id", "job_key", "event_type", "id"),
        sa.Index("ix_events_room_key_id", "room_key", "id"),
        sa.Index("ix_events_event_type_id", "event_type", "id"),
        sa.Index("ix_events_received_at", "received_at"),
    )

    id: int | None = Field(default=None, sa_column=sa.Column(BigId, primary_key=True))
    delivery_id: int = Field(
        sa_column=sa.Column(BigId, sa.ForeignKey("deliveries.id"), nullable=False, unique=True)
    )
    endpoint: str = Field(sa_column=sa.Column(sa.String(64), nullable=False))
    event_type: str = Field(sa_column=sa.Column(sa.String(128), nullable=False))
    room_id: str | None = Field(default=None, sa_column=sa.Column(sa.String(128)))
    job_id: str | None = Field(default=None, sa_column=sa.Column(sa.String(128)))
    room_key: str | None = Field(default=None, sa_column=sa.Column(sa.String(128)))
    job_key: str | None = Field(default=None, sa_column=sa.Column(sa.String(128)))
    received_at: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False))
    signed_at: datetime | None = Field(default=None, sa_column=sa.Column(UTCDateTime()))
    message: dict[str, Any] = Field(default_factory=dict, sa_column=sa.Column(Json, nullable=False))
    message_encoding: str = Field(sa_column=sa.Column(sa.String(8), nullable=False))
    extra: dict[str, Any] = Field(default_factory=dict, sa_column=sa.Column(Json, nullable=False))


class Rejection(SQLModel, table=True):
    """A refused callback: why, from where, and enough of the body to recognise it.

    Every column is bounded, and the table is pruned to a maximum number of rows, so a flood of
    forged requests cannot fill the disk (see ``receiver.store.rejections``).
    """

    __tablename__ = "rejections"
    __table_args__ = (
        sa.Index("ix_rejections_endpoint_id", "endpoint", "id"),
        sa.Index("ix_rejections_reason_id", "reason", "id"),
    )

    id: int | None = Field(default=None, sa_column=sa.Column(BigId, primary_key=True))
    received_at: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False))
    endpoint: str | None = Field(default=None, sa_column=sa.Column(sa.String(64)))
    reason: str = Field(sa_column=sa.Column(sa.String(32), nullable=False))
    error_code: str = Field(sa_column=sa.Column(sa.String(64), nullable=False))
    detail: str = Field(sa_column=sa.Column(sa.String(300), nullable=False))
    remote_addr: str | None = Field(default=None, sa_column=sa.Column(sa.String(64)))
    clock_skew_seconds: float | None = Field(default=None, sa_column=sa.Column(sa.Float()))
    body_size: int = Field(sa_column=sa.Column(sa.Integer(), nullable=False))
    body_sha256: str = Field(sa_column=sa.Column(sa.String(64), nullable=False))
    body_prefix: str = Field(sa_column=sa.Column(sa.String(64), nullable=False))
    suppressed_before: int = Field(
        default=0, sa_column=sa.Column(sa.Integer(), nullable=False, server_default="0")
    )


class JobSnapshot(SQLModel, table=True):
    """A live job as MetaStudio's job query API returned it (every field, kept as returned).

    A new row is written when the job's data changes; an unchanged job only moves ``fetched_at``.
    job_id and room_id are MetaStudio's spelling; the keys are what lookups use
    (``receiver.protocol.ids``).
    """

    __tablename__ = "job_snapshots"
    __table_args__ = (
        sa.Index("ix_job_snapshots_job_key_id", "job_key", "id"),
        sa.Index("ix_job_snapshots_room_key_id", "room_key", "id"),
    )

    id: int | None = Field(default=None, sa_column=sa.Column(BigId, primary_key=True))
    job_id: str = Field(sa_column=sa.Column(sa.String(128), nullable=False))
    room_id: str = Field(sa_column=sa.Column(sa.String(128), nullable=False))
    job_key: str = Field(sa_column=sa.Column(sa.String(128), nullable=False))
    room_key: str = Field(sa_column=sa.Column(sa.String(128), nullable=False))
    state: str | None = Field(default=None, sa_column=sa.Column(sa.String(32)))
    data: dict[str, Any] = Field(default_factory=dict, sa_column=sa.Column(Json, nullable=False))
    data_sha256: str = Field(sa_column=sa.Column(sa.String(64), nullable=False))
    first_fetched_at: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False))
    fetched_at: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False))


class Finding(SQLModel, table=True):
    """One condition the cross-check found, kept once (``fingerprint`` is unique): seen first and
    last at, how often, and resolved when the condition cleared (reopened if it comes back).
    room_id and job_id are spelled as received; the keys are what lookups use
    (``receiver.protocol.ids``)."""

    __tablename__ = "findings"
    __table_args__ = (
        sa.Index("ix_findings_job_key_id", "job_key", "id"),
        sa.Index("ix_findings_room_key_id", "room_key", "id"),
        sa.Index("ix_findings_kind_id", "kind", "id"),
    )

    id: int | None = Field(default=None, sa_column=sa.Column(BigId, primary_key=True))
    fingerprint: str = Field(sa_column=sa.Column(sa.String(64), nullable=False, unique=True))
    kind: str = Field(sa_column=sa.Column(sa.String(48), nullable=False))
    room_id: str | None = Field(default=None, sa_column=sa.Column(sa.String(128)))
    job_id: str | None = Field(default=None, sa_column=sa.Column(sa.String(128)))
    room_key: str | None = Field(default=None, sa_column=sa.Column(sa.String(128)))
    job_key: str | None = Field(default=None, sa_column=sa.Column(sa.String(128)))
    endpoint: str | None = Field(default=None, sa_column=sa.Column(sa.String(64)))
    event_id: int | None = Field(default=None, sa_column=sa.Column(BigId))
    detail: str = Field(sa_column=sa.Column(sa.String(1000), nullable=False))
    data: dict[str, Any] = Field(default_factory=dict, sa_column=sa.Column(Json, nullable=False))
    first_seen_at: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False))
    last_seen_at: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False))
    resolved_at: datetime | None = Field(default=None, sa_column=sa.Column(UTCDateTime()))
    occurrences: int = Field(default=1, sa_column=sa.Column(sa.Integer(), nullable=False))
    # POST /v1/findings/{id}/ack: "ack" (handled; comes back if the condition clears and
    # returns) or "mute" (stays out of the open list), who, when, why. Open = neither resolved
    # nor acknowledged.
    ack_action: str | None = Field(default=None, sa_column=sa.Column(sa.String(8)))
    acked_by: str | None = Field(default=None, sa_column=sa.Column(sa.String(160)))
    acked_at: datetime | None = Field(default=None, sa_column=sa.Column(UTCDateTime()))
    ack_reason: str | None = Field(default=None, sa_column=sa.Column(sa.String(500)))


class FindingChange(SQLModel, table=True):
    """A finding opened (or reopened), resolved or acknowledged: the log that forwarding reads.

    ``data`` is the finding as ``GET /v1/findings`` showed it just after the change, so a message
    re-sent later carries the same body. Ids follow commit order (receiver.store.finding_log
    holds a lock on PostgreSQL while it adds rows), so a reader past the last id seen skips
    nothing, as with events.
    """

    __tablename__ = "finding_changes"

    id: int | None = Field(default=None, sa_column=sa.Column(BigId, primary_key=True))
    finding_id: int = Field(sa_column=sa.Column(BigId, nullable=False))
    change: str = Field(sa_column=sa.Column(sa.String(16), nullable=False))
    at: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False))
    job_key: str | None = Field(default=None, sa_column=sa.Column(sa.String(128)))
    data: dict[str, Any] = Field(default_factory=dict, sa_column=sa.Column(Json, nullable=False))


class ForwardState(SQLModel, table=True):
    """One destination's place in the logs and its condition (receiver.forward).

    Every event with an id up to ``event_cursor`` (finding change up to ``finding_cursor``) has
    been settled for this destination: acknowledged by it, filtered out, or parked in
    ``forward_messages``. The replica holding the lease (``lease_owner`` until ``lease_until``,
    seconds since the epoch on the database's clock) is the only one sending to it.
    """

    __tablename__ = "forward_state"

    name: str = Field(sa_column=sa.Column(sa.String(40), primary_key=True))
    event_cursor: int = Field(sa_column=sa.Column(sa.BigInteger(), nullable=False))
    finding_cursor: int = Field(sa_column=sa.Column(sa.BigInteger(), nullable=False))
    lease_owner: str | None = Field(default=None, sa_column=sa.Column(sa.String(80)))
    lease_until: float = Field(default=0.0, sa_column=sa.Column(sa.Float(), nullable=False))
    disabled_at: datetime | None = Field(default=None, sa_column=sa.Column(UTCDateTime()))
    disabled_reason: str | None = Field(default=None, sa_column=sa.Column(sa.String(300)))
    # The destination is failing (5xx, time-outs, refused connections) since then; its place
    # is kept and it is tried again at retry_at (``failures`` in a row so far).
    failing_since: datetime | None = Field(default=None, sa_column=sa.Column(UTCDateTime()))
    failures: int = Field(default=0, sa_column=sa.Column(sa.Integer(), nullable=False))
    retry_at: datetime | None = Field(default=None, sa_column=sa.Column(UTCDateTime()))
    last_delivered_at: datetime | None = Field(default=None, sa_column=sa.Column(UTCDateTime()))
    last_error: str | None = Field(default=None, sa_column=sa.Column(sa.String(500)))
    last_error_at: datetime | None = Field(default=None, sa_column=sa.Column(UTCDateTime()))
    created_at: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False))


class ForwardMessage(SQLModel, table=True):
    """A message one destination must be sent on its own: refused and waiting for its next
    attempt, queued behind such a message of the same job (``order_key``), asked for again
    (resend), or dead-lettered (``state`` "dead") once its refusals used up the schedule."""

    __tablename__ = "forward_messages"
    __table_args__ = (
        sa.UniqueConstraint("destination", "message_id", name="uq_forward_messages_message"),
        sa.Index("ix_forward_messages_destination_state_id", "destination", "state", "id"),
    )

    id: int | None = Field(default=None, sa_column=sa.Column(BigId, primary_key=True))
    destination: str = Field(sa_column=sa.Column(sa.String(40), nullable=False))
    message_id: str = Field(sa_column=sa.Column(sa.String(40), nullable=False))
    source: str = Field(sa_column=sa.Column(sa.String(8), nullable=False))
    source_id: int = Field(sa_column=sa.Column(BigId, nullable=False))
    order_key: str = Field(sa_column=sa.Column(sa.String(160), nullable=False))
    state: str = Field(sa_column=sa.Column(sa.String(8), nullable=False))
    attempts: int = Field(default=0, sa_column=sa.Column(sa.Integer(), nullable=False))
    next_attempt_at: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False))
    last_error: str | None = Field(default=None, sa_column=sa.Column(sa.String(500)))
    created_at: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False))


class ForwardAttempt(SQLModel, table=True):
    """One attempt to hand messages to a destination (an HTTP request; a broker's batch), kept
    in a bounded log per destination (receiver.forward.store prunes it)."""

    __tablename__ = "forward_attempts"
    __table_args__ = (sa.Index("ix_forward_attempts_destination_id", "destination", "id"),)

    id: int | None = Field(default=None, sa_column=sa.Column(BigId, primary_key=True))
    destination: str = Field(sa_column=sa.Column(sa.String(40), nullable=False))
    at: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False))
    message_id: str = Field(sa_column=sa.Column(sa.String(40), nullable=False))
    messages: int = Field(default=1, sa_column=sa.Column(sa.Integer(), nullable=False))
    outcome: str = Field(sa_column=sa.Column(sa.String(16), nullable=False))
    status_code: int | None = Field(default=None, sa_column=sa.Column(sa.Integer()))
    latency_ms: float = Field(sa_column=sa.Column(sa.Float(), nullable=False))
    error: str | None = Field(default=None, sa_column=sa.Column(sa.String(300)))
    response: str | None = Field(default=None, sa_column=sa.Column(sa.String(200)))


class StreamHealth(SQLModel, table=True):
    """One job's RTMP stream as its callbacks tell it (receiver.rules): the latest state, since
    when it has been down (DISCONNECTED or RECONNECTING, until CONNECTED or END), its recent
    reconnects, and which of its findings are open, so a rule opens each one once."""

    __tablename__ = "stream_health"

    job_key: str = Field(sa_column=sa.Column(sa.String(128), primary_key=True))
    job_id: str = Field(sa_column=sa.Column(sa.String(128), nullable=False))
    room_id: str | None = Field(default=None, sa_column=sa.Column(sa.String(128)))
    endpoint: str | None = Field(default=None, sa_column=sa.Column(sa.String(64)))
    state: str = Field(sa_column=sa.Column(sa.String(32), nullable=False))
    state_at: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False))
    down_since: datetime | None = Field(default=None, sa_column=sa.Column(UTCDateTime()))
    down_event_id: int | None = Field(default=None, sa_column=sa.Column(BigId))
    # Received times (seconds since the epoch) of the reconnects within the flapping window.
    reconnects: list[Any] = Field(default_factory=list, sa_column=sa.Column(Json, nullable=False))
    down_open: bool = Field(default=False, sa_column=sa.Column(sa.Boolean(), nullable=False))
    flapping_open: bool = Field(default=False, sa_column=sa.Column(sa.Boolean(), nullable=False))
    last_event_id: int = Field(sa_column=sa.Column(BigId, nullable=False))


class Archive(SQLModel, table=True):
    """One archive file of the prune (receiver.store.archives): ``state`` writing (announced
    before the file is written), deleting (written and checked; its rows being deleted) or
    complete (``completed_at``). A prune that stops is finished by the next one, so a row is
    archived in exactly one file."""

    __tablename__ = "archives"

    id: int | None = Field(default=None, sa_column=sa.Column(BigId, primary_key=True))
    path: str = Field(sa_column=sa.Column(sa.String(500), nullable=False, unique=True))
    endpoint: str = Field(sa_column=sa.Column(sa.String(64), nullable=False))
    state: str = Field(sa_column=sa.Column(sa.String(12), nullable=False))
    first_event_id: int | None = Field(default=None, sa_column=sa.Column(BigId))
    last_event_id: int | None = Field(default=None, sa_column=sa.Column(BigId))
    records: int = Field(sa_column=sa.Column(sa.Integer(), nullable=False))
    sha256: str = Field(sa_column=sa.Column(sa.String(64), nullable=False))
    created_at: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False))
    completed_at: datetime | None = Field(default=None, sa_column=sa.Column(UTCDateTime()))


metadata = SQLModel.metadata
