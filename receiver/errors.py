"""The project's errors: one base class, and a tree that says what each failure means.

    ReceiverError
    ├── ConfigError              bad configuration; start-up stops with one line naming the key
    ├── SignatureError           a callback's credential is missing, wrong or expired (401)
    │   ├── SignatureMissing         hwSecret / hwTime (or the URL's own credential) absent
    │   ├── SignatureMalformed       present but not of the documented form
    │   ├── SignatureMismatch        well-formed but no configured key produces it
    │   └── SignatureExpired         signing time outside the endpoint's tolerance window
    ├── DecodeError              a callback body that is not a MetaStudio event (400)
    │   └── UndecodableStored        ... which was verified and kept as "undecodable" (400)
    ├── IntakeError              refusals before verification
    │   ├── UnknownEndpoint          no endpoint of that name (404)
    │   ├── BodyTooLarge             body over max_body_bytes (413)
    │   └── ClientGone               the client left before its body arrived (400, to no one)
    ├── StoreUnavailable         the store could not commit or answer (503)
    ├── QueryError               a bad query parameter (400)
    ├── ApiUnauthorized          /v1 without a valid bearer token (401)
    ├── NotFound                 no such event or job (404)
    ├── NotConfigured            a feature whose config section is absent (409)
    └── MetaStudioError          MetaStudio's job query API did not give an answer
        ├── MetaStudioBadRequest     400 (MSS.00000003): it refused the query
        ├── MetaStudioAuthError      401/403 (MSS.00000001): it refused our credentials
        └── MetaStudioUnavailable    500s, time-outs, unreachable, after bounded retries

Only ``receiver.web.api`` turns these into HTTP answers (``{"error_code", "error_msg"}``).
"""

from __future__ import annotations


class ReceiverError(Exception):
    """Base of every error the project raises on purpose."""

    code = "RCV.ERROR"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConfigError(ReceiverError):
    code = "RCV.CONFIG_INVALID"


class SignatureError(ReceiverError):
    code = "RCV.SIGNATURE_INVALID"


class SignatureMissing(SignatureError):
    code = "RCV.SIGNATURE_MISSING"


class SignatureMalformed(SignatureError):
    code = "RCV.SIGNATURE_MALFORMED"


class SignatureMismatch(SignatureError):
    code = "RCV.SIGNATURE_MISMATCH"


class SignatureExpired(SignatureError):
    code = "RCV.SIGNATURE_EXPIRED"

    def __init__(self, message: str, *, skew_seconds: float) -> None:
        super().__init__(message)
        self.skew_seconds = skew_seconds


class DecodeError(ReceiverError):
    code = "RCV.BODY_UNDECODABLE"


class UndecodableStored(DecodeError):
    """A correctly signed body that did not decode: stored anyway, then refused with 400."""

    def __init__(self, message: str, *, delivery_id: int, duplicate: bool) -> None:
        super().__init__(message)
        self.delivery_id = delivery_id
        self.duplicate = duplicate


class IntakeError(ReceiverError):
    code = "RCV.INTAKE_REFUSED"


class UnknownEndpoint(IntakeError):
    code = "RCV.UNKNOWN_ENDPOINT"


class BodyTooLarge(IntakeError):
    code = "RCV.BODY_TOO_LARGE"


class ClientGone(IntakeError):
    code = "RCV.CLIENT_DISCONNECTED"


class StoreUnavailable(ReceiverError):
    code = "RCV.STORE_UNAVAILABLE"


class QueryError(ReceiverError):
    code = "RCV.BAD_PARAMETER"


class ApiUnauthorized(ReceiverError):
    code = "RCV.API_UNAUTHORIZED"


class CsrfRefused(ReceiverError):
    """A console action (cookie session) without its CSRF token: a forged request."""

    code = "RCV.CSRF_REFUSED"


class NotFound(ReceiverError):
    code = "RCV.NOT_FOUND"


class NotConfigured(ReceiverError):
    code = "RCV.NOT_CONFIGURED"


class MetaStudioError(ReceiverError):
    code = "RCV.METASTUDIO_ERROR"


class MetaStudioBadRequest(MetaStudioError):
    code = "RCV.METASTUDIO_BAD_REQUEST"


class MetaStudioAuthError(MetaStudioError):
    code = "RCV.METASTUDIO_UNAUTHORIZED"


class MetaStudioUnavailable(MetaStudioError):
    code = "RCV.METASTUDIO_UNAVAILABLE"
