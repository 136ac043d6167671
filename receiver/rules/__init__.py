"""Stream health from the callbacks themselves, with no MetaStudio credentials (PRODUCT.md,
"Stream health within seconds"): ``stream_down`` and ``stream_flapping`` findings, opened within
seconds of what the RTMP events say and forwarded like every finding.

``stream`` (the rules, pure: an RTMP event applied to a job's health, and what opens or
resolves at a given moment) and ``monitor`` (follows the event log past its place, keeps each
job's health in ``stream_health``, and looks every half second, so a stream that stays down
opens its finding with no further callback; one replica at a time, under a lease, and it picks
up after a restart where it was).
"""
