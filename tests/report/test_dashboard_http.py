"""The dashboard over HTTP on a real port: sign-in by form and HttpOnly cookie, polling by stamp,
read-only, and mounted by `tepo-agent serve --db` at /dashboard."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
from _report_server import free_port, serving
from _report_stores import write_runs, write_store

from tepo_agent.report.dashboard import COOKIE, create_dashboard_app, session_token
from tepo_agent.store import TrajectoryStore
from tepo_agent.trajectory import Trajectory


def test_a_key_protected_dashboard_signs_in_once_and_then_polls(tmp_path, default_model_dir):
    db = tmp_path / "d.db"
    write_store(db, default_model_dir)
    app = create_dashboard_app(db, api_key="s3cret", model=default_model_dir)
    with serving(app) as base, httpx.Client(base_url=base) as client:
        page = client.get("/")
        assert page.status_code == 401 and 'name="key"' in page.text
        assert client.get("/data").status_code == 401
        assert client.post("/login", data={"key": "wrong"}).status_code == 401
        signed = client.post("/login", data={"key": "s3cret"})
        assert signed.status_code == 303
        cookie = signed.headers["set-cookie"]
        assert "HttpOnly" in cookie and "samesite=strict" in cookie.lower()
        assert "s3cret" not in cookie and session_token("s3cret") in cookie
        assert client.cookies.get(COOKIE) == session_token("s3cret")
        page = client.get("/")
        assert page.status_code == 200 and 'id="report-data"' in page.text
        data = client.get("/data").json()
        assert data["meta"]["trajectories"] == 4
        assert client.get("/data", params={"stamp": data["meta"]["stamp"]}).status_code == 204
        with TrajectoryStore(db) as store:
            store.add(Trajectory(task="new run", prompt_token_ids=[1]))
        fresh = client.get("/data", params={"stamp": data["meta"]["stamp"]})
        assert fresh.status_code == 200 and fresh.json()["meta"]["trajectories"] == 5
        # nothing writes through the dashboard
        assert client.post("/data").status_code == 405


def test_serve_with_db_mounts_the_dashboard(
    tmp_path: Path, default_model_dir: Path, wait_healthy: Callable[..., None]
) -> None:
    db = tmp_path / "s.db"
    write_runs(db, default_model_dir)
    port = free_port()
    env = {**os.environ, "TEPO_AGENT_API_KEY": ""}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tepo_agent", "serve", "--model", str(default_model_dir),
         "--db", str(db), "--port", str(port), "--device", "cpu"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        base = f"http://127.0.0.1:{port}"
        wait_healthy(base, proc, 120)
        page = httpx.get(f"{base}/dashboard/", follow_redirects=True)
        assert page.status_code == 200 and "tepo-agent dashboard" in page.text
        assert '"data_url":"/dashboard/data"' in page.text
        assert httpx.get(f"{base}/dashboard/data").json()["meta"]["trajectories"] == 4
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_mounted_under_a_prefix_its_links_and_cookie_follow_it(tmp_path, default_model_dir):
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    db = tmp_path / "m.db"
    write_runs(db, default_model_dir)
    app = FastAPI()
    app.mount("/dashboard", create_dashboard_app(db, api_key="k", model=default_model_dir))
    client = TestClient(app)
    assert (
        client.get("/dashboard", follow_redirects=False).headers["location"].endswith("/dashboard/")
    )
    signed = client.post("/dashboard/login", data={"key": "k"}, follow_redirects=False)
    assert signed.headers["location"] == "/dashboard/"
    assert "Path=/dashboard/" in signed.headers["set-cookie"]
    page = client.get("/dashboard/")
    assert page.status_code == 200 and '"data_url":"/dashboard/data"' in page.text
