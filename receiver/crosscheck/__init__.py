"""Cross-checking stored events against MetaStudio's job query API.

``metastudio`` (the client over the official SDK; never imports the store's writer), ``rules``
(jobs + events to findings, pure), ``run`` (a run: ask, compare, store findings and snapshots,
one replica at a time) and ``jobs`` (one job's events, snapshots and findings, as answered).
"""
