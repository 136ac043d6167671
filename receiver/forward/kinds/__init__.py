"""One module per kind of destination, each a ``Transport`` (receiver.forward.transport):
``http`` (Standard Webhooks, or a chat service's text), ``redis`` (Streams), ``nats`` (JetStream)
and ``rabbitmq`` (a topic exchange with publisher confirms). :func:`open_transport` picks one;
each client library is imported only when a destination of its kind is configured."""

from __future__ import annotations

from receiver.config import DestinationSettings
from receiver.forward.transport import Transport


def open_transport(destination: DestinationSettings) -> Transport:
    if destination.kind == "http":
        from receiver.forward.kinds.http import HttpTransport

        return HttpTransport(destination)
    if destination.kind == "redis":
        from receiver.forward.kinds.redis import RedisTransport

        return RedisTransport(destination)
    if destination.kind == "nats":
        from receiver.forward.kinds.nats import NatsTransport

        return NatsTransport(destination)
    if destination.kind == "rabbitmq":
        from receiver.forward.kinds.rabbitmq import RabbitTransport

        return RabbitTransport(destination)
    raise ValueError(f"unknown destination kind {destination.kind!r}")
