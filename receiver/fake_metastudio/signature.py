"""AK/SK signatures on requests to the fake (``Authorization: SDK-HMAC-SHA256 ...`` +
``X-Sdk-Date``, Table 3), checked the way Huawei's API gateway checks them: the signed headers,
``X-Project-Id``, a clock skew of at most 15 minutes, and the signature itself.

The signature is recomputed with the official SDK's own signer over the pieces the client
signed, so the real ``huaweicloudsdkmetastudio`` client talks to the fake unchanged. Which keys
are accepted is the caller's (:class:`~receiver.fake_metastudio.state.FakeMetaStudio`): it
passes a lookup in.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from urllib.parse import parse_qsl

from huaweicloudsdkcore.auth.credentials import BasicCredentials
from huaweicloudsdkcore.sdk_request import SdkRequest
from huaweicloudsdkcore.signer.signer import Signer

from receiver.fake_metastudio.spec import MAX_SKEW, SDK_DATE_FORMAT

_AUTHORIZATION = re.compile(
    r"SDK-HMAC-SHA256\s+Access=([^,\s]+),\s*SignedHeaders=([^,\s]+),\s*Signature=([0-9a-fA-F]+)"
)


def verify_signature(
    authorization: list[str],
    headers: Mapping[str, list[str]],
    method: str,
    raw_path: str,
    query_string: str,
    body: bytes,
    *,
    secret_for: Callable[[str], str | None],
    now: Callable[[], datetime],
) -> bool:
    """Whether the one ``Authorization`` value is a valid, fresh AK/SK signature of the request
    (``headers``: lower-case name -> every value given). ``secret_for(ak)`` is the SK of an
    accepted AK (or None), ``now()`` the time ``X-Sdk-Date`` is compared with. A malformed
    piece may raise: the caller counts that as not verified.
    """
    match = _AUTHORIZATION.fullmatch(authorization[0].strip()) if len(authorization) == 1 else None
    if match is None:
        return False
    ak, signed_list, signature = match.groups()
    sk = secret_for(ak)
    signed = signed_list.split(";")
    required = {"host", "x-sdk-date"}
    if sk is None or not required <= set(signed) or "authorization" in signed:
        return False
    # X-Project-Id is "mandatory for AK/SK authentication" (Table 3).
    if len(headers.get("x-project-id", [])) != 1:
        return False
    values: dict[str, str] = {}
    for name in signed:
        found = headers.get(name, [])
        if name != name.lower() or name in values or len(found) != 1:
            return False
        values[name] = found[0]
    signed_at = datetime.strptime(values["x-sdk-date"], SDK_DATE_FORMAT).replace(tzinfo=UTC)
    if abs(now() - signed_at) > MAX_SKEW:
        return False
    # The SDK's own signer, over the same pieces the client signed: canonical request, string
    # to sign and HMAC are its code, not a copy of the algorithm.
    rebuilt = SdkRequest(
        method=method,
        schema="http",
        host=values["host"],
        resource_path=raw_path,
        query_params=parse_qsl(query_string, keep_blank_values=True),
        header_params=values,
        body=body or None,
    )
    Signer(BasicCredentials(ak=ak, sk=sk)).sign(rebuilt)
    expected = _AUTHORIZATION.fullmatch(rebuilt.header_params["Authorization"])
    return expected is not None and hmac.compare_digest(expected[3], signature.lower())
