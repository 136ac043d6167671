"""The console's templates (Jinja2, autoescaped), script and style, shipped in the package as
files under ``receiver/web/console/assets``: nothing to build, nothing to fetch. The script is the
only code the pages run (the Content Security Policy allows no inline script): it sends
acknowledgements with the CSRF token and appends events from ``/v1/events/stream`` to the job's
timeline as they arrive.

Loaded on first use, not at start-up: a receiver whose console nobody opens never imports
Jinja2 (about 26 ms and 1 MiB).
"""

from __future__ import annotations

import functools
from importlib.resources import files
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import jinja2

ASSETS = files("receiver.web.console") / "assets"


@functools.cache
def environment() -> jinja2.Environment:
    import jinja2

    return jinja2.Environment(
        loader=jinja2.PackageLoader("receiver.web.console", "assets"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )


@functools.cache
def asset(name: str) -> str:
    """console.js or console.css."""
    return (ASSETS / name).read_text(encoding="utf-8")
