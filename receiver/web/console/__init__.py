"""The web console: a room's jobs, their timelines and findings, behind a login.

``routes`` (pages and actions), ``data`` (what a page shows, from the store), ``pages`` (Jinja
templates in ``assets/``, autoescaped) and ``sessions`` (signed session cookies, CSRF).
"""
