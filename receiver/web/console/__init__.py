"""The web console: a room's jobs, their timelines and findings, and where events are forwarded,
behind a login.

``routes`` (pages and actions), ``destinations`` (forwarding's pages), ``data`` (what a page
shows, from the store), ``pages`` (Jinja templates in ``assets/``, autoescaped) and ``sessions``
(signed session cookies, CSRF).
"""
