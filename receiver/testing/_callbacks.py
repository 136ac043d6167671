"""Signing callbacks for one endpoint, as MetaStudio signs them: :class:`CallbackFactory` (the
``metastudio_callback`` fixture) and the endpoint it signs for by default
(:data:`DEFAULT_REGISTERED_URL`, :data:`DEFAULT_KEY`), with the receiver's matching
``[[endpoints]]`` table.

Loads nothing heavy: the sender is imported when a callback is first built.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from receiver.config import EndpointSettings
    from receiver.tools.sender import Answer, SignedCallback

DEFAULT_REGISTERED_URL = "https://hooks.example.com/callbacks/shop-a"
# A public test value of the longest length MetaStudio allows (32 characters).
DEFAULT_KEY = "test-key-not-a-secret-0123456789"


@dataclass(frozen=True, slots=True)
class CallbackFactory:
    """``build_callback`` bound to one endpoint: ``factory(event_type, message) -> SignedCallback``.

    The ``metastudio_callback`` fixture is one of these. ``endpoint_table()`` gives the matching
    ``[[endpoints]]`` table for the receiver's settings, so both sides agree by construction.
    """

    registered_url: str = DEFAULT_REGISTERED_URL
    key: str = field(default=DEFAULT_KEY, repr=False)
    auth_type: str = "MSS_A"
    signed_uri: str = "host_path_query"
    time_unit: str = "seconds"
    message_as: str = "string"

    def __call__(
        self,
        event_type: str,
        message: Mapping[str, Any] | None = None,
        *,
        body: bytes | None = None,
        when: float | None = None,
        extra_headers: Mapping[str, str] | None = None,
        **changes: Any,
    ) -> SignedCallback:
        """One signed callback; keyword ``changes`` override this factory's fields once
        (e.g. ``key="wrong"``, ``message_as="object"``)."""
        from receiver.tools.sender import build_callback

        bound = replace(self, **changes) if changes else self
        return build_callback(
            event_type=event_type,
            message=message,
            body=body,
            registered_url=bound.registered_url,
            auth_type=bound.auth_type,
            key=bound.key,
            when=when,
            signed_uri=bound.signed_uri,
            time_unit=bound.time_unit,
            message_as=bound.message_as,
            extra_headers=extra_headers,
        )

    def bind(self, endpoint: EndpointSettings | None = None, **changes: Any) -> CallbackFactory:
        """A copy for another endpoint: from a configured ``EndpointSettings`` (its first key)
        and/or explicit field changes."""
        if endpoint is not None:
            unit = endpoint.time_unit.value
            changes = {
                "registered_url": endpoint.registered_url,
                "auth_type": endpoint.auth_type.value,
                "key": endpoint.keys[0] if endpoint.keys else "",
                "signed_uri": endpoint.signed_uri.value,
                "time_unit": "seconds" if unit == "auto" else unit,
                **changes,
            }
        return replace(self, **changes)

    @property
    def endpoint_name(self) -> str:
        """The last path segment of the registered URL (``/callbacks/{name}``)."""
        return urlsplit(self.registered_url).path.rstrip("/").rpartition("/")[2] or "default"

    def endpoint_table(self, **overrides: Any) -> dict[str, Any]:
        """The receiver's ``[[endpoints]]`` table that verifies what this factory signs."""
        table: dict[str, Any] = {
            "name": self.endpoint_name,
            "registered_url": self.registered_url,
            "auth_type": self.auth_type,
            "signed_uri": self.signed_uri,
            "time_unit": self.time_unit,
        }
        if self.auth_type.upper() == "NONE":
            table["allow_unauthenticated"] = not urlsplit(self.registered_url).query
        else:
            table["keys"] = [self.key]
        table.update(overrides)
        return table

    def deliver(self, callback: SignedCallback, *, to: str | None = None, **options: Any) -> Answer:
        """Shortcut for :func:`receiver.tools.sender.deliver`."""
        from receiver.tools.sender import deliver

        return deliver(callback, to=to, **options)
