"""A training run: poll the store, train, checkpoint, publish; resumable after a crash.

:class:`TrainingRun` ties the step (``trainer.loop``) to the outside world::

    run = TrainingRun("tepo-agent.db", RunConfig(train=TrainConfig(...), gate=GateConfig(...)))
    summary = run.run(steps=2)        # trains, then publishes through the gate
    run.close()

Per step: take up to ``batch_trajectories`` newly scored trajectories after the cursor
(``Store.scored_since``; groups are never cut), train on them, publish when due, save
the trainer state (weights, optimizer, step, cursor) into a new directory, then record the step's
metrics in ``train_steps``. Killed at any point, the next run starts from the last complete state:
at worst one step is redone on the same trajectories (the cursor is saved with the weights).

A fresh run (no saved state) starts from the live policy's weights when their kind matches the
run's (else from the base model), and from the cursor of the last step recorded in the database.
So does a run whose saved weights are a published version that is no longer live (after a
rollback, or a rejected candidate): training follows the registry, keeping its step and cursor.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TextIO

from tqdm import tqdm

from tepo_agent.errors import ConfigError
from tepo_agent.model.io import load_tokenizer
from tepo_agent.policy.registry import PolicyRegistry
from tepo_agent.store import is_store_url, open_store
from tepo_agent.trainer.checkpoint import (
    SavedState,
    TrainerState,
    consolidated_weights,
    load_latest_state,
    save_policy,
    save_state,
)
from tepo_agent.trainer.distributed import Dist
from tepo_agent.trainer.eval_gate import GateConfig
from tepo_agent.trainer.loop import StepResult, TrainConfig, Trainer, build_policy
from tepo_agent.trainer.publish import PublishResult, publish_checkpoint
from tepo_agent.trajectory import Trajectory


@dataclass(frozen=True)
class RunConfig:
    """A training run.

    Attributes:
        train: The step's configuration.
        gate: How candidates are evaluated before going live.
        run_dir: Where policies and trainer states go (default: ``<db>.trainer/`` beside the
            database).
        publish_every: Publish after every N steps; 0 (default) publishes once at the end of
            each :meth:`TrainingRun.run` call that trained at least one step.
        keep_states: Trainer state directories to keep (the newest).
    """

    train: TrainConfig = field(default_factory=TrainConfig)
    gate: GateConfig = field(default_factory=GateConfig)
    run_dir: str | None = None
    publish_every: int = 0
    keep_states: int = 2

    def __post_init__(self) -> None:
        if self.publish_every < 0 or self.keep_states < 1:
            raise ConfigError("RunConfig: publish_every must be >= 0 and keep_states >= 1")


@dataclass
class RunSummary:
    """What a :meth:`TrainingRun.run` call did."""

    steps: list[StepResult] = field(default_factory=list)
    published: list[PublishResult] = field(default_factory=list)
    stopped_for_data: bool = False


def summary_line(step: int, metrics: dict[str, float]) -> str:
    """The one-line per-step report."""
    return (
        f"step {step}: loss {metrics['loss']:+.4f} reward {metrics['reward_mean']:.3f}"
        f"±{metrics['reward_std']:.3f} calls/traj {metrics['tool_calls_per_trajectory']:.2f} "
        f"ΔH<0 {metrics['entropy_reducing_share']:.2f} ΔH {metrics['delta_entropy_mean']:+.3f} "
        f"H {metrics.get('entropy', 0.0):.3f} kl {metrics.get('kl', 0.0):.4f} "
        f"clip {metrics['clip_frac']:.3f} ratio {metrics['ratio_min']:.3f}.."
        f"{metrics['ratio_max']:.3f} {metrics['tokens_per_s']:.0f} tok/s"
    )


@dataclass(frozen=True)
class _Start:
    """Where a run starts (decided by rank 0, which alone reads the store; sent to the rest)."""

    run_dir: Path
    base_model: str
    state: TrainerState
    init_from: str | None
    saved: SavedState | None
    note: str


def _default_run_dir(location: str) -> str:
    """Beside a SQLite file (``DB.trainer``); a database URL has no folder, so it needs one."""
    if is_store_url(location):
        raise ConfigError(
            f"the store {location} is a database URL: name the trainer's checkpoint folder "
            "with --run-dir (RunConfig.run_dir), a directory on this host"
        )
    return f"{location}.trainer"


class TrainingRun:
    """A resumable training run over one trajectory database (see the module docstring).

    Args:
        db: The trajectory database (its registry is used for publishing).
        cfg: The run's configuration.
        base_model: The base model directory; default: the registry's version 0. Must be given
            when the registry has no version 0 yet.
        out: Where the per-step summary lines go.
        dist: This process's place in a torchrun job (``trainer.distributed``; default: one
            process). Every rank builds a ``TrainingRun`` and calls the same methods; rank 0
            alone opens the store, reads the cursor, records steps, prints and publishes.
    """

    def __init__(
        self,
        db: str | os.PathLike[str],
        cfg: RunConfig,
        *,
        base_model: str | os.PathLike[str] | None = None,
        out: TextIO | None = None,
        dist: Dist | None = None,
    ) -> None:
        self.cfg = cfg
        self.dist = dist if dist is not None else Dist()
        self.out = out if out is not None else sys.stdout
        if self.dist.is_main:
            self.store = open_store(db)
            self.registry = PolicyRegistry(self.store)
        start = self.dist.broadcast(self._start(base_model) if self.dist.is_main else None)
        assert start is not None
        self.run_dir, self.base_model, self.state = start.run_dir, start.base_model, start.state
        self.start_note: str | None = start.note
        model = build_policy(cfg.train, self.base_model, start.init_from)
        tokenizer = load_tokenizer(self.base_model)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.trainer = Trainer(
            model,
            cfg.train,
            weights_version=self.state.weights_version,
            pad_token_id=int(pad),
            base_model=self.base_model,
            dist=self.dist,
        )
        if start.saved is not None:
            start.saved.load_into(
                self.trainer.stats, self.trainer.optimizer, distributed=self.dist.active
            )

    def _start(self, base_model: str | os.PathLike[str] | None) -> _Start:
        """Rank 0: resume the saved state, or start from the live policy (module docstring)."""
        cfg = self.cfg
        run_dir = Path(cfg.run_dir or _default_run_dir(self.store.location))
        saved = load_latest_state(run_dir)
        if saved is not None and saved.state.finetune != cfg.train.finetune:
            raise ConfigError(
                f"{run_dir} holds a {saved.state.finetune} run; train with the same "
                f"--finetune or use another --run-dir"
            )
        base = saved.state.base_model if saved is not None else self._base(base_model)
        self.registry.ensure_base(base)
        live = self.registry.live()
        published = saved.state.weights_version if saved is not None else None
        if saved is not None and (published is None or live is None or published == live.version):
            # the saved weights are what the registry serves (or newer, unpublished): go on;
            # a DCP state is loaded into a model built from the base, an older one is a model dir
            init_from = None if saved.sharded else str(saved.model_dir)
            note = f"resuming from step {saved.state.step} ({run_dir})"
            return _Start(run_dir, base, saved.state, init_from, saved, note)
        # a new run, or the registry moved past the saved weights (a rollback, a rejected
        # candidate): start from the live version's weights, keep the step and the cursor
        same_kind = live is not None and live.kind == cfg.train.finetune and live.version > 0
        init_from = live.path if same_kind and live is not None else None
        # a fresh LoRA adapter starts at zero, so it too equals the base model (version 0)
        version = live.version if same_kind and live is not None else 0
        steps = self.store.train_steps()
        last = saved.state if saved is not None else (steps[-1] if steps else None)
        state = TrainerState(
            step=last.step if last is not None else 0,
            cursor_seq=last.cursor_seq if last is not None else 0,
            weights_version=version,
            base_model=base,
            finetune=cfg.train.finetune,
        )
        moved = f"; the registry moved on from v{published}" if saved is not None else ""
        note = f"training from live policy v{version}{moved}"
        return _Start(run_dir, base, state, init_from, None, note)

    def _base(self, base_model: str | os.PathLike[str] | None) -> str:
        if base_model is not None:
            return str(base_model)
        try:
            return self.registry.get(0).path
        except Exception as exc:
            raise ConfigError(
                f"{self.store.location} has no base model (policy version 0) yet: pass --model "
                "DIR, the model its trajectories were sampled with (`tepo-agent run --db` "
                "registers it by itself)"
            ) from exc

    # -- pieces -------------------------------------------------------------------------------

    def pull(self) -> tuple[list[Trajectory], int]:
        """New scored trajectories after the cursor (at most one batch) and the next cursor
        (read by rank 0, the same on every rank)."""
        pulled: tuple[list[Trajectory], int] | None = None
        if self.dist.is_main:
            groups = self.store.scored_since(
                self.state.cursor_seq, limit=self.cfg.train.batch_trajectories
            )
            pulled = (
                ([t for g in groups for t in g.members], max(g.seq for g in groups))
                if groups
                else ([], self.state.cursor_seq)
            )
        pulled = self.dist.broadcast(pulled)
        assert pulled is not None
        return pulled

    def pending(self) -> int:
        """Scored trajectories not trained on yet (counted by rank 0, the same on every rank)."""
        n = 0
        if self.dist.is_main:
            n = self.store.count_scored_since(self.state.cursor_seq)
        return self.dist.broadcast(n)

    def publish(self, train_metrics: dict[str, float] | None = None) -> PublishResult:
        """Write the current weights as a new policy and put it through the gate.

        With several ranks the shards are gathered onto rank 0, which writes one consolidated
        directory; all ranks meet at a barrier before rank 0 registers it, so a rank that died
        before then leaves no new version. The result is sent to every rank."""
        weights = consolidated_weights(self.trainer.stats) if self.dist.active else None
        result: PublishResult | None = None
        if self.dist.is_main:
            path = save_policy(
                self.trainer.model, self.run_dir, step=self.state.step,
                base_model=self.base_model, state_dict=weights,
            )  # fmt: skip
        self.dist.barrier()
        if self.dist.is_main:
            result = self._register(path, train_metrics)
        result = self.dist.broadcast(result)
        assert result is not None
        self.trainer.weights_version = result.version
        self.state = replace(
            self.state, weights_version=result.version, last_published=result.version
        )
        return result

    def _register(self, path: Path, train_metrics: dict[str, float] | None) -> PublishResult:
        live = self.registry.live()
        parent = self.state.weights_version
        if parent is None:
            parent = (
                self.state.last_published
                if self.state.last_published is not None
                else (live.version if live is not None else 0)
            )
        return publish_checkpoint(
            path,
            self.registry,
            kind=self.cfg.train.finetune,
            parent=parent,
            base_model=self.base_model,
            gate=self.cfg.gate,
            device=str(self.trainer.device),
            train_metrics=train_metrics,
        )

    def _save(self) -> None:
        save_state(
            self.run_dir,
            self.trainer.stats,
            self.trainer.optimizer,
            self.state,
            keep=self.cfg.keep_states,
            dist=self.dist,
        )

    def step(self, publish: bool = False) -> tuple[StepResult, PublishResult | None] | None:
        """Train one step on new data (None when there is none), optionally publish."""
        trajectories, cursor = self.pull()
        if not trajectories:
            return None
        trained_from = self.trainer.weights_version
        if trained_from is None:
            trained_from = self.state.last_published
        result = self.trainer.step(trajectories)
        self.state = replace(
            self.state, step=self.state.step + 1, cursor_seq=cursor, weights_version=None
        )
        published = self.publish(result.metrics) if publish else None
        self._save()
        if self.dist.is_main:
            metrics = {**result.metrics, "policy_entropy": result.metrics.get("entropy", 0.0)}
            self.store.record_train_step(
                self.state.step,
                metrics,
                cursor_seq=cursor,
                policy_version=trained_from,
                published_version=published.version if published is not None else None,
            )
        return result, published

    def _say(self, line: str) -> None:
        if self.dist.is_main:
            print(line, file=self.out, flush=True)

    def run(self, steps: int, *, progress: bool = True) -> RunSummary:
        """Up to ``steps`` steps (stops early when no new scored trajectory is left)."""
        if steps < 1:
            raise ConfigError(f"steps must be >= 1, got {steps}")
        summary = RunSummary()
        if self.start_note is not None:
            self._say(self.start_note)
            self.start_note = None
        shown = progress and self.dist.is_main
        bar = tqdm(total=steps, desc="train", unit="step", disable=not shown, file=sys.stderr)
        for i in range(steps):
            due = self.cfg.publish_every > 0 and (self.state.step + 1) % self.cfg.publish_every == 0
            last = i == steps - 1 and self.cfg.publish_every == 0
            done = self.step(publish=due or last)
            if done is None:
                summary.stopped_for_data = True
                break
            result, published = done
            summary.steps.append(result)
            self._say(summary_line(self.state.step, result.metrics))
            if published is not None:
                summary.published.append(published)
                self._say(_publish_line(published))
            bar.update(1)
        bar.close()
        if summary.stopped_for_data and summary.steps and self.cfg.publish_every == 0:
            published = self.publish(summary.steps[-1].metrics)
            self._save()
            summary.published.append(published)
            self._say(_publish_line(published))
        return summary

    def close(self) -> None:
        if self.dist.is_main:
            self.store.close()

    def __enter__(self) -> TrainingRun:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _publish_line(result: PublishResult) -> str:
    verdict = "live" if result.accepted else "REJECTED"
    return f"published version {result.version} ({verdict}): {result.reason} [{result.path}]"


__all__ = ["RunConfig", "RunSummary", "TrainingRun", "summary_line"]
