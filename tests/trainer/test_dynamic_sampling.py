"""Dynamic sampling: flat groups are dropped before the recompute and the backward pass."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from _tepo_data import collect, make_model

from tepo_agent.store import TrajectoryStore
from tepo_agent.trainer.config import RewardConfig
from tepo_agent.trainer.dynamic_sampling import flat_by_score, informative
from tepo_agent.trainer.loop import TrainConfig, Trainer, build_policy


@pytest.mark.parametrize(
    ("scores", "kind", "flat"),
    [
        ([0.0, 0.0, 0.0], "outcome", True),
        ([0.0, 0.0, 0.0], "sparse", True),  # R = 0 · m/n = 0 for every member
        ([0.0, 0.0, 0.0], "dense", True),  # R = 0 and every r_k = 0 · (1 + α·1[ΔH<0]) = 0
        ([1.0, 1.0, 1.0], "outcome", True),
        ([1.0, 1.0, 1.0], "sparse", False),  # m/n may still differ between members
        ([1.0, 1.0, 1.0], "dense", False),
        ([1.0, 0.0, 1.0], "outcome", False),
        ([], "outcome", False),
    ],
)
def test_groups_flat_by_their_scores(scores: list[float], kind: str, flat: bool) -> None:
    assert flat_by_score(scores, kind) is flat  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list]:
    root = tmp_path_factory.mktemp("dyn")
    model = make_model(root / "model")
    collect(model, root / "t.db", groups=2, n=3, scores=[0.0])  # two all-wrong groups
    collect(model, root / "t.db", groups=1, n=3, seed=1, scores=[1.0, 0.0])
    with TrajectoryStore(root / "t.db") as store:
        trajs = [t for g in store.scored_since(0) for t in g.members]
    return model, trajs


def test_informative_keeps_mixed_groups_and_ungrouped_runs(data: tuple[Path, list]) -> None:
    _, trajs = data
    kept, flat = informative(trajs, "outcome")
    assert flat == 2 and [trajs[i].score for i in kept] == [1.0, 0.0, 1.0]
    loner = replace(trajs[0], group_id=None)  # ungrouped: never dropped here
    assert informative([loner, *trajs[:3]], "outcome") == ([0], 1)


def _trainer(model_dir: Path, skip: bool) -> Trainer:
    cfg = TrainConfig(
        reward=RewardConfig(kind="outcome"), learning_rate=1e-3, device="cpu",
        skip_zero_variance=skip,
    )  # fmt: skip
    return Trainer(
        build_policy(cfg, str(model_dir)), cfg, weights_version=0, pad_token_id=0,
        base_model=str(model_dir),
    )  # fmt: skip


def test_a_step_of_flat_groups_makes_no_update(data: tuple[Path, list]) -> None:
    model_dir, trajs = data
    trainer = _trainer(model_dir, skip=True)
    before = [p.detach().clone() for p in trainer.model.parameters()]
    result = trainer.step(trajs[:6])  # the two all-wrong groups
    assert result.metrics["trained_trajectories"] == 0.0
    assert result.metrics["zero_variance_groups"] == 2.0
    assert all(torch.equal(a, b) for a, b in zip(before, trainer.model.parameters(), strict=True))
    assert trainer.weights_version == 0  # still the registered weights


def test_dropping_flat_groups_trains_only_the_mixed_group(data: tuple[Path, list]) -> None:
    model_dir, trajs = data
    result = _trainer(model_dir, skip=True).step(trajs)
    assert result.metrics["trained_trajectories"] == 3.0
    assert result.metrics["zero_variance_groups"] == 2.0 and result.metrics["groups"] == 3.0
    full = _trainer(model_dir, skip=False).step(trajs)
    assert full.metrics["trained_trajectories"] == 9.0
    assert result.metrics["seq_tokens"] < full.metrics["seq_tokens"]


def _reuse_trainer(model_dir: Path, reuse: bool, version: int | None = 0) -> Trainer:
    cfg = TrainConfig(
        reward=RewardConfig(kind="sparse"), learning_rate=1e-3, device="cpu",
        reuse_logged_exact=reuse,
    )  # fmt: skip
    return Trainer(
        build_policy(cfg, str(model_dir)), cfg, weights_version=version, pad_token_id=0,
        base_model=str(model_dir),
    )  # fmt: skip


def test_on_policy_exact_logs_replace_the_recompute_pass(data: tuple[Path, list]) -> None:
    model_dir, trajs = data  # sampled in process by version 0: exact, on-policy for version 0
    fast = _reuse_trainer(model_dir, reuse=True)
    slow = _reuse_trainer(model_dir, reuse=False)
    a, b = fast.step(trajs), slow.step(trajs)
    assert a.metrics["recomputed"] == 0.0 and b.metrics["recomputed"] == 1.0
    for key in ("loss", "reward_mean", "reward_std", "delta_entropy_mean", "trained_tokens"):
        assert a.metrics[key] == pytest.approx(b.metrics[key], abs=1e-4), key
    for p, q in zip(fast.model.parameters(), slow.model.parameters(), strict=True):
        assert torch.allclose(p, q, atol=1e-5)


def test_other_weights_than_the_sampler_s_are_recomputed(data: tuple[Path, list]) -> None:
    model_dir, trajs = data
    assert _reuse_trainer(model_dir, True, version=5).step(trajs).metrics["recomputed"] == 1.0
    assert _reuse_trainer(model_dir, True, version=None).step(trajs).metrics["recomputed"] == 1.0
