"""The publishing gate: the held-out evaluation of ``tepo-agent eval``, and a paired rule.

A candidate and the live policy are run by the real agent (greedy, the real tools) on the SAME
held-out items: ``GateConfig.tasks`` items of each suite in ``GateConfig.suites``, from a world
generated from ``GateConfig.seed`` (``tasks.world.EVAL_SEED`` and up: never trained on), through
the same per-item evaluator as ``tepo-agent eval`` (``tepo_agent.evaluation``). Each evaluation
keeps every item's score and format-error share, so the rule compares the two policies item by
item:

- **accuracy**: reject when the paired 95% interval of (candidate − live) per-item score lies
  wholly below ``−margin`` — the candidate is worse beyond doubt. An identical candidate (every
  difference 0, interval [0, 0]) always passes; an equal one fails only when chance makes it
  look significantly worse (≈2.5% of the time at 95%).
- **format errors**: reject when the paired 95% interval of (candidate − live) per-item share of
  format errors (malformed calls and unknown tools, of the item's calls)
  lies wholly above ``format_margin``.

Why paired and why an interval: the old rule compared two accuracies on 16 items with a 0.05
margin, so a single item flipping (6.25%) rejected a candidate that was no worse. Pairing removes
item difficulty from the noise; the interval lets the number of items decide how small a drop
can be told from chance. :func:`decide` is a pure function, tested on hand-made tables.
"""

from __future__ import annotations

import hashlib
import json
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, get_args

from tepo_agent.backends.base import Backend
from tepo_agent.chat.format import ChatFormat
from tepo_agent.errors import ConfigError
from tepo_agent.evaluation import (
    EvalConfig,
    EvalMeta,
    ItemResult,
    evaluate_items,
    paired_interval,
)
from tepo_agent.evaluation.calls import FORMAT_ERROR_KINDS
from tepo_agent.evaluation.heldout import held_out_items
from tepo_agent.evaluation.stats import Interval
from tepo_agent.tasks import SuiteName
from tepo_agent.tasks.world import EVAL_SEED

_SUITES: tuple[SuiteName, ...] = get_args(SuiteName)
_RULE = "paired-95-v1"  # part of the key: evaluations made for an older rule are not reused


@dataclass(frozen=True)
class GateConfig:
    """How a candidate policy is evaluated before it goes live (rule: module docstring).

    Attributes:
        tasks: Held-out items per suite (default 32). More items narrow the paired interval, so
            smaller drops are caught, at the cost of publish latency (each publish evaluates the
            candidate; the live policy's evaluation is reused while it stays live).
        suites: Which suites to draw from (default all three).
        seed: Seed of the held-out world and items (default ``EVAL_SEED``; must be >= it).
        margin: A drop of mean accuracy the gate tolerates even when it is significant
            (absolute, in [0, 1]; default 0.0). 1.0 accepts any accuracy.
        format_margin: A rise of the per-item format-error share tolerated even when significant
            (default 0.0). 1.0 accepts any.
        max_tool_calls, max_new_tokens, max_total_tokens: Agent limits during evaluation.
        workdir: Where held-out worlds are built (default ``default_home()/eval``).
        enabled: False skips evaluation and accepts every candidate (for experiments only).
    """

    tasks: int = 32
    suites: tuple[SuiteName, ...] = _SUITES
    seed: int = EVAL_SEED
    margin: float = 0.0
    format_margin: float = 0.0
    max_tool_calls: int = 6
    max_new_tokens: int = 64
    max_total_tokens: int = 1024
    workdir: str | None = field(default=None, compare=False)
    enabled: bool = True

    def __post_init__(self) -> None:
        if self.tasks < 1:
            raise ConfigError(f"GateConfig.tasks must be >= 1, got {self.tasks}")
        if not self.suites or any(s not in _SUITES for s in self.suites):
            raise ConfigError(f"GateConfig.suites must be a non-empty subset of {list(_SUITES)}")
        if self.seed < EVAL_SEED:
            raise ConfigError(
                f"GateConfig.seed {self.seed} is a training world's; use a seed >= {EVAL_SEED}"
            )
        for name in ("margin", "format_margin"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"GateConfig.{name} must be in [0, 1], got {getattr(self, name)}")
        if self.max_tool_calls < 0 or self.max_new_tokens < 1 or self.max_total_tokens < 2:
            raise ConfigError("GateConfig agent limits must be positive")

    @property
    def key(self) -> str:
        """A fingerprint of what is evaluated: equal keys mean the same items, comparably run."""
        skip = ("margin", "format_margin", "workdir", "enabled")
        fields = {k: v for k, v in asdict(self).items() if k not in skip}
        fields["rule"] = _RULE
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]

    def eval_config(self) -> EvalConfig:
        return EvalConfig(
            samples=1,
            temperature=0.0,
            max_tool_calls=self.max_tool_calls,
            max_new_tokens=self.max_new_tokens,
            max_total_tokens=self.max_total_tokens,
        )


@dataclass(frozen=True)
class EvalResult:
    """A policy's held-out evaluation, item by item.

    Attributes:
        accuracy: Mean verifier score in [0, 1].
        format_error_rate: Format errors / executed calls (0 with no calls).
        tasks: Items evaluated.
        tool_calls: Calls executed in all.
        key: The :attr:`GateConfig.key` it was made under.
        scores: Each item's score, by task id.
        format_shares: Each item's share of format errors among its calls (0 with no calls).
    """

    accuracy: float
    format_error_rate: float
    tasks: int
    tool_calls: int
    key: str
    scores: dict[str, float]
    format_shares: dict[str, float]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Any) -> EvalResult | None:
        """The result stored in a registry row's metrics, or None if absent or malformed (an
        evaluation stored before the paired rule has no per-item scores: None)."""
        try:
            return cls(**data)
        except TypeError:
            return None

    @classmethod
    def from_items(cls, items: Sequence[ItemResult], key: str) -> EvalResult:
        """The gate's view of a greedy evaluation (one run per item)."""
        calls = sum(len(r.calls) for r in items)
        errors = sum(c.error in FORMAT_ERROR_KINDS for r in items for c in r.calls)
        shares = {
            r.task_id: (sum(c.error in FORMAT_ERROR_KINDS for c in r.calls) / len(r.calls))
            if r.calls
            else 0.0
            for r in items
        }
        return cls(
            accuracy=statistics.fmean(r.score for r in items),
            format_error_rate=errors / calls if calls else 0.0,
            tasks=len(items),
            tool_calls=calls,
            key=key,
            scores={r.task_id: r.score for r in items},
            format_shares=shares,
        )


@dataclass(frozen=True)
class GateDecision:
    """Whether a candidate may go live, and why (the reason is stored on rejection).

    Attributes:
        accept: The verdict.
        reason: One line that says which interval decided.
        accuracy_change, format_change: The paired intervals (None without a live evaluation).
    """

    accept: bool
    reason: str
    accuracy_change: Interval | None = None
    format_change: Interval | None = None


def _paired(
    candidate: dict[str, float], live: dict[str, float], what: str
) -> tuple[list[float], list[float]]:
    if set(candidate) != set(live):
        raise ConfigError(
            f"the gate's {what} cover different items for the candidate and the live policy; "
            "evaluate both under the same GateConfig"
        )
    order = sorted(live)
    return [live[k] for k in order], [candidate[k] for k in order]


def decide(candidate: EvalResult, live: EvalResult | None, cfg: GateConfig) -> GateDecision:
    """The accept/reject rule of the module docstring (no live evaluation: accept)."""
    if live is None:
        return GateDecision(True, "no live policy to compare with")
    acc = paired_interval(*_paired(candidate.scores, live.scores, "scores"))
    fmt = paired_interval(*_paired(candidate.format_shares, live.format_shares, "format errors"))
    figures = (
        f"accuracy {candidate.accuracy:.3f} vs live {live.accuracy:.3f}, paired change "
        f"{acc.estimate:+.3f} [95% CI {acc.low:+.3f}, {acc.high:+.3f}] over {acc.n} items"
    )
    if acc.high < -cfg.margin - 1e-12:
        return GateDecision(
            False,
            f"worse beyond chance: {figures} (the whole interval is below -{cfg.margin:.3f})",
            acc,
            fmt,
        )
    if fmt.low > cfg.format_margin + 1e-12:
        return GateDecision(
            False,
            f"more format errors beyond chance: per-item share {fmt.estimate:+.3f} [95% CI "
            f"{fmt.low:+.3f}, {fmt.high:+.3f}] (allowed rise: {cfg.format_margin:.3f}); {figures}",
            acc,
            fmt,
        )
    return GateDecision(True, figures, acc, fmt)


def gate_items(
    backend: Backend, chat_format: ChatFormat, cfg: GateConfig, *, progress: bool = False
) -> list[ItemResult]:
    """Run the agent greedily with ``backend`` on the gate's held-out items; nothing is stored.

    Anyone may run the gate's evaluation (the demo's before/after does): stored with
    ``EvalMeta(config={"key": cfg.key})`` for a policy version, the gate reuses it.
    """
    tasks, tools = [], []
    for suite in cfg.suites:
        items, tools = held_out_items(suite, cfg.tasks, cfg.seed, workdir=cfg.workdir)
        tasks += items
    return evaluate_items(backend, chat_format, tasks, tools, cfg.eval_config(), progress=progress)


def gate_meta(cfg: GateConfig, policy_version: int | None, label: str = "gate") -> EvalMeta:
    """How a gate evaluation is stored in the evaluations tables (reusable by its key)."""
    suite = "all" if set(cfg.suites) == set(_SUITES) else ",".join(cfg.suites)
    return EvalMeta(
        suite=suite, seed=cfg.seed, n=cfg.tasks, policy_version=policy_version, label=label,
        config={"key": cfg.key, "gate": asdict(cfg)},
    )  # fmt: skip


def evaluate_policy(backend: Backend, chat_format: ChatFormat, cfg: GateConfig) -> EvalResult:
    """:func:`gate_items` summarised for the rule."""
    return EvalResult.from_items(gate_items(backend, chat_format, cfg), cfg.key)


__all__ = [
    "EvalResult",
    "GateConfig",
    "GateDecision",
    "decide",
    "evaluate_policy",
    "gate_items",
    "gate_meta",
]
