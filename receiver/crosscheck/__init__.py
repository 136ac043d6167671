"""Cross-checking stored events against MetaStudio's job query API.

``metastudio`` (the client: paging, retries, cache; never imports the store's writer) over
``metastudio_sdk`` (the official SDK's types), ``rules`` (jobs + events to findings, pure) and
``signature_reuse`` (deliveries under one signature to findings, pure), ``run`` (a run: ask,
compare, store findings and snapshots, one replica at a time) with ``activity`` (what it reads of
the events), ``run_store`` (what it writes) and ``signature_scan`` (the reused-signature scan),
and ``jobs`` (one job's events, snapshots and findings, as answered).
"""
