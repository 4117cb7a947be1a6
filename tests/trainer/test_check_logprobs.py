"""check-logprobs: recomputed logprobs of freshly collected trajectories equal the logged ones."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from _tepo_data import collect, make_model

from tepo_agent.errors import TrainerError
from tepo_agent.policy.registry import PolicyRegistry
from tepo_agent.trainer.logprob_check import check_logprobs


@pytest.fixture(scope="module")
def collected(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("check")
    model = make_model(root / "model")
    db = root / "t.db"
    with PolicyRegistry(db) as registry:
        registry.ensure_base(str(model))
    collect(model, db, groups=2, n=3)
    return model, db


def test_cli_reports_sub_1e3_difference_with_the_same_weights(collected: tuple[Path, Path]) -> None:
    _, db = collected
    done = subprocess.run(
        [sys.executable, "-m", "tepo_agent", "check-logprobs", "--db", str(db), "--limit", "6"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "6 trajectories" in done.stdout
    mean = float(re.search(r"mean ([0-9.e+-]+),", done.stdout).group(1))  # type: ignore[union-attr]
    assert mean < 1e-3


def test_library_report_and_other_weights_disagree(
    collected: tuple[Path, Path], tmp_path: Path
) -> None:
    _, db = collected
    same = check_logprobs(db, limit=4)
    assert same.trajectories == 4 and same.tokens > 0 and same.version == 0
    assert same.max_abs_diff < 1e-3 and abs(same.ratio_max - 1) < 1e-3
    other = check_logprobs(db, model_dir=make_model(tmp_path / "other", seed=7), limit=4)
    assert other.mean_abs_diff > 1e-2 and other.ratio_std > same.ratio_std


def test_no_trajectory_of_a_version_is_an_error(tmp_path: Path) -> None:
    model = make_model(tmp_path / "model")
    with PolicyRegistry(tmp_path / "t.db") as registry:
        registry.ensure_base(str(model))
    with pytest.raises(TrainerError, match="no trajectory of a registered policy version"):
        check_logprobs(tmp_path / "t.db")
    with pytest.raises(TrainerError, match="no trajectory of policy version 3"):
        check_logprobs(tmp_path / "t.db", version=3)
