"""The numbers and bodies the fake answers with: its demo credentials, the job states of Table 6,
the ``MSS.*`` error bodies of Tables 15-17, the ``limit`` bounds and the AK/SK clock skew.

What the vendor document (metastudio-list-smart-live-jobs.txt) fixes is marked with its table;
the rest is the fake's own choice, said where it is made. Plain values, no state.
"""

from __future__ import annotations

from datetime import timedelta

# Defaults a demo can use as they are (the CLI prints them).
DEFAULT_PROJECT_ID = "0a1b2c3d4e5f40718293a4b5c6d7e8f9"
DEFAULT_AK = "FAKEMETASTUDIOAK0001"
DEFAULT_SK = "fake-metastudio-secret-key-0123456789abc"  # a public demo value
DEFAULT_TOKEN = "fake-metastudio-token"  # noqa: S105 -- a public demo value

JOB_STATES = frozenset({"WAITING", "PROCESSING", "SUCCEED", "FAILED", "BLOCKED"})  # Table 6
MODES = ("ok", "error", "hang")
UNAUTHORIZED = {"error_code": "MSS.00000001", "error_msg": "Unauthorized"}  # Table 16
INVALID = {"error_code": "MSS.00000003", "error_msg": "Invalid parameter"}  # Table 15
INTERNAL = {"error_code": "MSS.00000004", "error_msg": "Internal Error"}  # Table 17
# The document gives no default and no maximum for ``limit``: these are the fake's choice.
DEFAULT_LIMIT = 10
MAX_LIMIT = 100
# Signed requests older or newer than this are refused, as Huawei's API gateway does.
MAX_SKEW = timedelta(minutes=15)
SDK_DATE_FORMAT = "%Y%m%dT%H%M%SZ"  # X-Sdk-Date, Table 3: YYYYMMDD'T'HHMMSS'Z'
