"""A fake of MetaStudio's job query API that the official SDK really talks to.

For the demo, ``simulate`` and tests (``receiver.testing`` exposes it to users): AK/SK and token
auth, paging, the document's error codes, injected faults.

``GET /v1/{project_id}/smart-live-rooms/{room_id}/smart-live-jobs`` answers as
metastudio-list-smart-live-jobs.txt describes it: every query parameter of Table 2, the body of
Tables 5-6, ``X-Request-Id`` (Table 4) on every answer, and the 400/401/500 bodies of Tables 15-17
with their ``MSS.*`` codes. Requests authenticate with ``X-Auth-Token`` or with an AK/SK signature
(``Authorization: SDK-HMAC-SHA256 ...`` + ``X-Sdk-Date``, Table 3) that is recomputed with the
official SDK's own signer, so the real ``huaweicloudsdkmetastudio`` client talks to it unchanged.

Choices the document leaves open, made here on purpose:

- ``limit`` defaults to 10 and is at most 100 (the document gives neither); ``offset`` >= 0.
- A ``project_id`` other than the fake's is answered 400 ``MSS.00000003`` (it is a path parameter,
  Table 1, and 400 is "Parameters error"); a room with no jobs answers ``count`` 0.
- Unknown query parameters are ignored; a parameter given twice is a 400.
- Order of checks: hang mode, then authentication (401), then error mode or a scheduled fault
  (500, see ``fail_requests``), then parameters.
- Ids are matched in either of MetaStudio's spellings (``receiver.protocol.ids``): a job added as
  a dashed UUID is found, and listed in its room, by its 32-hex-digit form too. Jobs are listed as
  they were added; ``fake_job`` and ``simulate`` add them dashed, as the document's answers show
  them.

``/_fake/...`` routes change the fake while it runs. They take no authentication: this is a local
test double, never to be exposed beyond loopback.

The parts: ``spec`` (the document's values and the fake's defaults), ``query`` (Table 2 parsed
and applied), ``signature`` (AK/SK checks), ``state`` (:class:`FakeMetaStudio`), ``app``
(the Starlette app), ``sample`` (:func:`fake_job`) and ``server`` (serving it with uvicorn). The
names below are the ones its users need.
"""

from receiver.fake_metastudio.app import create_fake_app as create_fake_app
from receiver.fake_metastudio.query import InvalidQuery as InvalidQuery
from receiver.fake_metastudio.query import JobQuery as JobQuery
from receiver.fake_metastudio.query import parse_job_query as parse_job_query
from receiver.fake_metastudio.query import parse_rfc3339 as parse_rfc3339
from receiver.fake_metastudio.sample import fake_job as fake_job
from receiver.fake_metastudio.server import run_fake as run_fake
from receiver.fake_metastudio.server import serve_fake as serve_fake
from receiver.fake_metastudio.spec import DEFAULT_AK as DEFAULT_AK
from receiver.fake_metastudio.spec import DEFAULT_LIMIT as DEFAULT_LIMIT
from receiver.fake_metastudio.spec import DEFAULT_PROJECT_ID as DEFAULT_PROJECT_ID
from receiver.fake_metastudio.spec import DEFAULT_SK as DEFAULT_SK
from receiver.fake_metastudio.spec import DEFAULT_TOKEN as DEFAULT_TOKEN
from receiver.fake_metastudio.spec import MAX_LIMIT as MAX_LIMIT
from receiver.fake_metastudio.state import FakeMetaStudio as FakeMetaStudio
from receiver.fake_metastudio.state import RequestRecord as RequestRecord
