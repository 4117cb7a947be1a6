"""The Datasette metadata and plugin against a real store, and `trajectories browse` serving it."""

from __future__ import annotations

import importlib.util
import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from _report_server import free_port
from _report_stores import write_store

from tepo_agent.cli import main
from tepo_agent.report.datasette import metadata_for, plugins_dir
from tepo_agent.store import TrajectoryStore


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory, default_model_dir: Path) -> Path:
    path = tmp_path_factory.mktemp("ds") / "runs.db"
    write_store(path, default_model_dir)
    return path


def test_metadata_names_real_columns_and_its_queries_run(db: Path) -> None:
    meta = metadata_for(db)
    (database,) = meta["databases"].values()
    assert list(meta["databases"]) == ["runs"]
    conn = sqlite3.connect(db)
    for table, spec in database["tables"].items():
        columns = {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}
        assert columns, f"no table {table}"
        assert set(spec.get("columns", {})) <= columns, (table, set(spec["columns"]) - columns)
    results = {name: conn.execute(q["sql"]).fetchall() for name, q in database["queries"].items()}
    # tool calls by ΔH sign: calculator -0.5 (surer) and +0.25, search -0.75, lookup unknown
    by_sign = {(r[0], r[1]): r[2] for r in results["tool_calls_by_delta_h"]}
    assert by_sign == {("calculator", "ΔH < 0 (surer)"): 1, ("calculator", "ΔH ≥ 0"): 1,
                       ("search", "ΔH < 0 (surer)"): 1, ("lookup", "unknown"): 1}  # fmt: skip
    versions = {r[0]: r for r in results["versions_by_accuracy"]}
    assert versions[1][3] == 0.5 and versions[1][5] == 0.625  # runs' accuracy, gate's accuracy
    assert [r[1] for r in results["policy_timeline"]][:2] == ["registered", "promoted"]


def test_the_plugin_decodes_token_arrays(db: Path) -> None:
    pytest.importorskip("datasette")
    spec = importlib.util.spec_from_file_location("tepo_tokens", plugins_dir() / "tepo_tokens.py")
    plugin = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(plugin)
    with TrajectoryStore(db, create=False) as store:
        traj = store.get(store.list(limit=1)[0].id)
    row = (
        sqlite3.connect(db)
        .execute(
            "SELECT token_ids, entropies FROM turns WHERE trajectory_id = ? AND idx = 0", [traj.id]
        )
        .fetchone()
    )
    assert plugin.render_cell(row[0], "token_ids", "turns") == str(traj.turns[0].token_ids)
    floats = json.loads(plugin.render_cell(row[1], "entropies", "turns"))
    assert floats == pytest.approx(traj.turns[0].entropies, abs=1e-3)
    assert plugin.render_cell(b"abcd", "text", "turns") is None


def test_browse_without_datasette_says_how_to_install(db: Path, capsys, monkeypatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "datasette" else real(name)
    )
    assert main(["trajectories", "browse", "--db", str(db)]) == 1
    assert "pip install 'tepo-agent[datasette]'" in capsys.readouterr().err


def test_browse_serves_the_store_in_datasette(db: Path) -> None:
    pytest.importorskip("datasette")
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tepo_agent", "trajectories", "browse", "--db", str(db),
         "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        base, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 120
        while True:
            try:
                query = httpx.get(f"{base}/runs/tool_calls_by_delta_h.json?_shape=array")
                break
            except httpx.TransportError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail("datasette did not start")
                time.sleep(0.3)
        assert {r["tool"] for r in query.json()} == {"calculator", "search", "lookup"}
        page = httpx.get(f"{base}/runs/turns").text
        with TrajectoryStore(db, create=False) as store:
            first = store.get(store.list(limit=1)[0].id).turns[0]
        assert str(first.token_ids) in page  # decoded by the plugin, not "<Binary: ...>"
        assert "ΔH_k = H(t_k)" in page  # the column descriptions are there
    finally:
        proc.terminate()
        proc.wait(timeout=30)
