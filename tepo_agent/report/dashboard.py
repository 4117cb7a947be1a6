"""The live dashboard: the report's views over a store that is being written, read-only.

    app = create_dashboard_app("tepo-agent.db", api_key=None)   # an ASGI app (FastAPI)
    uvicorn.run(app, host="127.0.0.1", port=8765)               # tepo-agent dashboard
    serve_app.mount("/dashboard", app)                          # tepo-agent serve --db

Routes (relative to where it is mounted):

- ``GET /``: the report page with live data; the page polls ``GET /data?stamp=S`` every
  ``interval_s`` and redraws when the store changed (``204`` while ``S`` is still current), so
  new trajectories, train steps and versions appear without a reload.
- With an API key, ``GET /`` answers a sign-in form until ``POST /login`` gets the key; the
  server then sets an ``HttpOnly``, ``SameSite=Strict`` session cookie (browsers cannot send a
  bearer header on page loads). The cookie holds an HMAC of the key, never the key. As with the
  API, the key grants everything and nothing is visible without it.

The store is opened read-only for every request: the dashboard can never write to it.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import threading
from typing import Any
from urllib.parse import parse_qs

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from tepo_agent.errors import ConfigError
from tepo_agent.report import queries
from tepo_agent.report.build import collect
from tepo_agent.report.page import login_page, render_page
from tepo_agent.report.queries import SampleFilter
from tepo_agent.report.tokens import TokenDecoder, load_decoder

COOKIE = "tepo_dashboard"


def session_token(api_key: str) -> str:
    """The cookie value for ``api_key``: an HMAC, so a stolen cookie does not reveal the key."""
    return hmac.new(api_key.encode(), b"tepo-agent dashboard session", hashlib.sha256).hexdigest()


def create_dashboard_app(
    db: str | os.PathLike[str],
    *,
    api_key: str | None = None,
    sample: SampleFilter | None = None,
    model: str | os.PathLike[str] | None = None,
    interval_s: float = 2.0,
) -> FastAPI:
    """The dashboard over the store at ``db`` (see the module docstring)."""
    if not interval_s > 0:
        raise ConfigError(f"the dashboard's refresh interval must be > 0 s, got {interval_s}")
    queries.open_readonly(db).close()  # fail now, with a clear error, if the store is missing
    sample = sample or SampleFilter()
    token = session_token(api_key) if api_key else None
    lock = threading.Lock()
    decoder: list[TokenDecoder] = []
    latest: dict[str, Any] = {}  # the data of the newest stamp, shared by every viewer

    def current_data() -> dict[str, Any]:
        """The store's data, collected again only when its stamp moved."""
        with lock:  # one collect at a time; viewers polling together share it
            if not decoder:  # the tokenizer is loaded on the first page, not at start
                decoder.append(load_decoder(model, db))
            with queries.open_readonly(db) as store:
                now = queries.stamp(store)
            if latest.get("stamp") != now:
                data = collect(db, sample, decoder[0])
                data["meta"]["title"] = "tepo-agent dashboard"
                latest.update(stamp=data["meta"]["stamp"], data=data)
            return latest["data"]

    def signed_in(request: Request) -> bool:
        given = request.cookies.get(COOKIE, "")
        return token is None or secrets.compare_digest(given.encode(), token.encode())

    def live(request: Request) -> dict[str, Any]:
        root = request.scope.get("root_path", "").rstrip("/")
        return {"data_url": f"{root}/data", "interval_ms": int(interval_s * 1000)}

    app = FastAPI(title="tepo-agent dashboard", docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/", response_class=HTMLResponse)
    def page(request: Request) -> Response:
        if not signed_in(request):
            return HTMLResponse(login_page("login", failed=False), status_code=401)
        return HTMLResponse(render_page(current_data(), live=live(request)), headers=_NO_STORE)

    @app.post("/login")
    async def login(request: Request) -> Response:
        form = parse_qs((await request.body()).decode("utf-8", "replace"))
        given = (form.get("key") or [""])[0]
        if token is None or not secrets.compare_digest(session_token(given), token):
            return HTMLResponse(login_page("login", failed=True), status_code=401)
        root = request.scope.get("root_path", "").rstrip("/")
        response = RedirectResponse(f"{root}/", status_code=303)
        response.set_cookie(
            COOKIE, token, httponly=True, samesite="strict", path=f"{root}/" if root else "/"
        )
        return response

    @app.get("/data")
    def data(request: Request, stamp: str = "") -> Response:
        if not signed_in(request):
            return JSONResponse({"error": "sign in first"}, status_code=401)
        body = current_data()
        if stamp and stamp == body["meta"]["stamp"]:
            return Response(status_code=204, headers=_NO_STORE)
        return JSONResponse(body, headers=_NO_STORE)

    return app


_NO_STORE = {"Cache-Control": "no-store"}
