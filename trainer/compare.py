"""``tepo-agent compare``: the paper's reward comparison, arms × seeds, resumable.

Every arm (a reward kind) starts from the same default model with the same :class:`Budget`, once
per seed, each (arm, seed) in its own working directory (``trainer.arm``); every final policy is
evaluated on the same held-out items, and the table (``evaluation.comparison``) gives mean ± sd
over seeds, each arm relative to ``outcome``, and the paired 95% interval against ``outcome``
over the same items pooled over seeds::

    OUT/config.json           the settings (a rerun with other settings is refused)
    OUT/default.json          the default model's held-out evaluation (before any training)
    OUT/ARM-seedS/            one arm (see trainer.arm); result.json marks it finished
    OUT/compare.json, .md     the table, rewritten after every finished arm

Killed at any point, a rerun with the same settings skips finished arms and redoes only the one
that was running.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

from tepo_agent.errors import ConfigError
from tepo_agent.evaluation import EvalConfig, ItemResult, evaluate_items, summarize
from tepo_agent.evaluation.comparison import ArmRow, comparison_rows, markdown_table
from tepo_agent.evaluation.heldout import held_out_items
from tepo_agent.evaluation.policy import open_policy
from tepo_agent.tasks.world import EVAL_SEED
from tepo_agent.trainer.arm import ArmResult, Budget, run_arm
from tepo_agent.trainer.config import RewardKind


@dataclass(frozen=True)
class CompareConfig:
    """A comparison.

    Attributes:
        rewards: The arms (default outcome, sparse, dense; the first ``outcome`` is the
            reference every other arm is measured against).
        seeds: Seeds per arm (default 3; seeds are 1..N).
        budget: The collection and training budget of every arm.
        eval_n: Held-out items per suite for the final evaluation (default 32, all suites).
        eval_seed: Seed of the held-out world and items (default ``EVAL_SEED``).
        eval_samples: Runs per held-out item: 1 (default) is greedy; more sample at T = 1 (how
            the agent runs by default), an item's score and calls being the mean of its runs.
    """

    rewards: tuple[RewardKind, ...] = ("outcome", "sparse", "dense")
    seeds: int = 3
    budget: Budget = field(default_factory=Budget)
    eval_n: int = 32
    eval_seed: int = EVAL_SEED
    eval_samples: int = 1

    def __post_init__(self) -> None:
        if not self.rewards or len(set(self.rewards)) != len(self.rewards):
            raise ConfigError("compare needs distinct arms, e.g. --rewards outcome,sparse,dense")
        if self.seeds < 1 or self.eval_n < 1 or self.eval_samples < 1:
            raise ConfigError("compare needs --seeds, --eval-n and --eval-samples >= 1")

    def eval_config(self) -> EvalConfig:
        """How every final policy (and the default) is evaluated."""
        if self.eval_samples == 1:
            return EvalConfig(concurrency=64)
        return EvalConfig(samples=self.eval_samples, temperature=1.0, seed=12345, concurrency=64)


@dataclass
class CompareReport:
    """What a comparison produced so far."""

    rows: list[ArmRow]
    default: dict[str, Any]
    finished: int
    planned: int
    markdown: str


def _check_settings(out: Path, cfg: CompareConfig, model: str) -> None:
    settings = {"config": asdict(cfg), "model": model}
    path = out / "config.json"
    if path.is_file():
        old = json.loads(path.read_text())
        if old != json.loads(json.dumps(settings)):
            raise ConfigError(
                f"{out} holds a comparison with other settings ({path}); use another --out or "
                "the same settings to resume it"
            )
        return
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(settings, indent=2))


def _default_eval(
    out: Path, model: str, held_out: Any, cfg: EvalConfig, progress: bool
) -> list[ItemResult]:
    path = out / "default.json"
    if path.is_file():
        return [ItemResult.from_json(r) for r in json.loads(path.read_text())]
    policy = open_policy(model_dir=model, device="cpu", max_batch_size=cfg.concurrency)
    try:
        tasks, tools = held_out
        items = evaluate_items(
            policy.backend, policy.chat_format, tasks, tools, cfg, progress=progress
        )
    finally:
        policy.close()
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps([r.to_json() for r in items]))
    os.replace(tmp, path)
    return items


def _report(
    out: Path, cfg: CompareConfig, results: dict[str, dict[int, ArmResult]], default: list
) -> CompareReport:
    items = {arm: {s: r.items for s, r in by.items()} for arm, by in results.items()}
    wall = {
        arm: {s: r.phases.get("total_s", 0.0) for s, r in by.items()} for arm, by in results.items()
    }
    rows = comparison_rows(items, wall, reference=cfg.rewards[0])
    base = summarize(default)
    finished = sum(len(by) for by in results.values())
    planned = len(cfg.rewards) * cfg.seeds
    md = (
        f"default model before training: accuracy {base.accuracy.estimate:.3f} "
        f"[{base.accuracy.low:.3f}, {base.accuracy.high:.3f}], "
        f"{base.calls_per_run:.2f} calls/item, "
        f"{base.calls_per_run_no_tool_items or 0.0:.2f} on no-tool items "
        f"({base.items} held-out items)\n\n{markdown_table(rows, reference=cfg.rewards[0])}\n\n"
        f"{finished}/{planned} arm-seeds finished; budget {asdict(cfg.budget)}\n"
    )
    payload = {
        "config": asdict(cfg),
        "default": base.to_json(),
        "rows": [r.to_json() for r in rows],
        "arms": {
            arm: {str(s): {"phases": r.phases, "train": r.train} for s, r in by.items()}
            for arm, by in results.items()
        },
        "finished": finished,
        "planned": planned,
    }
    (out / "compare.json").write_text(json.dumps(payload, indent=2))
    (out / "compare.md").write_text(md)
    return CompareReport(rows, base.to_json(), finished, planned, md)


def run_compare(
    model_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    cfg: CompareConfig,
    *,
    progress: bool = True,
    log: TextIO | None = None,
) -> CompareReport:
    """Run (or resume) the comparison of the module docstring; returns its table."""
    out, model = Path(out_dir), str(model_dir)
    say = log if log is not None else sys.stdout
    _check_settings(out, cfg, model)
    held_out = held_out_items("all", cfg.eval_n, cfg.eval_seed, workdir=out / "eval")
    print(
        f"held-out: {len(held_out[0])} items (seed {cfg.eval_seed}); evaluating the default",
        file=say,
    )
    default = _default_eval(out, model, held_out, cfg.eval_config(), progress)
    results: dict[str, dict[int, ArmResult]] = {arm: {} for arm in cfg.rewards}
    planned = [(seed, arm) for seed in range(1, cfg.seeds + 1) for arm in cfg.rewards]
    report = None
    for k, (seed, arm) in enumerate(planned, 1):
        work = out / f"{arm}-seed{seed}"
        resumed = (work / "result.json").is_file()
        t0 = time.perf_counter()
        with (out / "train.log").open("a") as train_log:
            result = run_arm(
                model, work, arm, seed, cfg.budget, held_out, eval_cfg=cfg.eval_config(),
                log=train_log, progress=progress,
            )  # fmt: skip
        results[arm][seed] = result
        s = summarize(result.items)
        how = "already finished" if resumed else f"done in {time.perf_counter() - t0:.0f} s"
        print(
            f"[{k}/{len(planned)}] {arm} seed {seed}: {how}; accuracy {s.accuracy.estimate:.3f}, "
            f"{s.calls_per_run:.2f} calls/item",
            file=say,
            flush=True,
        )
        report = _report(out, cfg, results, default)
    assert report is not None
    return report


__all__ = ["CompareConfig", "CompareReport", "run_compare"]
