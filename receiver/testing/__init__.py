"""Helpers for your own tests (as ``structlog.testing`` is for structlog's users).

Sign and build callbacks exactly as MetaStudio does, deliver them, run a faithful fake of
MetaStudio's job query API, and replay real events (an export of ``metastudio-receiver export``)
into a receiver, and check what forwarding sends (``verify_webhook``, a ``WebhookSink`` on
loopback that fails on command)::

    from receiver.testing import build_callback, deliver, replay_file

    callback = build_callback(event_type="SHOOT_SCRIPT_SWITCH", message={...},
                              registered_url="https://hooks.example.com/callbacks/shop-a",
                              key="...")
    report = replay_file("tests/data/export.jsonl", app=create_app(settings),
                         registered_url="https://hooks.example.com/callbacks/shop-a", key="...")
    assert report.ok

The pytest plugin (``receiver.testing.plugin``, installed as ``metastudio_receiver``) wraps these
in the fixtures ``metastudio_callback``, ``fake_metastudio`` and ``metastudio_replay``.

Importing this package is cheap: the heavy modules load on first use of a name.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from receiver.fake_metastudio import FakeMetaStudio, fake_job, serve_fake
    from receiver.protocol.events import encode
    from receiver.protocol.signing import sign_request
    from receiver.testing._callbacks import DEFAULT_KEY, DEFAULT_REGISTERED_URL, CallbackFactory
    from receiver.testing._fake_server import FakeMetaStudioServer
    from receiver.testing._replay import replay_file
    from receiver.testing._running_app import RunningApp
    from receiver.testing._sink import Received, WebhookSink
    from receiver.testing._webhooks import WebhookVerificationFailed, new_secret, verify_webhook
    from receiver.tools.replay import ReplayReport
    from receiver.tools.sender import (
        Answer,
        SignedCallback,
        build_callback,
        deliver,
        deliver_async,
        retarget,
    )

__all__ = [
    "DEFAULT_KEY",
    "DEFAULT_REGISTERED_URL",
    "Answer",
    "CallbackFactory",
    "FakeMetaStudio",
    "FakeMetaStudioServer",
    "Received",
    "ReplayReport",
    "RunningApp",
    "SignedCallback",
    "WebhookSink",
    "WebhookVerificationFailed",
    "build_callback",
    "deliver",
    "deliver_async",
    "encode",
    "fake_job",
    "new_secret",
    "replay_file",
    "retarget",
    "serve_fake",
    "sign_request",
    "verify_webhook",
]

# Where each name lives, loaded on first use (PEP 562), so that the pytest plugin costs nothing
# at start-up. The helpers of this package are in its private modules, by purpose.
_LAZY = {
    "DEFAULT_KEY": "receiver.testing._callbacks",
    "DEFAULT_REGISTERED_URL": "receiver.testing._callbacks",
    "CallbackFactory": "receiver.testing._callbacks",
    "FakeMetaStudioServer": "receiver.testing._fake_server",
    "RunningApp": "receiver.testing._running_app",
    "Received": "receiver.testing._sink",
    "WebhookSink": "receiver.testing._sink",
    "WebhookVerificationFailed": "receiver.testing._webhooks",
    "new_secret": "receiver.testing._webhooks",
    "verify_webhook": "receiver.testing._webhooks",
    "replay_file": "receiver.testing._replay",
    "Answer": "receiver.tools.sender",
    "SignedCallback": "receiver.tools.sender",
    "build_callback": "receiver.tools.sender",
    "deliver": "receiver.tools.sender",
    "deliver_async": "receiver.tools.sender",
    "retarget": "receiver.tools.sender",
    "sign_request": "receiver.protocol.signing",
    "encode": "receiver.protocol.events",
    "ReplayReport": "receiver.tools.replay",
    "FakeMetaStudio": "receiver.fake_metastudio",
    "fake_job": "receiver.fake_metastudio",
    "serve_fake": "receiver.fake_metastudio",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
