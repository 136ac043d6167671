"""Forwarding: every stored event (and, where asked, every finding change) handed on to the
user's own systems, at least once, in order per job (PRODUCT.md, "Forwarding").

``messages`` (a stored row as the message every kind sends), ``transport`` (the small interface
each kind of destination implements, and what an attempt can come to), ``kinds/`` (one module per
kind: http, redis, nats, rabbitmq), ``chat`` (findings as a chat service's text), ``schedule``
(retry delays, jitter, Retry-After), ``logs`` (the event and finding-change logs past a place),
``store`` (each destination's place, lease, parked messages and attempts in the database),
``settle`` (what a round's outcomes mean for the place and the parked messages), ``conditions``
(active, failing, disabled), ``attempts`` (the attempts log), ``delivery`` (one destination's
loop), ``forwarder`` (every destination of a replica, its leases and wake-ups) and ``admin``
(what the query API and the command line show and change).

The intake never waits for any of it: the event log is in commit order, and each destination
keeps its own place in it (see README, "How a callback is handled").
"""
