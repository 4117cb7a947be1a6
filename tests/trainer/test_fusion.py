"""The recompute fused with the training forward: the same step as with a separate recompute
pass, and the recompute still runs where it is not the same numbers."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from _tepo_data import collect, make_model

from tepo_agent.store import TrajectoryStore
from tepo_agent.trainer.config import RewardConfig
from tepo_agent.trainer.fusion import deterministic_forward, fusion_mode, graph_pays
from tepo_agent.trainer.loop import StepResult, TrainConfig, Trainer, build_policy
from tepo_agent.trajectory import Trajectory

# what a step records that the fusion could change: the loss, the importance ratios and TIS
# weights, the check of the proximal logprobs against the behaviour ones, the token statistics,
# the exact-entropy figures and the rewards built on them
COMPARED = (
    "loss", "pg_loss", "ratio_mean", "ratio_min", "ratio_max", "tis_weight_mean",
    "tis_capped_frac", "off_policy_frac", "clip_frac", "entropy", "logprob_diff_max",
    "logprob_diff_mean", "trained_tokens", "seq_tokens", "trained_trajectories", "reward_mean",
    "reward_std", "delta_entropy_mean", "entropy_reducing_share", "grad_norm",
)  # fmt: skip


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Trajectory]]:
    root = tmp_path_factory.mktemp("fusion")
    model = make_model(root / "model")
    collect(model, root / "t.db", groups=2, n=3, scores=[1.0, 0.0])
    with TrajectoryStore(root / "t.db") as store:
        trajs = [t for g in store.scored_since(0) for t in g.members]
    return model, trajs


def _trainer(
    model_dir: Path, version: int = 5, attention_dropout: float = 0.0, **overrides: Any
) -> Trainer:
    cfg = TrainConfig(**{"learning_rate": 1e-3, "device": "cpu", **overrides})
    model = build_policy(cfg, str(model_dir))
    model.config.attention_dropout = attention_dropout
    # by default version 5 holds the weights: every token was sampled by another (v0), so TIS
    # weights and the logprob check compare the proximal logprobs with the behaviour ones
    return Trainer(model, cfg, weights_version=version, pad_token_id=0, base_model=str(model_dir))


def _passes(trainer: Trainer) -> list[bool]:
    """Record every forward pass of the trainer's model: True with grad, False without."""
    seen: list[bool] = []
    trainer.stats.register_forward_pre_hook(lambda *_: seen.append(torch.is_grad_enabled()))
    return seen


def _same_step(fused: Trainer, plain: Trainer, a: StepResult, b: StepResult) -> None:
    assert a.metrics["fused"] == 1.0 and b.metrics["fused"] == 0.0
    for key in COMPARED:
        assert a.metrics[key] == pytest.approx(b.metrics[key], abs=1e-6), key
    for p, q in zip(fused.stats.parameters(), plain.stats.parameters(), strict=True):
        assert p.grad is not None and q.grad is not None
        assert torch.allclose(p.grad, q.grad, rtol=0.0, atol=1e-6)
        assert torch.allclose(p, q, rtol=0.0, atol=1e-6)


@pytest.mark.parametrize(
    ("kind", "micro_batch_size"),
    [
        ("sparse", 6),  # "graph": the six rows in one forward, kept for the backward
        ("dense", 8),
        ("outcome", 2),  # "stream": three micro-batches, each its own proximal policy
    ],
)
def test_a_fused_step_equals_the_step_with_a_recompute_pass(
    data: tuple[Path, list[Trajectory]], kind: str, micro_batch_size: int
) -> None:
    model_dir, trajs = data
    opts = {"reward": RewardConfig(kind=kind), "micro_batch_size": micro_batch_size,  # type: ignore[arg-type]
            "skip_zero_variance": False}  # fmt: skip
    fused, plain = _trainer(model_dir, **opts), _trainer(model_dir, fuse_recompute=False, **opts)
    fused_passes, plain_passes = _passes(fused), _passes(plain)
    a, b = fused.step(trajs), plain.step(trajs)
    _same_step(fused, plain, a, b)
    # one forward with grad per micro-batch, and no other pass; the plain step runs one more
    batches = -(-len(trajs) // micro_batch_size)
    assert fused_passes == [True] * batches
    assert plain_passes == [False] * batches + [True] * batches


def test_rows_that_do_not_train_are_recomputed_for_the_entropy_figures(
    data: tuple[Path, list[Trajectory]],
) -> None:
    model_dir, trajs = data
    # two ungrouped runs scored alike: their batch baseline leaves them no advantage, so they
    # skip the backward pass, yet their ΔH counts in the step's figures
    loners = [replace(t, group_id=None, score=1.0) for t in trajs[:2]]
    batch = [*trajs[:3], *loners]
    opts = {"reward": RewardConfig(kind="outcome"), "micro_batch_size": 2}
    fused, plain = _trainer(model_dir, **opts), _trainer(model_dir, fuse_recompute=False, **opts)
    fused_passes = _passes(fused)
    a, b = fused.step(batch), plain.step(batch)
    assert a.metrics["trained_trajectories"] == 3.0
    _same_step(fused, plain, a, b)
    assert fused_passes == [False, True, True]  # the two loners (one micro-batch), then 3 rows


def test_later_updates_on_the_batch_keep_the_first_update_s_proximal_policy(
    data: tuple[Path, list[Trajectory]],
) -> None:
    model_dir, trajs = data
    opts = {"reward": RewardConfig(kind="sparse"), "micro_batch_size": 6, "updates_per_batch": 3,
            "skip_zero_variance": False}  # fmt: skip
    fused, plain = _trainer(model_dir, **opts), _trainer(model_dir, fuse_recompute=False, **opts)
    a, b = fused.step(trajs), plain.step(trajs)
    # after an optimizer step the ratios move away from 1 against the step's start, alike
    assert a.metrics["ratio_max"] > 1.0 + 1e-4
    for key in ("loss", "ratio_mean", "ratio_min", "ratio_max", "entropy", "logprob_diff_max"):
        assert a.metrics[key] == pytest.approx(b.metrics[key], abs=1e-5), key
    for p, q in zip(fused.stats.parameters(), plain.stats.parameters(), strict=True):
        assert torch.allclose(p, q, rtol=0.0, atol=1e-5)


def test_the_recompute_runs_where_it_is_not_the_training_forward(
    data: tuple[Path, list[Trajectory]],
) -> None:
    model_dir, trajs = data
    # sparse rewards over two micro-batches: every ΔH is needed before the first backward
    split = _trainer(model_dir, reward=RewardConfig(kind="sparse"), micro_batch_size=3,
                     skip_zero_variance=False)  # fmt: skip
    passes = _passes(split)
    assert split.step(trajs).metrics["fused"] == 0.0
    assert passes == [False, False, True, True]
    # dropout: the training forward is random, the recompute (eval mode) is not
    noisy = _trainer(
        model_dir, attention_dropout=0.1, reward=RewardConfig(kind="outcome"), micro_batch_size=6
    )
    assert not deterministic_forward(noisy.model)
    passes = _passes(noisy)
    assert noisy.step(trajs).metrics["fused"] == 0.0 and passes == [False, True]
    # the sampler's own exact logs are used as they are: no recompute and nothing to fuse
    held = _trainer(model_dir, version=0, reward=RewardConfig(kind="outcome"))
    result = held.step(trajs)
    assert result.metrics["recomputed"] == 0.0 and result.metrics["fused"] == 0.0


@pytest.mark.parametrize(
    ("kind", "rows", "flags", "mode"),
    [
        ("outcome", 32, {}, "stream"),
        ("sparse", 4, {}, "graph"),
        ("dense", 5, {}, None),  # more rows than a micro-batch (4)
        ("outcome", 4, {"distributed": True}, None),
        ("outcome", 4, {"deterministic": False}, None),
        ("outcome", 4, {"reuse": True}, None),
    ],
)
def test_fusion_mode_by_reward_rows_and_setting(
    kind: str, rows: int, flags: dict[str, bool], mode: str | None
) -> None:
    cfg = TrainConfig(reward=RewardConfig(kind=kind), micro_batch_size=4)  # type: ignore[arg-type]
    args = {"distributed": False, "deterministic": True, "reuse": False, **flags}
    assert fusion_mode(cfg, rows=rows, **args) == mode
    off = TrainConfig(reward=RewardConfig(kind=kind), micro_batch_size=4, fuse_recompute=False)  # type: ignore[arg-type]
    assert fusion_mode(off, rows=rows, **args) is None


def test_the_graph_serves_the_backward_only_when_most_tokens_train() -> None:
    assert graph_pays(kept_tokens=300, trained_tokens=200)
    assert not graph_pays(kept_tokens=300, trained_tokens=199)
