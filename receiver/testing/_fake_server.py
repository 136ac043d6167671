"""The fake MetaStudio as a test sees it once it is served: :class:`FakeMetaStudioServer`, its
URL and credentials, with the receiver's ``[metastudio]`` table and environment that point at it
(the ``fake_metastudio`` fixture).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from receiver.fake_metastudio import FakeMetaStudio


@dataclass(frozen=True, slots=True)
class FakeMetaStudioServer:
    """A :class:`FakeMetaStudio` served on loopback (the ``fake_metastudio`` fixture)."""

    base_url: str
    fake: FakeMetaStudio
    project_id: str
    ak: str
    sk: str = field(repr=False)
    token: str = field(repr=False)
    ak_env: str = "HUAWEICLOUD_SDK_AK"
    sk_env: str = "HUAWEICLOUD_SDK_SK"

    def add_job(self, **overrides: Any) -> dict[str, Any]:
        """Add a realistic job (``fake_job(**overrides)``) and return it."""
        from receiver.fake_metastudio import fake_job

        return self.fake.add_job(fake_job(**overrides))

    @property
    def environ(self) -> dict[str, str]:
        """The environment the receiver's ``[metastudio]`` section reads AK/SK from."""
        return {self.ak_env: self.ak, self.sk_env: self.sk}

    def metastudio_table(self, **overrides: Any) -> dict[str, Any]:
        """The receiver's ``[metastudio]`` table pointing at this fake."""
        table: dict[str, Any] = {
            "endpoint": self.base_url,
            "project_id": self.project_id,
            "ak_env": self.ak_env,
            "sk_env": self.sk_env,
            "crosscheck_interval_seconds": 0,
        }
        table.update(overrides)
        return table
