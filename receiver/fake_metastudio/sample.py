"""A realistic job to put in the fake: :func:`fake_job` fills every field of Table 6 (and its
nested Tables 7-14) with plausible values, fresh ids and times of half an hour ago, so a test
states only the fields it cares about.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any


def fake_job(**overrides: Any) -> dict[str, Any]:
    """A realistic SmartLiveJob with every field of Table 6 (and its nested Tables 7-14)."""
    created = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=30)
    started = created + timedelta(seconds=42)
    ended = started + timedelta(minutes=20)

    def rfc3339(moment: datetime) -> str:
        return moment.strftime("%Y-%m-%dT%H:%M:%SZ")

    rtc_room = uuid.uuid4().hex
    job: dict[str, Any] = {
        "job_id": str(uuid.uuid4()),
        "room_id": str(uuid.uuid4()),
        "room_name": "Spring sale live room",
        "state": "SUCCEED",
        "duration": (ended - started).total_seconds(),
        "start_time": rfc3339(started),
        "end_time": rfc3339(ended),
        "error_info": {"error_code": "", "error_msg": ""},
        "create_time": rfc3339(created),
        "lastupdate_time": rfc3339(ended + timedelta(seconds=3)),
        "rtc_room_info": {
            "app_id": uuid.uuid4().hex,
            "room_id": rtc_room,
            "users": [
                {
                    "user_type": "PLAYER",
                    "user_id": uuid.uuid4().hex,
                    "signature": uuid.uuid4().hex + uuid.uuid4().hex,
                    "ctime": int(ended.timestamp()) + 86400,
                }
            ],
        },
        "live_event_report_url": f"https://metastudio-api.example.com/v1/live-events/{rtc_room}",
        "live_event_callback_config": {
            "live_event_type_callback_url": "https://hooks.example.com/callbacks/shop-a",
            "auth_type": "MSS_A",
            "key": "GCTbw44s6MPLh4GqgDpnfuFHgy25Enly",
            "callback_event_type": [
                "SHOOT_SCRIPT_SWITCH",
                "RTMP_STREAM_STATE_CHANGE",
                "REPLY_COMMAND_FINISH",
            ],
        },
        "rtc_callback_config": {"rtc_callback_event_type": ["LIVE_PROGRESS"]},
        "stream_duration": (ended - started).total_seconds() - 1.5,
        "block_reason": "",
        "cover_url": "https://cdn.example.com/covers/spring-sale.png",
        "co_streamer_config": {
            "voice_config": {
                "voice_asset_id": uuid.uuid4().hex,
                "speed": 100,
                "pitch": 100,
                "volume": 140,
            },
            "streamer_action": "SILENCE",
        },
        "live_job_log": {
            "interaction_records_url": "https://obs.example.com/live-logs/interactions.json"
        },
    }
    job.update(overrides)
    return job
