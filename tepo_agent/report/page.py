"""The report page: one self-contained HTML document (styles, script and data inline).

The same page serves the static report and the live dashboard; ``live`` tells the script where
to poll for fresh data (None for a static report, which then makes no request at all).
"""

from __future__ import annotations

import html
import json
from functools import cache
from importlib import resources
from typing import Any


@cache
def _asset(name: str) -> str:
    return resources.files("tepo_agent.report").joinpath("assets", name).read_text("utf-8")


def _script_json(value: Any) -> str:
    """JSON safe inside a ``<script>`` element (no ``</script>`` or ``<!--`` can appear)."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c").replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def render_page(data: dict[str, Any], *, live: dict[str, Any] | None = None) -> str:
    """The HTML document for ``data`` (see :func:`tepo_agent.report.build.collect`)."""
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="{_csp(live)}">
<title>{html.escape(str(data["meta"]["title"]))}</title>
<style>{_asset("page.css")}</style>
</head>
<body>
<div id="app"></div>
<script type="application/json" id="report-data">{_script_json(data)}</script>
<script type="application/json" id="report-live">{_script_json(live)}</script>
<script>{_asset("page.js")}</script>
</body>
</html>
"""


def _csp(live: dict[str, Any] | None) -> str:
    # The static report may load nothing; the dashboard may only poll its own origin.
    connect = "'self'" if live else "'none'"
    return (
        f"default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; "
        f"connect-src {connect}; img-src data:; form-action 'self'"
    )


def login_page(action: str, failed: bool) -> str:
    """The dashboard's sign-in form (the API key, once; the server then sets a cookie)."""
    note = '<p class="note">That key is not valid.</p>' if failed else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>tepo-agent dashboard: sign in</title>
<style>{_asset("page.css")}</style></head>
<body><form class="login" method="post" action="{html.escape(action)}">
<h2>tepo-agent dashboard</h2>
<p class="note">This server needs its API key. Your browser keeps a session cookie.</p>{note}
<input type="password" name="key" autocomplete="current-password" placeholder="API key" autofocus>
<button type="submit">Sign in</button></form></body></html>
"""
