"""The TEPO training step: scored trajectories → exact entropy → rewards → GRPO update.

One optimisation step, reading top to bottom in :meth:`Trainer.step`:

1. pack the batch (``batch.pack_batch``) and recompute, with the weights at the start of the step,
   every token's exact logprob and full-vocabulary entropy in one batched no-grad pass
   (``recompute.recompute``). Live estimates (top-k or surprisal over HTTP) are never used:
   H(t_k) and ΔH_k are re-derived from exact entropies. The pass is skipped when the logged
   values already are exact and on-policy (sampled in process by the weights held now), since
   it would only reproduce them (``TrainConfig.reuse_logged_exact``). Where the first update's
   training forward computes the same numbers (one process, no dropout; the outcome reward, or
   rows that fit one micro-batch) it *is* the recompute: its detached outputs are the proximal
   logprobs and entropies, one forward instead of two (``trainer.fusion``,
   ``TrainConfig.fuse_recompute``);
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
- **Precision and memory**: weights and AdamW state stay float32; forward passes run under bf16
  autocast on CUDA. Every forward goes through ``token_stats.TokenStats``: the logprob and
  entropy of the sampled tokens are computed over chunks of positions, never from the full
  (tokens × vocabulary) float32 log-softmax. The reference (KL) model is the base model: a
  frozen copy, or for LoRA the same model with its adapter disabled.
- **Data-parallel** (``trainer.distributed``): under torchrun each rank holds an FSDP2 shard and
  receives the same trajectories; the recompute and the update are split over ranks by whole
  trajectories balanced by tokens, rewards and group baselines are computed on the whole batch.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch

from tepo_agent.errors import TrainerError
from tepo_agent.model.io import load_causal_lm
from tepo_agent.trainer.advantages import BatchAdvantages
from tepo_agent.trainer.batch import TrainBatch, pack_batch
from tepo_agent.trainer.distributed import (
    Dist,
    balance_by_tokens,
    gather_rows,
    passes_needed,
    shard,
)
from tepo_agent.trainer.dynamic_sampling import informative
from tepo_agent.trainer.fusion import (
    RowsForward,
    assemble_rows,
    deterministic_forward,
    fusion_mode,
    graph_pays,
    graph_rows,
)
from tepo_agent.trainer.recompute import (
    compare_logprobs,
    forward_logprobs,
    idle_forward,
    logged_entropies,
    logged_exact,
    recompute,
)
from tepo_agent.trainer.signals import signal_metrics, step_signals
from tepo_agent.trainer.token_stats import TokenStats, decoder_layers
from tepo_agent.trainer.train_config import Finetune, Precision, TrainConfig, build_policy
from tepo_agent.trainer.update import StepRows, accumulate, clip_and_step
from tepo_agent.trajectory import Trajectory

_Pair = tuple[torch.Tensor, torch.Tensor]

# the loss metrics of a step that made no update (every group flat)
_NO_UPDATE: dict[str, float] = {
    "loss": 0.0, "pg_loss": 0.0, "ratio_min": 1.0, "ratio_max": 1.0, "trained_tokens": 0.0,
}  # fmt: skip


@dataclass(frozen=True)
class _Trained:
    """What the update of a step's training rows gave (``Trainer._train``)."""

    loss_metrics: list[dict[str, float]]
    grad_norm: float
    values: _Pair | None  # the trained rows' proximal (logprobs, entropy), (B', T')
    graph_used: bool  # the first update backpropagated through the recompute's forward
    tokens: int


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
        dist: This process's place in a torchrun job (``trainer.distributed``); the default is
            one process. With several ranks the model is sharded with FSDP2 here, and
            :meth:`step` expects the same trajectories on every rank.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        cfg: TrainConfig,
        *,
        weights_version: int | None,
        pad_token_id: int,
        base_model: str,
        dist: Dist | None = None,
    ) -> None:
        self.model = model
        self.cfg = cfg
        self.dist = dist if dist is not None else Dist()
        self.weights_version = weights_version
        self.pad_token_id = pad_token_id
        self.device = next(model.parameters()).device
        # the module every forward goes through: chunked logprobs and entropies, the FSDP root
        self.stats = TokenStats(model, cfg.logit_chunk_tokens)
        # a forward with grad gives the recompute's numbers only without dropout (``fusion``)
        self._deterministic = deterministic_forward(model)
        self._ref: torch.nn.Module | None = None
        if cfg.loss.kl_coef > 0 and cfg.finetune == "full":
            ref = load_causal_lm(base_model, device=str(self.device), dtype="float32")
            ref.requires_grad_(False)
            self._ref = TokenStats(ref, cfg.logit_chunk_tokens)
        if self.dist.active:
            for module in (self.stats, self._ref):
                if module is not None:
                    shard(module, decoder_layers(module), str(self.device))
        params = [p for p in self.stats.parameters() if p.requires_grad]
        if not params:
            raise TrainerError("the model has no trainable parameters")
        self.optimizer = torch.optim.AdamW(
            params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay
        )

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
                yield self.stats

    def _recompute(self, module: torch.nn.Module, batch: TrainBatch) -> _Pair:
        """Exact (logprobs, entropy), (B, T), of ``batch`` under ``module``; with several ranks
        each recomputes whole rows balanced by tokens and the rows are gathered."""
        mb = self.cfg.micro_batch_size
        if not self.dist.active:
            with self._autocast():
                return recompute(module, batch, micro_batch_size=mb)
        assignment = balance_by_tokens(batch.lengths.tolist(), self.dist.world)
        passes = passes_needed(assignment, mb)
        mine = assignment[self.dist.rank]
        local: list[torch.Tensor] = [torch.zeros((0, 1)), torch.zeros((0, 1))]
        with self._autocast():
            if mine:
                part = batch.select(mine)
                local = list(recompute(module, part, micro_batch_size=mb, min_passes=passes))
            else:
                with torch.no_grad():
                    for _ in range(passes):
                        idle_forward(module, self.device)
        lp, ent = gather_rows(self.dist, assignment, local, tuple(batch.input_ids.shape))
        return lp, ent

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
        plain = pack_batch(trajs, pad_token_id=self.pad_token_id)
        reuse = self.cfg.reuse_logged_exact and logged_exact(trajs, self.weights_version)
        mode = fusion_mode(
            self.cfg, rows=len(trajs), distributed=self.dist.active,
            deterministic=self._deterministic, reuse=reuse,
        )  # fmt: skip
        graph: _Pair | None = None
        values: _Pair | None = None  # "stream": the first update's forward gives them
        if reuse:  # on-policy and exact: the logged values are the recompute's
            values = plain.behaviour_logprobs, logged_entropies(plain, trajs)
        elif mode == "graph":  # one forward with grad: the recompute and the update's graph
            graph = self._grad_forward(plain)
            values = graph[0].detach().float().cpu(), graph[1].detach().float().cpu()
        elif mode is None:
            values = self._recompute(self.stats, plain)  # (B, T) logprobs, entropy

        # 1-3. exact ΔH, TEPO rewards, advantages with group baselines over the whole batch
        # (every rank); rows with no signal leave the backward pass
        deltas, rewards, adv = step_signals(trajs, None if values is None else values[1], self.cfg)
        rows = [b for b, a in enumerate(adv.per_trajectory) if not (skip and a.zero_signal)]
        rest = [b for b in range(len(trajs)) if b not in set(rows)]
        rest_values = None
        if mode == "stream" and rest:  # no forward of the update sees these: recompute them now
            rest_values = self._recompute(self.stats, plain.select(rest))
        trained = _Trained([], 0.0, None, False, 0)
        if rows:
            trained = self._train(plain, trajs, adv, rows, values, graph)
            self.weights_version = None  # the weights now match no registered version
        if mode == "stream":  # the exact values of every row, for the ΔH figures
            values = assemble_rows(plain, (rows, trained.values), (rest, rest_values))
            deltas, rewards, _ = step_signals(trajs, values[1], self.cfg)
        assert values is not None
        elapsed = time.perf_counter() - started

        # 6. metrics
        metrics = dict(trained.loss_metrics[-1]) if rows else _NO_UPDATE.copy()
        check = compare_logprobs(plain, values[0])
        metrics.update(
            signal_metrics(trajectories, trajs, rewards, deltas),
            grad_norm=trained.grad_norm,
            zero_variance_groups=float(adv.zero_variance_groups + flat_groups),
            groups=float(adv.groups + flat_groups),
            trajectories=float(len(trajectories)),
            trained_trajectories=float(len(rows)),
            recomputed=0.0 if reuse else 1.0,
            fused=1.0 if (mode == "stream" and rows) or trained.graph_used else 0.0,
            logprob_diff_max=check.max_abs_diff,
            logprob_diff_mean=check.mean_abs_diff,
            seq_tokens=float(trained.tokens),
            tokens_per_s=trained.tokens * (1 + self.cfg.updates_per_batch) / max(elapsed, 1e-9),
            seconds=elapsed,
        )
        metrics["clip_frac"] = metrics.get("clip_frac_low", 0.0) + metrics.get(
            "clip_frac_high", 0.0
        )
        return StepResult(metrics=metrics, trajectories=len(trajectories))

    def _train(
        self,
        plain: TrainBatch,
        trajs: Sequence[Trajectory],
        adv: BatchAdvantages,
        rows: list[int],
        values: _Pair | None,
        graph: _Pair | None,
    ) -> _Trained:
        """4-5 on the ``rows`` of ``plain`` that train, with their advantages. ``values``: the
        kept rows' proximal (logprobs, entropy), None when the first update's forward gives them
        ("stream"); ``graph``: a forward with grad over the kept rows ("graph"), used by the first
        update when that costs less than a fresh forward (``fusion.graph_pays``)."""
        batch = pack_batch(
            [trajs[b] for b in rows],
            [adv.per_trajectory[b] for b in rows],
            pad_token_id=self.pad_token_id,
        )
        width = batch.input_ids.shape[1]
        picked = torch.tensor(rows, dtype=torch.long)
        part = None if values is None else (values[0][picked, :width], values[1][picked, :width])
        tokens = int(batch.attention_mask.sum())
        if graph is not None and not graph_pays(int(plain.attention_mask.sum()), tokens):
            graph = None  # a fresh forward over the trained rows is cheaper than its backward
        first = None if graph is None else graph_rows(graph, picked)
        loss_metrics, grad_norm, part = self._update(batch, part, first)
        return _Trained(loss_metrics, grad_norm, part, first is not None, tokens)

    def _grad_forward(self, batch: TrainBatch) -> _Pair:
        """(logprobs, entropy), (B, T) on the device, of every row in one forward with grad."""
        with self._autocast():
            return forward_logprobs(
                self.stats, batch.input_ids.to(self.device), batch.attention_mask.to(self.device)
            )

    def _update(
        self, batch: TrainBatch, values: _Pair | None, first: RowsForward | None = None
    ) -> tuple[list[dict[str, float]], float, _Pair]:
        """4-5. the loss over micro-batches, gradient clipping and ``updates_per_batch`` AdamW
        steps (``trainer.update``); returns each update's loss metrics, the last gradient norm
        and the proximal (logprobs, entropy), (B, T). With several ranks each trains its share
        of the rows, balanced by tokens. ``values`` None: fused, the first update's forward
        (``first``: rows of a forward already run) is the proximal policy (``trainer.fusion``)."""
        off = (
            batch.sampled_mask
            if self.weights_version is None
            else batch.off_policy(self.weights_version)
        )
        ref = None
        if self.cfg.loss.kl_coef > 0:
            with self._reference() as ref_model:
                ref, _ = self._recompute(ref_model, batch)
        mask = batch.loss_mask
        assignment = balance_by_tokens(batch.lengths.tolist(), self.dist.world)
        mine = assignment[self.dist.rank]
        local = batch.select(mine) if mine else None
        index = torch.tensor(mine, dtype=torch.long)

        def part(t: torch.Tensor | None) -> torch.Tensor | None:
            if t is None or local is None:
                return None
            return t[index, : local.input_ids.shape[1]]

        rows = StepRows(
            batch=local, proximal=part(values[0] if values else None),
            entropy=part(values[1] if values else None), off=part(off), ref=part(ref),
            total_tokens=float(mask.sum().clamp(min=1.0)),
            total_rows=float((mask.sum(dim=1) > 0).sum().clamp(min=1)),
            passes=passes_needed(assignment, self.cfg.micro_batch_size),
        )  # fmt: skip
        record = None
        if values is None and local is not None:  # fused (one process): filled by the update
            record = (torch.zeros(local.input_ids.shape), torch.zeros(local.input_ids.shape))
        forward = None if first is None else (lambda sel, w: first(index[sel], w))
        loss_metrics: list[dict[str, float]] = []
        grad_norm = 0.0
        for _ in range(self.cfg.updates_per_batch):
            self.optimizer.zero_grad(set_to_none=True)
            metrics = accumulate(
                self.stats, rows, loss_cfg=self.cfg.loss,
                micro_batch_size=self.cfg.micro_batch_size, device=self.device,
                autocast=self._autocast, d=self.dist, forward=forward, record=record,
            )  # fmt: skip
            metrics["trained_tokens"] = float(mask.sum())
            loss_metrics.append(metrics)
            grad_norm = clip_and_step(self.optimizer, self.cfg.max_grad_norm)
            if record is not None:  # later updates: after an optimizer step, the first's values
                rows = replace(rows, proximal=record[0], entropy=record[1])
            forward, record = None, None
        if values is None:
            assert rows.proximal is not None and rows.entropy is not None
            values = assemble_rows(batch, (mine, (rows.proximal, rows.entropy)))
        return loss_metrics, grad_norm, values

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


__all__ = ["Finetune", "Precision", "StepResult", "TrainConfig", "Trainer", "build_policy"]
