"""The fake MetaStudio under the name ``receiver.testing`` has always given it.

It lives in ``receiver.fake_metastudio``, where the demo and ``simulate`` use it too; these are
the names a test suite needs from it.
"""

from receiver.fake_metastudio import DEFAULT_AK as DEFAULT_AK
from receiver.fake_metastudio import DEFAULT_PROJECT_ID as DEFAULT_PROJECT_ID
from receiver.fake_metastudio import DEFAULT_SK as DEFAULT_SK
from receiver.fake_metastudio import DEFAULT_TOKEN as DEFAULT_TOKEN
from receiver.fake_metastudio import FakeMetaStudio as FakeMetaStudio
from receiver.fake_metastudio import create_fake_app as create_fake_app
from receiver.fake_metastudio import fake_job as fake_job
from receiver.fake_metastudio import run_fake as run_fake
from receiver.fake_metastudio import serve_fake as serve_fake
