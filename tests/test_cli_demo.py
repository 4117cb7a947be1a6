"""`tepo-agent demo` runs the whole loop: collect, train as its own process, gate, hot swap."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tepo_agent.model.default import DefaultModelConfig, init_model

TINY = DefaultModelConfig(
    hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
    num_key_value_heads=1, max_position_embeddings=2048,
)  # fmt: skip


@pytest.mark.slow
def test_demo_collects_trains_publishes_and_serves_the_new_version(tmp_path: Path):
    model = init_model(tmp_path / "model", seed=0, config=TINY)
    work = tmp_path / "work"
    out = subprocess.run(
        [sys.executable, "-m", "tepo_agent", "demo", "--model", str(model), "--workdir",
         str(work), "--tasks", "2", "--group", "2", "--steps", "1"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    for step in ("[1/6]", "[2/6]", "[3/6]", "[4/6]", "[5/6]", "[6/6]"):
        assert step in out.stdout
    assert "hot swap: now serving v1" in out.stdout
    assert "v0: 4 runs" in out.stdout and "v1: 4 runs" in out.stdout
    with sqlite3.connect(work / "tepo-agent.db") as db:
        live = db.execute("select version from policies where status = 'live'").fetchall()
        versions = db.execute("select policy_version, count(*) from trajectories group by 1")
        by_version = dict(versions.fetchall())
        assert db.execute("pragma integrity_check").fetchone()[0] == "ok"
    assert live == [(1,)]
    assert by_version == {0: 4, 1: 4}  # every trajectory names the version that produced it
    report = (work / "report.html").resolve()
    assert f"report: {report}" in out.stdout and "tepo-agent report" in report.read_text()
