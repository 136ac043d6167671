"""The statuses a stored delivery can have (``deliveries.status``).

Apart from receiver.store.models so that the write path (receiver.store.write, run by the store's
writer process) can name them without importing SQLModel and SQLAlchemy.
"""

from __future__ import annotations


class DeliveryStatus:
    STORED = "stored"
    UNDECODABLE = "undecodable"
    DUPLICATE = "duplicate"
    ALL = (STORED, UNDECODABLE, DUPLICATE)
