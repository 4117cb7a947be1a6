"""Configuration of the TEPO trainer's math: rewards, advantages and the policy loss.

Three frozen dataclasses, one per stage, each validated on construction (``ConfigError``):

- :class:`RewardConfig` — which TEPO reward turns a scored trajectory into a scalar (and, for the
  dense reward, per-call rewards). See ``tepo_agent.trainer.rewards``.
- :class:`AdvantageConfig` — how rewards become group-relative advantages.
  See ``tepo_agent.trainer.advantages``.
- :class:`LossConfig` — the token-level PPO-clip objective with clip-higher, truncated importance
  sampling and an optional KL penalty. See ``tepo_agent.trainer.loss``.

Every field says its default, where the default comes from and what it trades off.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from tepo_agent.errors import ConfigError

RewardKind = Literal["outcome", "sparse", "dense"]
NoCallsPolicy = Literal["score", "zero"]
Normalize = Literal["group_std", "group_mean_only"]
UngroupedPolicy = Literal["batch_baseline", "skip"]
Aggregation = Literal["token_mean", "sequence_mean"]
KLEstimator = Literal["k3"]

_REWARD_KINDS: tuple[RewardKind, ...] = ("outcome", "sparse", "dense")
_NO_CALLS: tuple[NoCallsPolicy, ...] = ("score", "zero")
_NORMALIZE: tuple[Normalize, ...] = ("group_std", "group_mean_only")
_UNGROUPED: tuple[UngroupedPolicy, ...] = ("batch_baseline", "skip")
_AGGREGATION: tuple[Aggregation, ...] = ("token_mean", "sequence_mean")
_KL_ESTIMATORS: tuple[KLEstimator, ...] = ("k3",)


def _check_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{name} must be one of {list(choices)}, got {value!r}")


def _check_finite(name: str, value: float) -> None:
    if not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number, got {value!r}")


@dataclass(frozen=True)
class RewardConfig:
    """How a scored trajectory becomes a reward (docs/architecture.md, invariant 5).

    Attributes:
        kind: ``"sparse"`` (default) is TEPO's sparse reward R = score · m/n (m entropy-reducing
            calls out of n): the paper's tool-call-efficiency reward, which cuts tool calls.
            ``"dense"`` is TEPO's dense reward: every call k gets r_k = score · (1 + α·1[ΔH_k < 0])
            and its process advantage goes to the turn that issued it (the paper's accuracy
            reward). ``"outcome"`` is R = score, the plain GRPO baseline (no entropy signal).
        alpha: Dense reward only. Bonus factor for an entropy-reducing call; default 1.0 doubles
            the reward of a call with ΔH_k < 0. Larger values push harder towards calls that
            resolve uncertainty but make the process signal dominate the outcome. Must be >= 0.
        no_calls: Sparse reward only: what a trajectory with no tool calls (n = 0) earns. The
            paper leaves m/n undefined there. ``"score"`` (default) keeps the outcome, so answering
            correctly without tools is never punished (our choice: the math suite has items that
            need no tool). ``"zero"`` gives 0, which pushes the policy to always call a tool.
        entropy_window: When the trainer re-derives turn entropies H(t_k) from exact token
            entropies (``recompute.exact_turn_entropies``), average only the first N tokens of
            each turn. None (default) averages the whole turn, as the paper does. A window makes
            long turns comparable to short ones at the cost of ignoring their tail. Must be >= 1.
    """

    kind: RewardKind = "sparse"
    alpha: float = 1.0
    no_calls: NoCallsPolicy = "score"
    entropy_window: int | None = None

    def __post_init__(self) -> None:
        _check_choice("RewardConfig.kind", self.kind, _REWARD_KINDS)
        _check_choice("RewardConfig.no_calls", self.no_calls, _NO_CALLS)
        _check_finite("RewardConfig.alpha", self.alpha)
        if self.alpha < 0:
            raise ConfigError(
                f"RewardConfig.alpha must be >= 0 (a bonus for entropy-reducing calls), "
                f"got {self.alpha}"
            )
        if self.entropy_window is not None and (
            not isinstance(self.entropy_window, int) or self.entropy_window < 1
        ):
            raise ConfigError(
                f"RewardConfig.entropy_window must be None (whole turn) or an int >= 1, "
                f"got {self.entropy_window!r}"
            )


@dataclass(frozen=True)
class AdvantageConfig:
    """How rewards become group-relative advantages (GRPO, docs/architecture.md, invariant 6).

    Attributes:
        normalize: ``"group_std"`` (default) is GRPO's (R − mean)/(std + eps) within a group of
            samples of one prompt (DeepSeekMath). ``"group_mean_only"`` is R − mean, as Dr. GRPO
            recommends: dividing by the std up-weights groups that are nearly all right or all
            wrong (a difficulty bias); without it the step size follows the reward scale.
        eps: Added to the group std before dividing (default 1e-6, as in TRL's GRPO); only keeps
            the division finite. Groups whose rewards are all equal get zero advantages anyway.
            Must be > 0.
        ungrouped: What to do with trajectories that have no group (production traffic, one
            sample per prompt, or a group of which only one member is in the batch).
            ``"batch_baseline"`` (default) normalises them together as one pseudo-group over the
            batch: a baseline that ignores prompt difficulty, noisier than a real group but the
            only signal production data has. ``"skip"`` gives them zero advantage and a zero loss
            mask (they do not train).
    """

    normalize: Normalize = "group_std"
    eps: float = 1e-6
    ungrouped: UngroupedPolicy = "batch_baseline"

    def __post_init__(self) -> None:
        _check_choice("AdvantageConfig.normalize", self.normalize, _NORMALIZE)
        _check_choice("AdvantageConfig.ungrouped", self.ungrouped, _UNGROUPED)
        _check_finite("AdvantageConfig.eps", self.eps)
        if self.eps <= 0:
            raise ConfigError(f"AdvantageConfig.eps must be > 0, got {self.eps}")


@dataclass(frozen=True)
class LossConfig:
    """The token-level PPO-clip objective (see ``tepo_agent.trainer.loss``).

    Attributes:
        clip_low: Lower clip ε_low: the ratio is clipped at 1 − ε_low (default 0.2, PPO/GRPO).
            Smaller is a tighter trust region for lowering a token's probability. In [0, 1).
        clip_high: Upper clip ε_high: the ratio is clipped at 1 + ε_high (default 0.28, DAPO's
            "clip-higher"). A higher ceiling than floor lets low-probability tokens with positive
            advantage grow, which keeps entropy from collapsing, at the cost of larger updates.
            Must be >= 0.
        aggregation: ``"token_mean"`` (default, DAPO) averages the per-token loss over every
            unmasked token of the batch, so each token weighs the same and long trajectories are
            not down-weighted (no length bias). ``"sequence_mean"`` (original GRPO) averages
            within each sequence and then over sequences: every trajectory weighs the same.
        tis_cap: Truncated importance sampling cap C (Yao et al. 2025, "Your efficient RL
            framework secretly brings you off-policy RL training"; TRL's
            ``vllm_importance_sampling_cap``). Tokens sampled by an older policy version are
            weighted by min(π_proximal/π_behaviour, C). Default 2.0: lower values cut variance
            from stale data but bias the gradient more. Must be >= 1.
        kl_coef: Weight of the KL penalty to a reference policy (default 0.0: none, as in DAPO
            and Dr. GRPO; the clip already bounds each step). Positive values keep the policy near
            the reference at the cost of slower learning and a reference forward pass. Must be
            >= 0.
        kl_estimator: The per-token KL estimator; ``"k3"`` (Schulman's unbiased, non-negative
            estimator exp(ref − logp) − (ref − logp) − 1, used by GRPO) is the only choice.
    """

    clip_low: float = 0.2
    clip_high: float = 0.28
    aggregation: Aggregation = "token_mean"
    tis_cap: float = 2.0
    kl_coef: float = 0.0
    kl_estimator: KLEstimator = "k3"

    def __post_init__(self) -> None:
        for name in ("clip_low", "clip_high", "tis_cap", "kl_coef"):
            _check_finite(f"LossConfig.{name}", getattr(self, name))
        if not 0 <= self.clip_low < 1:
            raise ConfigError(f"LossConfig.clip_low must be in [0, 1), got {self.clip_low}")
        if self.clip_high < 0:
            raise ConfigError(f"LossConfig.clip_high must be >= 0, got {self.clip_high}")
        if self.tis_cap < 1:
            raise ConfigError(
                f"LossConfig.tis_cap must be >= 1 (a cap below 1 would down-weight on-policy "
                f"tokens), got {self.tis_cap}"
            )
        if self.kl_coef < 0:
            raise ConfigError(f"LossConfig.kl_coef must be >= 0, got {self.kl_coef}")
        _check_choice("LossConfig.aggregation", self.aggregation, _AGGREGATION)
        _check_choice("LossConfig.kl_estimator", self.kl_estimator, _KL_ESTIMATORS)


__all__ = [
    "AdvantageConfig",
    "Aggregation",
    "KLEstimator",
    "LossConfig",
    "NoCallsPolicy",
    "Normalize",
    "RewardConfig",
    "RewardKind",
    "UngroupedPolicy",
]
