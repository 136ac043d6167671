"""The reused-signature rule (pure): signed deliveries to ``signature_reused`` finding drafts.

MSS_A signs the URL and the time, not the body (signing-notes.md): the same signature carrying
different bodies at different moments is the trace a captured signed URL leaves when it is posted
again. This rule needs nothing of MetaStudio; ``receiver.crosscheck.signature_scan`` reads the
deliveries it judges from the store and stores its drafts like the job rules' (``rules``).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from receiver.crosscheck.rules import SIGNATURE_REUSED, Draft, Policy, iso


@dataclass(frozen=True, slots=True)
class SignedDelivery:
    """A stored (or undecodable) delivery that came with an MSS_A / MSS_A_HEAD signature."""

    delivery_id: int
    endpoint: str
    signed_at: datetime
    time_unit: str | None
    key_index: int | None
    body_sha256: str
    received_at: datetime
    event_id: int | None = None
    room_id: str | None = None
    job_id: str | None = None


def reused_signatures(
    deliveries: Iterable[SignedDelivery], policy: Policy | None = None
) -> list[Draft]:
    """One finding per signature that carried different bodies at different moments.

    The signature is hmac(key, URI(registered_url) + hwTime) (signing-notes.md): for one endpoint
    it is a function of the key and the hwTime text alone, and verification appends hwTime
    exactly as received, so a replay must repeat it. Endpoint, signing time, time unit (the same
    instant in seconds and in milliseconds is two different hwTime texts) and key index are
    therefore the signature without reading or keeping it. A body that came twice counts once:
    a retry of the same body is no forgery (the store keeps it as a ``duplicate``).

    MetaStudio itself signs every callback of one second (hwTime in seconds) alike: several
    jobs, or one job starting (CONNECTING, CONNECTED, the first SHOOT_SCRIPT_SWITCH), send
    different bodies under one signature all the time. Reporting every such pair would bury the
    one replay in MetaStudio's own traffic, so the rule considers *when* the bodies came: those
    MetaStudio sends in one second arrive together, a body posted to a captured URL later
    arrives later. Different bodies first seen more than ``policy.reuse_spread`` apart are a
    finding; closer together they look like MetaStudio's own and are not (a replay within that
    many seconds of the original is not caught here; the job rules still judge its content).
    A MetaStudio retry that reuses the signature of a callback that first failed is the one
    innocent cause left; the finding says so.
    """
    policy = policy or Policy()
    groups: dict[tuple[str, datetime, str, int], list[SignedDelivery]] = defaultdict(list)
    for d in deliveries:
        key_index = -1 if d.key_index is None else d.key_index
        groups[(d.endpoint, d.signed_at, d.time_unit or "", key_index)].append(d)
    drafts = []
    for (endpoint, signed_at, unit, key_index), members in sorted(groups.items()):
        first_of_body: dict[str, SignedDelivery] = {}
        for delivery in sorted(members, key=lambda d: (d.received_at, d.delivery_id)):
            first_of_body.setdefault(delivery.body_sha256, delivery)
        bodies = list(first_of_body.values())
        if len(bodies) < 2:
            continue
        spread = bodies[-1].received_at - bodies[0].received_at
        if spread <= policy.reuse_spread:
            continue
        late = [d for d in bodies if d.received_at - bodies[0].received_at > policy.reuse_spread]
        drafts.append(_reuse_draft(endpoint, signed_at, unit, key_index, bodies, late, policy))
    return drafts


def _reuse_draft(
    endpoint: str,
    signed_at: datetime,
    unit: str,
    key_index: int,
    bodies: list[SignedDelivery],
    late: list[SignedDelivery],
    policy: Policy,
) -> Draft:
    spread = (bodies[-1].received_at - bodies[0].received_at).total_seconds()
    within = policy.reuse_spread.total_seconds()
    second = "millisecond" if unit == "milliseconds" else "second"
    # Delivery and event ids, rooms and jobs: never the signature, the hwTime text or a key.
    detail = (
        f"{len(bodies)} different bodies came to endpoint {endpoint} under one signature "
        f"(signed {iso(signed_at)}, hwTime in {unit or 'an unknown unit'}), first seen "
        f"{spread:.0f} s apart: {_ids(bodies)}. MSS_A signs the URL and the time, not the "
        f"body: {_ids(late)} may be a captured signed URL posted again with another body inside "
        f"the tolerance window, or a MetaStudio retry of a callback that first failed. "
        f"MetaStudio signs all its callbacks of one {second} alike, but those arrive together "
        f"(within {within:g} s) and are not reported."
    )
    return Draft(
        kind=SIGNATURE_REUSED,
        room_id=None,
        job_id=None,
        endpoint=endpoint,
        event_id=late[0].event_id,
        detail=detail,
        scope=f"{iso(signed_at)}|{unit}|{key_index}",
        data={
            "signed_at": iso(signed_at),
            "time_unit": unit or None,
            "spread_seconds": round(spread, 3),
            "delivery_ids": [d.delivery_id for d in bodies],
            "event_ids": [d.event_id for d in bodies],
            "late_delivery_ids": [d.delivery_id for d in late],
            "received_at": [iso(d.received_at) for d in bodies],
            "room_ids": sorted({d.room_id for d in bodies if d.room_id}),
            "job_ids": sorted({d.job_id for d in bodies if d.job_id}),
        },
    )


def _ids(deliveries: Sequence[SignedDelivery], shown: int = 10) -> str:
    """'deliveries 4, 9 (events 3, -)' ('-': the body did not decode); at most ``shown``."""
    head = deliveries[:shown]
    more = f" and {len(deliveries) - shown} more" if len(deliveries) > shown else ""
    noun = "delivery" if len(deliveries) == 1 else "deliveries"
    events = ", ".join("-" if d.event_id is None else str(d.event_id) for d in head)
    return (
        f"{noun} {', '.join(str(d.delivery_id) for d in head)}{more} "
        f"(event{'' if len(head) == 1 else 's'} {events})"
    )
