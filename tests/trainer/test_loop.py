"""The training step and run: real agent trajectories, exact recomputation, GRPO updates."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch
from _tepo_data import collect, make_model

from tepo_agent.errors import ConfigError
from tepo_agent.store import TrajectoryStore
from tepo_agent.trainer.batch import pack_batch
from tepo_agent.trainer.config import RewardConfig
from tepo_agent.trainer.eval_gate import GateConfig
from tepo_agent.trainer.loop import TrainConfig, Trainer, build_policy
from tepo_agent.trainer.recompute import recompute
from tepo_agent.trainer.training_run import RunConfig, TrainingRun

ACCEPT_ALL = GateConfig(tasks=1, margin=1.0, format_margin=1.0, max_new_tokens=8)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("loop")
    model = make_model(root / "model")
    db = root / "t.db"
    collect(model, db, groups=2, n=4, scores=[1.0, 0.0])
    return model, db


def _trajectories(db: Path) -> list:
    with TrajectoryStore(db) as store:
        return [t for g in store.scored_since(0) for t in g.members]


def test_a_step_raises_the_logprob_of_rewarded_trajectories(data: tuple[Path, Path]) -> None:
    model_dir, db = data
    trajs = _trajectories(db)
    cfg = TrainConfig(
        reward=RewardConfig(kind="outcome"), learning_rate=3e-3, micro_batch_size=3, device="cpu"
    )
    trainer = Trainer(
        build_policy(cfg, str(model_dir)), cfg, weights_version=0, pad_token_id=0,
        base_model=str(model_dir),
    )  # fmt: skip
    batch = pack_batch(trajs)
    mask = batch.sampled_mask.clone()
    mask[:, 0] = False

    def per_row() -> torch.Tensor:
        lp, _ = recompute(trainer.model, batch, micro_batch_size=4)
        return (lp * mask).sum(1) / mask.sum(1)  # (B,) mean logprob of sampled tokens

    before = per_row()
    result = trainer.step(trajs)
    after = per_row()
    won = torch.tensor([t.score == 1.0 for t in trajs])
    assert (after - before)[won].mean() > (after - before)[~won].mean()
    m = result.metrics
    assert m["reward_mean"] == pytest.approx(0.5) and m["reward_std"] == pytest.approx(0.5)
    # first pass on on-policy data: the ratio to the proximal policy is exactly 1
    assert m["ratio_min"] == pytest.approx(1.0, abs=1e-5)
    assert m["ratio_max"] == pytest.approx(1.0, abs=1e-5)
    assert m["off_policy_frac"] == 0.0 and m["entropy"] > 0
    assert trainer.weights_version is None  # the weights no longer match version 0


def test_micro_batches_give_the_same_gradient_as_one_batch(data: tuple[Path, Path]) -> None:
    model_dir, db = data
    trajs = _trajectories(db)
    grads = []
    for mb in (8, 3):
        cfg = TrainConfig(micro_batch_size=mb, device="cpu", reward=RewardConfig(kind="outcome"))
        policy = build_policy(cfg, str(model_dir))
        trainer = Trainer(policy, cfg, weights_version=0, pad_token_id=0, base_model=str(model_dir))
        trainer.optimizer.step = lambda: None  # type: ignore[method-assign]  # keep the gradient
        trainer.step(trajs)
        grads.append(
            torch.cat([p.grad.flatten() for p in policy.parameters() if p.grad is not None])
        )
    assert torch.allclose(grads[0], grads[1], atol=1e-6, rtol=1e-4)


def test_config_rejects_invalid_values() -> None:
    with pytest.raises(ConfigError, match="finetune"):
        TrainConfig(finetune="qlora")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="micro_batch_size"):
        TrainConfig(micro_batch_size=0)
    with pytest.raises(ConfigError, match="learning_rate"):
        TrainConfig(learning_rate=0.0)


def test_a_run_records_metrics_and_publishes_once_at_the_end(
    data: tuple[Path, Path], tmp_path: Path
) -> None:
    model_dir, db_src = data
    db = tmp_path / "t.db"
    db.write_bytes(db_src.read_bytes())
    cfg = RunConfig(
        train=TrainConfig(batch_trajectories=4, device="cpu", learning_rate=1e-3),
        gate=ACCEPT_ALL,
        run_dir=str(tmp_path / "run"),
    )
    out = io.StringIO()
    with TrainingRun(db, cfg, base_model=model_dir, out=out) as run:
        summary = run.run(5, progress=False)
        assert len(summary.steps) == 2 and summary.stopped_for_data
        assert [p.accepted for p in summary.published] == [True]
        live = run.registry.live()
        assert live is not None and live.version == 1 and live.parent == 0
        steps = run.store.train_steps()
    assert [s.step for s in steps] == [1, 2]
    for key in ("loss", "reward_mean", "reward_std", "tool_calls_per_trajectory",
                "entropy_reducing_share", "delta_entropy_mean", "policy_entropy", "clip_frac",
                "ratio_mean", "tokens_per_s"):  # fmt: skip
        assert key in steps[0].metrics
    assert steps[-1].cursor_seq == 8
    assert "step 1: loss" in out.getvalue() and "published version 1 (live)" in out.getvalue()
    assert (Path(live.path) / "model.safetensors").is_file()
    assert (Path(live.path) / "tokenizer.json").is_file()


def test_lora_run_publishes_an_adapter(data: tuple[Path, Path], tmp_path: Path) -> None:
    model_dir, db_src = data
    db = tmp_path / "t.db"
    db.write_bytes(db_src.read_bytes())
    cfg = RunConfig(
        train=TrainConfig(
            finetune="lora", lora_rank=4, batch_trajectories=8, device="cpu", learning_rate=1e-2
        ),
        gate=ACCEPT_ALL,
        run_dir=str(tmp_path / "run"),
    )
    with TrainingRun(db, cfg, base_model=model_dir, out=io.StringIO()) as run:
        summary = run.run(1, progress=False)
        live = run.registry.live()
    assert summary.published[0].accepted
    assert live is not None and live.kind == "lora"
    assert (Path(live.path) / "adapter_config.json").is_file()
