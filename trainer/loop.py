"""The TEPO training step: scored trajectories → exact entropy → rewards → GRPO update.

One optimisation step, reading top to bottom in :meth:`Trainer.step`:

1. pack the batch (``batch.pack_batch``) and recompute, with the weights at the start of the step,
   every token's exact logprob and full-vocabulary entropy in one batched no-grad pass
   (``recompute.recompute``). Live estimates (top-k or surprisal over HTTP) are never used:
   H(t_k) and ΔH_k are re-derived from exact entropies. The pass is skipped when the logged
   values already are exact and on-policy (sampled in process by the weights held now), since
   it would only reproduce them (``TrainConfig.reuse_logged_exact``);
2. TEPO rewards from the score and the exact ΔH_k (``rewards.trajectory_rewards``);
3. group-relative per-token advantages (``advantages.compute_advantages``);
4. the token-level PPO-clip loss (``loss.policy_loss``) over micro-batches with gradient
   accumulation, behaviour logprobs from the store, the recomputed logprobs as the proximal
   policy, TIS for tokens an older policy version sampled, optional k3 KL to the base model;
5. gradient clipping and one AdamW step (``updates_per_batch`` steps on the same batch);
6. metrics (returned; the caller stores them in ``train_steps``).

Where this departs from textbook GRPO (DeepSeekMath), and why:

- **Data comes from the runtime, not from the trainer.** The trainer never generates: it trains
  on what applications logged (grouped exploration runs and ungrouped production traffic, with a
  batch baseline), so every batch may be partly off-policy. Tokens sampled by a version other
  than the one whose weights the trainer holds are corrected with truncated importance sampling
  (decoupled PPO: the trust region is around the recomputed proximal policy).
- **Exact entropy is recomputed** before rewards (TEPO's rewards depend on ΔH; the sampler's
  entropies may be estimates).
- **Per-token advantages** (TEPO's dense reward credits the turn that issued each call),
  token-mean aggregation and clip-higher (DAPO); KL to the base model is off by default.
- **One pass per batch by default** (``updates_per_batch=1``): with a single update the ratio is
  exactly 1 and PPO-clip reduces to the policy gradient; more updates make the clip act.
- **Precision**: weights and AdamW state stay float32; forward passes run under bf16 autocast on
  CUDA. The reference (KL) model is the base model: a frozen copy, or for LoRA the same model
  with its adapter disabled.
"""

from __future__ import annotations

import contextlib
import math
import os
import statistics
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from tepo_agent.errors import ConfigError, TrainerError
from tepo_agent.model.io import load_causal_lm, resolve_device
from tepo_agent.trainer.advantages import compute_advantages
from tepo_agent.trainer.batch import TrainBatch, pack_batch
from tepo_agent.trainer.config import AdvantageConfig, LossConfig, RewardConfig
from tepo_agent.trainer.dynamic_sampling import informative
from tepo_agent.trainer.loss import policy_loss
from tepo_agent.trainer.recompute import (
    exact_turn_entropies,
    forward_logprobs,
    logged_entropies,
    logged_exact,
    recompute,
)
from tepo_agent.trainer.rewards import trajectory_rewards
from tepo_agent.trajectory import Trajectory

Finetune = Literal["full", "lora"]
Precision = Literal["auto", "fp32", "bf16"]

# the loss metrics of a step that made no update (every group flat)
_NO_UPDATE: dict[str, float] = {
    "loss": 0.0, "pg_loss": 0.0, "ratio_min": 1.0, "ratio_max": 1.0, "trained_tokens": 0.0,
}  # fmt: skip

_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class TrainConfig:
    """Everything one training run needs besides data and a model.

    Attributes:
        reward, advantage, loss: The math (see ``trainer/config.py``).
        finetune: ``full`` (default) trains every weight; ``lora`` trains a peft LoRA adapter
            (less memory, small checkpoints, and vLLM can hot-load it with /v1/load_lora_adapter).
        lora_rank, lora_alpha, lora_dropout, lora_targets: The adapter (LoRA only). Rank 16 and
            alpha 32 are common defaults for RL fine-tuning; larger ranks fit more, cost more.
        learning_rate: AdamW learning rate (default 1e-5: RL steps on a pretrained model are
            small; the tiny default model tolerates 1e-4).
        weight_decay: AdamW decoupled weight decay (default 0: none, as in most GRPO recipes).
        max_grad_norm: Clip the global gradient norm to this (default 1.0); inf disables it.
        batch_trajectories: Most trajectories per optimisation step (default 32). Groups are
            never cut, so a step may hold a few more.
        micro_batch_size: Rows per forward/backward pass; gradients accumulate over the
            micro-batches of a step (memory vs. speed).
        updates_per_batch: AdamW steps on the same batch (PPO epochs; default 1).
        skip_zero_variance: Drop groups whose rewards are all equal before they cost compute
            (DAPO's dynamic sampling, ``trainer.dynamic_sampling``; default True): groups flat by
            their scores skip the recompute too, zero-advantage rows skip the backward pass. A
            step left with nothing to learn from makes no update. With a KL term every row still
            trains (the KL acts on zero-advantage rows too).
        reuse_logged_exact: Skip the exact recompute pass when every trajectory of the step was
            sampled by the weights the trainer holds and logged exact entropies and logprobs
            (in-process collection, one step per publish; ``recompute.logged_exact``): the
            training forward is then the step's only forward pass, as in TRL (default True).
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``.
        precision: ``auto`` is bf16 autocast on CUDA and float32 on CPU.
        seed: Seed of torch's RNG (dropout, adapter initialisation).
    """

    reward: RewardConfig = field(default_factory=RewardConfig)
    advantage: AdvantageConfig = field(default_factory=AdvantageConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    finetune: Finetune = "full"
    lora_rank: int = 16
    lora_alpha: float = 32.0
    lora_dropout: float = 0.0
    lora_targets: tuple[str, ...] = _LORA_TARGETS
    learning_rate: float = 1e-5
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    batch_trajectories: int = 32
    micro_batch_size: int = 4
    updates_per_batch: int = 1
    skip_zero_variance: bool = True
    reuse_logged_exact: bool = True
    device: str = "auto"
    precision: Precision = "auto"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.finetune not in ("full", "lora"):
            raise ConfigError(
                f"TrainConfig.finetune must be 'full' or 'lora', got {self.finetune!r}"
            )
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ConfigError(
                f"TrainConfig.precision must be auto|fp32|bf16, got {self.precision!r}"
            )
        for name in ("lora_rank", "batch_trajectories", "micro_batch_size", "updates_per_batch"):
            if getattr(self, name) < 1:
                raise ConfigError(f"TrainConfig.{name} must be >= 1, got {getattr(self, name)}")
        if not (self.learning_rate > 0 and math.isfinite(self.learning_rate)):
            raise ConfigError(f"TrainConfig.learning_rate must be > 0, got {self.learning_rate}")
        if self.weight_decay < 0 or self.lora_alpha <= 0 or not 0 <= self.lora_dropout < 1:
            raise ConfigError(
                "TrainConfig: weight_decay must be >= 0, lora_alpha > 0, lora_dropout in [0, 1)"
            )
        if not self.max_grad_norm > 0:
            raise ConfigError(f"TrainConfig.max_grad_norm must be > 0, got {self.max_grad_norm}")
        if self.finetune == "lora" and not self.lora_targets:
            raise ConfigError("TrainConfig.lora_targets must name at least one module")


def build_policy(
    cfg: TrainConfig, base_model: str, init_from: str | os.PathLike[str] | None = None
) -> torch.nn.Module:
    """The trainable model in float32, on ``cfg.device``.

    Args:
        cfg: The run's configuration (``finetune`` picks full weights or a LoRA adapter).
        base_model: The base model directory.
        init_from: Start from these weights instead of fresh ones: a full model directory for
            ``full``, a peft adapter directory for ``lora`` (a resumed state or the live policy).
    """
    device = str(resolve_device(cfg.device))
    if cfg.finetune == "full":
        model = load_causal_lm(init_from or base_model, device=device, dtype="float32")
    else:
        from peft import LoraConfig, PeftModel, get_peft_model

        base = load_causal_lm(base_model, device=device, dtype="float32")
        if init_from is not None:
            model = PeftModel.from_pretrained(base, str(init_from), is_trainable=True)
        else:
            torch.manual_seed(cfg.seed)
            lora = LoraConfig(
                r=cfg.lora_rank,
                lora_alpha=cfg.lora_alpha,
                lora_dropout=cfg.lora_dropout,
                target_modules=list(cfg.lora_targets),
                task_type="CAUSAL_LM",
            )
            model = get_peft_model(base, lora)
    model.train()
    return model


@dataclass(frozen=True)
class StepResult:
    """One optimisation step: its metrics (stored in ``train_steps``) and what it consumed."""

    metrics: dict[str, float]
    trajectories: int


class Trainer:
    """Holds the policy, its optimizer and the (optional) reference model; runs steps.

    Args:
        model: From :func:`build_policy`.
        cfg: The run's configuration.
        weights_version: The registry version whose weights ``model`` holds now (None if none).
        pad_token_id: Padding id for packing.
        base_model: Base model directory (the KL reference for full fine-tuning).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        cfg: TrainConfig,
        *,
        weights_version: int | None,
        pad_token_id: int,
        base_model: str,
    ) -> None:
        self.model = model
        self.cfg = cfg
        self.weights_version = weights_version
        self.pad_token_id = pad_token_id
        self.device = next(model.parameters()).device
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise TrainerError("the model has no trainable parameters")
        self.optimizer = torch.optim.AdamW(
            params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay
        )
        self._ref: torch.nn.Module | None = None
        if cfg.loss.kl_coef > 0 and cfg.finetune == "full":
            self._ref = load_causal_lm(base_model, device=str(self.device), dtype="float32")
            self._ref.requires_grad_(False)

    # -- precision and reference ----------------------------------------------------------------

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        bf16 = self.cfg.precision == "bf16" or (
            self.cfg.precision == "auto" and self.device.type == "cuda"
        )
        if not bf16:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)

    @contextlib.contextmanager
    def _reference(self) -> Iterator[torch.nn.Module]:
        if self._ref is not None:
            yield self._ref
        else:  # LoRA: the base model is this model with its adapter switched off
            with self.model.disable_adapter():  # type: ignore[operator]
                yield self.model

    # -- one step -----------------------------------------------------------------------------

    def step(self, trajectories: Sequence[Trajectory]) -> StepResult:
        """One optimisation step on ``trajectories`` (see the module docstring)."""
        if not trajectories:
            raise TrainerError("a step needs at least one scored trajectory")
        started = time.perf_counter()
        skip = self.cfg.skip_zero_variance and self.cfg.loss.kl_coef == 0
        kept, flat_groups = (
            informative(trajectories, self.cfg.reward.kind)
            if skip
            else (list(range(len(trajectories))), 0)
        )
        if not kept:
            return self._idle_step(trajectories, flat_groups, started)
        trajs = [trajectories[i] for i in kept]
        mb = self.cfg.micro_batch_size
        plain = pack_batch(trajs, pad_token_id=self.pad_token_id)
        reuse = self.cfg.reuse_logged_exact and logged_exact(trajs, self.weights_version)
        if reuse:  # on-policy and exact: the logged values are the recompute's
            proximal, entropy = plain.behaviour_logprobs, logged_entropies(plain, trajs)
        else:
            with self._autocast():
                proximal, entropy = recompute(self.model, plain, micro_batch_size=mb)  # (B, T)

        # 1-2. exact ΔH and TEPO rewards
        deltas, rewards = [], []
        for b, traj in enumerate(trajs):
            turn_h = exact_turn_entropies(traj, entropy[b], self.cfg.reward.entropy_window)
            deltas.append(turn_h.delta_entropies)
            rewards.append(
                trajectory_rewards(traj, self.cfg.reward, delta_entropies=turn_h.delta_entropies)
            )
        # 3. advantages; rows with no signal leave the backward pass
        adv = compute_advantages(trajs, rewards, self.cfg.advantage)
        rows = [b for b, a in enumerate(adv.per_trajectory) if not (skip and a.zero_signal)]
        loss_metrics: list[dict[str, float]] = []
        grad_norm = 0.0
        tokens = 0
        if rows:
            batch = pack_batch(
                [trajs[b] for b in rows],
                [adv.per_trajectory[b] for b in rows],
                pad_token_id=self.pad_token_id,
            )
            width = batch.input_ids.shape[1]
            picked = torch.tensor(rows, dtype=torch.long)
            proximal, entropy = proximal[picked, :width], entropy[picked, :width]  # (B', T')
            loss_metrics, grad_norm = self._update(batch, proximal, entropy)
            tokens = int(batch.attention_mask.sum())
            self.weights_version = None  # the weights now match no registered version
        elapsed = time.perf_counter() - started

        # 6. metrics
        metrics = dict(loss_metrics[-1]) if loss_metrics else _NO_UPDATE.copy()
        values = [r.reward for r in rewards]
        known = [d for ds in deltas for d in ds if d is not None]
        calls = sum(r.n for r in rewards)
        metrics.update(
            reward_mean=statistics.fmean(values),
            reward_std=statistics.pstdev(values),
            score_mean=statistics.fmean(float(t.score or 0.0) for t in trajectories),
            tool_calls_per_trajectory=calls / len(trajs),
            entropy_reducing_share=(sum(r.m for r in rewards) / calls) if calls else 0.0,
            delta_entropy_mean=statistics.fmean(known) if known else 0.0,
            clip_frac=metrics.get("clip_frac_low", 0.0) + metrics.get("clip_frac_high", 0.0),
            grad_norm=grad_norm,
            zero_variance_groups=float(adv.zero_variance_groups + flat_groups),
            groups=float(adv.groups + flat_groups),
            trajectories=float(len(trajectories)),
            trained_trajectories=float(len(rows)),
            recomputed=0.0 if reuse else 1.0,
            seq_tokens=float(tokens),
            tokens_per_s=tokens * (1 + self.cfg.updates_per_batch) / max(elapsed, 1e-9),
            seconds=elapsed,
        )
        return StepResult(metrics=metrics, trajectories=len(trajectories))

    def _update(
        self, batch: TrainBatch, proximal: torch.Tensor, entropy: torch.Tensor
    ) -> tuple[list[dict[str, float]], float]:
        """4-5. the loss over micro-batches, gradient clipping and ``updates_per_batch`` AdamW
        steps; returns each update's loss metrics and the last gradient norm."""
        off = (
            batch.sampled_mask
            if self.weights_version is None
            else batch.off_policy(self.weights_version)
        )
        ref = None
        if self.cfg.loss.kl_coef > 0:
            with self._reference() as ref_model, self._autocast():
                ref, _ = recompute(ref_model, batch, micro_batch_size=self.cfg.micro_batch_size)
        loss_metrics: list[dict[str, float]] = []
        grad_norm = 0.0
        for _ in range(self.cfg.updates_per_batch):
            self.optimizer.zero_grad(set_to_none=True)
            loss_metrics.append(self._accumulate(batch, proximal, off, ref, entropy))
            trainable = [p for g in self.optimizer.param_groups for p in g["params"]]
            grad_norm = float(torch.nn.utils.clip_grad_norm_(trainable, self.cfg.max_grad_norm))
            if math.isfinite(grad_norm):
                self.optimizer.step()
        return loss_metrics, grad_norm

    def _idle_step(
        self, trajectories: Sequence[Trajectory], flat_groups: int, started: float
    ) -> StepResult:
        """A step whose every group was flat: no recompute, no update, the metrics say so."""
        scores = [float(t.score or 0.0) for t in trajectories]
        metrics = {
            **_NO_UPDATE,
            "reward_mean": statistics.fmean(scores) if self.cfg.reward.kind == "outcome" else 0.0,
            "reward_std": 0.0, "score_mean": statistics.fmean(scores),
            "tool_calls_per_trajectory": statistics.fmean(
                sum(turn.role == "tool" for turn in t.turns) for t in trajectories
            ),
            "entropy_reducing_share": 0.0, "delta_entropy_mean": 0.0, "clip_frac": 0.0,
            "grad_norm": 0.0, "zero_variance_groups": float(flat_groups),
            "groups": float(flat_groups), "trajectories": float(len(trajectories)),
            "trained_trajectories": 0.0, "seq_tokens": 0.0, "tokens_per_s": 0.0,
            "seconds": time.perf_counter() - started,
        }  # fmt: skip
        return StepResult(metrics=metrics, trajectories=len(trajectories))

    def _accumulate(
        self,
        batch: TrainBatch,
        proximal: torch.Tensor,
        off: torch.Tensor,
        ref: torch.Tensor | None,
        entropy: torch.Tensor,
    ) -> dict[str, float]:
        """Backward over micro-batches, each weighted so the sum equals the full-batch loss."""
        mb = self.cfg.micro_batch_size
        B = batch.input_ids.shape[0]
        token_mean = self.cfg.loss.aggregation == "token_mean"
        total_tokens = float(batch.loss_mask.sum().clamp(min=1.0))
        total_rows = float((batch.loss_mask.sum(dim=1) > 0).sum().clamp(min=1))
        sums: dict[str, float] = {}
        weights: dict[str, float] = {}
        ratio_min, ratio_max = math.inf, -math.inf
        for start in range(0, B, mb):
            rows = slice(start, start + mb)
            width = int(batch.lengths[rows].max())
            cut = (rows, slice(0, width))
            mask = batch.loss_mask[cut].to(self.device)
            share = (
                float(mask.sum()) / total_tokens
                if token_mean
                else float((mask.sum(dim=1) > 0).sum()) / total_rows
            )
            if share == 0.0:
                continue
            with self._autocast():
                logp, _ = forward_logprobs(
                    self.model,
                    batch.input_ids[cut].to(self.device),
                    batch.attention_mask[cut].to(self.device),
                )
            out = policy_loss(
                logp.float(),
                batch.behaviour_logprobs[cut].to(self.device),
                batch.advantages[cut].to(self.device),
                mask,
                self.cfg.loss,
                proximal_logprobs=proximal[cut].to(self.device),
                off_policy=off[cut].to(self.device),
                ref_logprobs=None if ref is None else ref[cut].to(self.device),
                entropy=entropy[cut].to(self.device),
            )
            (out.loss * share).backward()
            for key, value in out.metrics.items():
                if key in ("ratio_min", "ratio_max", "tokens"):
                    continue
                sums[key] = sums.get(key, 0.0) + value * share
                weights[key] = weights.get(key, 0.0) + share
            ratio_min = min(ratio_min, out.metrics["ratio_min"])
            ratio_max = max(ratio_max, out.metrics["ratio_max"])
        metrics = {k: sums[k] / weights[k] if weights[k] else 0.0 for k in sums}
        metrics["loss"] = sums.get("loss", 0.0)  # the shares sum to 1: this is the batch loss
        metrics["ratio_min"] = ratio_min if math.isfinite(ratio_min) else 1.0
        metrics["ratio_max"] = ratio_max if math.isfinite(ratio_max) else 1.0
        metrics["trained_tokens"] = float(batch.loss_mask.sum())
        return metrics


__all__ = ["Finetune", "Precision", "StepResult", "TrainConfig", "Trainer", "build_policy"]
