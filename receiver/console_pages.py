"""The console's templates (Jinja2, autoescaped), script and style, shipped in the package as
files under ``receiver/console_assets``: nothing to build, nothing to fetch. The script is the
only code the pages run (the Content Security Policy allows no inline script): it sends
acknowledgements with the CSRF token and appends events from ``/v1/events/stream`` to the job's
timeline as they arrive."""

from __future__ import annotations

from importlib.resources import files

import jinja2

ASSETS = files("receiver") / "console_assets"

ENVIRONMENT = jinja2.Environment(
    loader=jinja2.PackageLoader("receiver", "console_assets"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
)
SCRIPT = (ASSETS / "console.js").read_text(encoding="utf-8")
STYLE = (ASSETS / "console.css").read_text(encoding="utf-8")
