"""The programs in examples/ run as a user runs them and do what their docstrings say.

Each runs as a subprocess in a fresh working directory, on "the default model" of a stand-in
``TEPO_AGENT_HOME`` (the random-weight model where the bootstrapped one lives, see conftest), and
its output and database are checked.
"""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _home(stand_in_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEPO_AGENT_HOME", str(stand_in_home))


def run_example(name: str, cwd: Path, *args: str, timeout: float = 240) -> str:
    env = dict(os.environ)
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert proc.returncode == 0, f"{name} failed:\n{proc.stdout}\n{proc.stderr[-3000:]}"
    return proc.stdout


def db_rows(db: Path, sql: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(db) as conn:
        return conn.execute(sql).fetchall()


def test_embed_agent_streams_entropy_and_stores_the_run(tmp_path: Path) -> None:
    out = run_example("embed_agent.py", tmp_path, "What is 17 * 23?")
    assert re.search(r"^  turn 0: H = \d+\.\d+ nats/token$", out, re.MULTILINE), out
    stored = re.search(r"stored trajectory ([0-9a-f]{32}) in tepo-agent.db: policy v0", out)
    assert stored is not None, out
    rows = db_rows(tmp_path / "tepo-agent.db", "SELECT id, app_tag, task FROM trajectories")
    assert rows == [(stored.group(1), "embed-example", "What is 17 * 23?")]
    assert (tmp_path / "search.db").is_file()  # the corpus it indexed for the search tool


def test_own_graph_runs_are_recorded_token_exact(tmp_path: Path) -> None:
    out = run_example("own_graph.py", tmp_path)
    assert "assistant turns stored as sampled: True" in out, out
    assert "stored sequence == what the model saw: True" in out, out
    rows = db_rows(tmp_path / "tepo-agent.db", "SELECT app_tag FROM trajectories")
    assert rows == [("own-graph-example",)]


def test_collect_and_feedback_shares_one_db_and_queues_scored_groups(tmp_path: Path) -> None:
    out = run_example("collect_and_feedback.py", tmp_path, "--workers", "2")
    db = tmp_path / "tepo-agent.db"
    # 2 processes x (a group of 2 + 1 ungrouped), all scored
    assert db_rows(db, "SELECT app_tag, count(*) FROM trajectories GROUP BY 1 ORDER BY 1") == [
        ("app-0", 3),
        ("app-1", 3),
    ]
    assert db_rows(db, "SELECT count(*) FROM trajectories WHERE score IS NULL") == [(0,)]
    assert db_rows(db, "SELECT source, count(*) FROM feedback GROUP BY 1 ORDER BY 1") == [
        ("user", 1),
        ("verifier", 6),
    ]
    assert "scored_since(0): 4 groups" in out, out
    assert "next cursor 6: 0 groups waiting after it" in out, out


def test_retrain_publishes_hot_swaps_and_rolls_back(tmp_path: Path) -> None:
    out = run_example("retrain.py", tmp_path, timeout=400)
    db = tmp_path / "retrain" / "tepo-agent.db"
    statuses = dict(db_rows(db, "SELECT version, status FROM policies"))
    assert statuses[0] == "live"
    assert 1 in statuses, out
    if statuses[1] == "rejected":  # the gate kept v0 serving
        assert "next request served by v0" in out, out
    else:
        assert "⇄ hot swap: now serving v1" in out, out
        assert "next request served by v1" in out, out
        assert "after rollback, served by v0" in out, out
        versions = db_rows(db, "SELECT DISTINCT policy_version FROM turns WHERE role='assistant'")
        assert sorted(v for (v,) in versions) == [0, 1]


def test_serve_and_http_apps_share_one_server_and_one_db(tmp_path: Path) -> None:
    out = run_example("serve_and_http.py", tmp_path, "--apps", "2")
    assert len(re.findall(r"^app \d: stored [0-9a-f]{32} \(policy v0\)", out, re.MULTILINE)) == 2
    assert "(topk; mean bounds" in out, out
    rows = db_rows(tmp_path / "tepo-agent.db", "SELECT app_tag FROM trajectories ORDER BY 1")
    assert rows == [("http-app-0",), ("http-app-1",)]


def test_record_openai_app_records_scores_trains_and_serves_the_new_version(
    tmp_path: Path,
) -> None:
    out = run_example("record_openai_app.py", tmp_path, timeout=400)
    assert "recorded and scored 8 conversations on v0" in out, out
    assert "the server now serves v1" in out, out
    assert "next request served by v1" in out, out
    db = tmp_path / "record" / "tepo-agent.db"
    # every conversation is one scored trajectory of the server's key, its completions mapped
    assert db_rows(db, "SELECT app_tag, count(*), count(score) FROM trajectories") == [
        ("default", 9, 9)
    ]
    assert db_rows(db, "SELECT count(DISTINCT trajectory_id) FROM served_responses") == [(9,)]
    versions = db_rows(db, "SELECT DISTINCT policy_version FROM turns WHERE role='assistant'")
    assert sorted(v for (v,) in versions) == [0, 1]
