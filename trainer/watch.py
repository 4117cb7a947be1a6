"""Periodic retraining: train whenever enough new scored trajectories arrived or time passed.

``watch`` polls the store every ``poll_s`` seconds. A round of training starts when at least
``min_new`` scored trajectories are waiting, or when ``every_s`` seconds have passed since the
last round and at least one is waiting (whichever the user set; both may be set). A round trains
until the waiting trajectories are used up (at most ``max_steps_per_round`` steps), then publishes
through the gate (``TrainingRun.run``). Ctrl-C (or ``max_rounds``) ends the watch between steps.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from tepo_agent.errors import ConfigError
from tepo_agent.trainer.training_run import RunSummary, TrainingRun


@dataclass(frozen=True)
class WatchConfig:
    """When to retrain.

    Attributes:
        min_new: Start a round once this many new scored trajectories wait (None: no count
            trigger).
        every_s: Start a round once this many seconds passed since the last one, if any
            trajectory waits (None: no time trigger).
        poll_s: Seconds between polls of the store.
        max_steps_per_round: Most steps per round.
        max_rounds: Stop after this many rounds (None: run until interrupted).
    """

    min_new: int | None = 64
    every_s: float | None = None
    poll_s: float = 5.0
    max_steps_per_round: int = 8
    max_rounds: int | None = None

    def __post_init__(self) -> None:
        if self.min_new is None and self.every_s is None:
            raise ConfigError("set min_new (--every-n) or every_s (--every-s) to trigger training")
        if self.min_new is not None and self.min_new < 1:
            raise ConfigError(f"min_new must be >= 1, got {self.min_new}")
        if self.every_s is not None and not (self.every_s > 0 and math.isfinite(self.every_s)):
            raise ConfigError(f"every_s must be > 0 seconds, got {self.every_s}")
        if not self.poll_s > 0 or self.max_steps_per_round < 1:
            raise ConfigError("poll_s must be > 0 and max_steps_per_round >= 1")
        if self.max_rounds is not None and self.max_rounds < 1:
            raise ConfigError(f"max_rounds must be >= 1 or None, got {self.max_rounds}")


def due(waiting: int, since_last_s: float, cfg: WatchConfig) -> bool:
    """Whether a round should start now (pure: the trigger rule of the module docstring)."""
    if waiting < 1:
        return False
    if cfg.min_new is not None and waiting >= cfg.min_new:
        return True
    return cfg.every_s is not None and since_last_s >= cfg.every_s


def watch(
    run: TrainingRun,
    cfg: WatchConfig,
    *,
    progress: bool = True,
    on_round: Callable[[RunSummary], None] | None = None,
) -> int:
    """Retrain periodically until interrupted or ``max_rounds``; returns rounds done."""
    rounds = 0
    last = time.monotonic()
    while cfg.max_rounds is None or rounds < cfg.max_rounds:
        waiting = run.pending()
        # rank 0 decides for every rank of a torchrun job (their clocks differ)
        if run.dist.broadcast(due(waiting, time.monotonic() - last, cfg)):
            steps = min(
                cfg.max_steps_per_round,
                max(1, math.ceil(waiting / run.cfg.train.batch_trajectories)),
            )
            summary = run.run(steps, progress=progress)
            rounds += 1
            last = time.monotonic()
            if on_round is not None:
                on_round(summary)
            continue
        time.sleep(cfg.poll_s)
    return rounds


__all__ = ["WatchConfig", "due", "watch"]
