"""`tepo-agent demo` in short mode: before → collect → train (own process) → gate → swap → after."""

from __future__ import annotations

import json
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
def test_demo_measures_before_and_after_on_the_same_held_out_items(tmp_path: Path):
    model = init_model(tmp_path / "model", seed=0, config=TINY)
    work = tmp_path / "work"
    out = subprocess.run(
        [sys.executable, "-m", "tepo_agent", "demo", "--model", str(model), "--workdir",
         str(work), "--quick", "--tasks", "3", "--group", "2", "--eval-n", "2",
         "--eval-samples", "1", "--gate-tasks", "2"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "OMP_NUM_THREADS": "1",
             "TEPO_AGENT_HOME": str(tmp_path / "home")},
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    for step in ("[1/6]", "[2/6]", "[3/6] before", "[4/6] learning", "[5/6] after", "[6/6]"):
        assert step in out.stdout
    assert "hot swap: now serving v1" in out.stdout
    assert "accuracy: 0.000 -> 0.000, change +0.000, paired 95% CI" in out.stdout
    assert "What you see: the outcome reward" in out.stdout
    summary = json.loads((work / "demo.json").read_text())
    assert (summary["before_version"], summary["after_version"]) == (0, 1)
    assert summary["score"]["change"]["n"] == 6  # 2 items × 3 suites, paired
    assert set(summary["phases_s"]) >= {"before_s", "collect_s", "train_and_gate_s", "after_s"}
    with sqlite3.connect(work / "tepo-agent.db") as db:
        evals = db.execute("select policy_version, label from evaluations order by id").fetchall()
        versions = dict(
            db.execute("select policy_version, count(*) from trajectories group by 1").fetchall()
        )
        assert db.execute("pragma integrity_check").fetchone()[0] == "ok"
    # before: the demo's evaluation of v0, reused by the gate; after: the gate's of v1
    assert evals == [(0, "demo-before"), (1, "gate")]
    assert versions == {0: 6}  # the training runs; held-out runs are never trajectories
    report = (work / "report.html").resolve()
    assert f"report: {report}" in out.stdout and "tepo-agent report" in report.read_text()
