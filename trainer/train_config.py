"""The trainer's configuration (:class:`TrainConfig`) and its trainable model (``build_policy``).

``TrainConfig`` holds everything one training run needs besides data and a model: the math
(``trainer/config.py``), what is trained (full weights or a LoRA adapter), the optimiser, the
batch shape, precision and the memory options of the forward pass. ``build_policy`` loads the
model it describes. Both are re-exported by ``trainer.loop``.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Literal

import torch

from tepo_agent.errors import ConfigError
from tepo_agent.model.io import load_causal_lm, resolve_device
from tepo_agent.trainer.config import AdvantageConfig, LossConfig, RewardConfig

Finetune = Literal["full", "lora"]
Precision = Literal["auto", "fp32", "bf16"]

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
        fuse_recompute: Where the recompute would give the same numbers as the first update's
            training forward (one process, no active dropout, first update; the outcome reward
            at any batch size, sparse and dense when the step's rows fit one micro-batch), take
            the proximal logprobs and entropies from that forward instead of a separate no-grad
            pass (``trainer.fusion``; default True). False always runs the recompute (for
            comparisons; the results agree within float32 noise).
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``.
        precision: ``auto`` is bf16 autocast on CUDA and float32 on CPU. ``bf16`` forces
            autocast (on CPU too); weights, gradients and AdamW state stay float32 either way.
        logit_chunk_tokens: Positions whose output-layer logits and float32 log-softmax exist at
            once (``trainer.token_stats``; default 1024). The full (tokens × vocabulary) float32
            log-softmax is never built: peak memory of that part is ~3 · chunk · vocabulary · 4
            bytes. Smaller saves memory, larger launches fewer kernels.
        activation_checkpointing: Recompute each decoder layer's activations in the backward
            pass instead of storing them (transformers' gradient checkpointing, non-reentrant;
            default False): much less activation memory for about one more forward pass.
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
    fuse_recompute: bool = True
    device: str = "auto"
    precision: Precision = "auto"
    logit_chunk_tokens: int = 1024
    activation_checkpointing: bool = False
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
        for name in ("lora_rank", "batch_trajectories", "micro_batch_size", "updates_per_batch",
                     "logit_chunk_tokens"):  # fmt: skip
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
    if cfg.activation_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    return model


__all__ = ["Finetune", "Precision", "TrainConfig", "build_policy"]
