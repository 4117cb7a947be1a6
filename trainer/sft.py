"""Supervised fine-tuning on tool-use demonstrations (how the default model is bootstrapped).

A demonstration is an OpenAI-style message list. It is tokenized exactly the way the agent sees
a conversation at run time (``ChatFormat.render`` for the prompt, the template's rendering of each
assistant message up to and including its end-of-turn token as the "sampled" ids, and
``ChatFormat.environment_tokens`` for the tool results in between), so what the model is taught
is token for token what it will later read and write. The loss is next-token cross-entropy on
assistant tokens only; prompt and environment tokens are masked.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import PreTrainedModel

from tepo_agent.chat.format import ChatFormat
from tepo_agent.errors import ConfigError, TrainerError

Message = dict[str, Any]


@dataclass(frozen=True)
class TokenizedTrace:
    """A demonstration as token ids with a loss mask (1 on assistant tokens)."""

    input_ids: list[int]
    loss_mask: list[int]


def tokenize_trace(
    fmt: ChatFormat, messages: Sequence[Message], tools: Sequence[Mapping[str, Any]] | None
) -> TokenizedTrace:
    """Tokenize a demonstration token-exactly as the agent would build it turn by turn."""
    first = next((i for i, m in enumerate(messages) if m["role"] == "assistant"), None)
    if first is None:
        raise ConfigError("a demonstration needs at least one assistant message")
    ids = fmt.render(messages[:first], tools, add_generation_prompt=True)
    mask = [0] * len(ids)
    end_text = fmt.decode([fmt.end_of_turn_id])
    i = first
    while i < len(messages):
        if messages[i]["role"] != "assistant":
            raise ConfigError(f"message {i} should be an assistant turn, got {messages[i]['role']}")
        before = fmt.render_text(messages[:i], tools, add_generation_prompt=True)
        with_turn = fmt.render_text(messages[: i + 1], tools, add_generation_prompt=False)
        turn_text = with_turn[len(before) :]
        cut = turn_text.find(end_text)
        if not with_turn.startswith(before) or cut < 0:
            raise ConfigError("the chat template does not render this demonstration incrementally")
        sampled = fmt.encode(turn_text[: cut + len(end_text)])
        ids += sampled
        mask += [1] * len(sampled)
        j = i + 1
        while j < len(messages) and messages[j]["role"] == "tool":
            j += 1
        if j > i + 1:
            env = fmt.environment_tokens(
                messages[: i + 1], messages[i + 1 : j], tools, sampled_end_of_turn=True
            )
            ids += env
            mask += [0] * len(env)
        i = j
    return TokenizedTrace(ids, mask)


@dataclass(frozen=True)
class SFTConfig:
    """Supervised fine-tuning settings (the default model's recipe sets ``steps`` and
    ``first_turn_steps``: ``BootstrapConfig.sft``).

    Attributes:
        steps: Optimiser steps. Copying names and numbers into tool calls is an induction
            circuit that appears abruptly (Olsson et al. 2022) after enough tokens: the bootstrap
            measures checkpoints rather than trusting a step count.
        batch_size: Demonstrations per step (right-padded into one batch).
        lr: Peak AdamW learning rate (a 1 M-parameter model tolerates a high one).
        warmup_steps: Linear warm-up, then cosine decay to 10% of ``lr``.
        weight_decay: AdamW weight decay.
        max_grad_norm: Gradient clipping.
        length_buckets: Batches are cut from groups of this many batches' worth of
            demonstrations sorted by length, so a batch pads little (1 = no bucketing).
        first_turn_steps: The first this many of ``steps`` train on each demonstration's
            first assistant turn only (its prompt and its first call or answer, see
            :func:`first_turn`): short sequences whose loss is mostly the copy of the
            question's name or expression into a call, so the copying circuit forms at a
            fraction of the cost of full demonstrations (0 = none; all steps when ``steps`` is
            smaller).
        after_tool_weight: Loss weight of the assistant turns that follow a tool result (the
            answer or the next call, which copy the result's number or name), relative to 1 for
            the first turn (1 = plain cross-entropy).
        seed: Shuffling seed.
    """

    steps: int = 900
    batch_size: int = 32
    lr: float = 3e-3
    warmup_steps: int = 30
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    length_buckets: int = 16
    first_turn_steps: int = 0
    after_tool_weight: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.length_buckets < 1:
            raise ConfigError("steps, batch_size and length_buckets must be >= 1")
        if self.first_turn_steps < 0:
            raise ConfigError(f"first_turn_steps must be >= 0, got {self.first_turn_steps}")
        if not self.lr > 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if not self.after_tool_weight > 0:
            raise ConfigError(f"after_tool_weight must be > 0, got {self.after_tool_weight}")


def first_turn(trace: TokenizedTrace) -> TokenizedTrace:
    """``trace`` cut after its first assistant turn (the prompt and the first sampled turn)."""
    start = trace.loss_mask.index(1)
    end = start
    while end < len(trace.loss_mask) and trace.loss_mask[end]:
        end += 1
    return TokenizedTrace(trace.input_ids[:end], trace.loss_mask[:end])


def loss_weights(trace: TokenizedTrace, after_tool_weight: float) -> list[float]:
    """Per-token loss weights: 0 off assistant turns, 1 on the first assistant turn and
    ``after_tool_weight`` on every assistant turn after it (each follows a tool result)."""
    weights: list[float] = []
    turn = 0
    previous = 0
    for m in trace.loss_mask:
        turn += m and not previous
        previous = m
        weights.append(0.0 if not m else 1.0 if turn == 1 else after_tool_weight)
    return weights


def _lr_at(step: int, cfg: SFTConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def _collate(
    traces: Sequence[TokenizedTrace], pad_id: int, device: torch.device, after_tool_weight: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    width = max(len(t.input_ids) for t in traces)
    ids = torch.full((len(traces), width), pad_id, dtype=torch.long)  # (B, T)
    mask = torch.zeros((len(traces), width), dtype=torch.float32)  # (B, T) loss weight of t
    attn = torch.zeros((len(traces), width), dtype=torch.long)
    for row, t in enumerate(traces):
        n = len(t.input_ids)
        ids[row, :n] = torch.tensor(t.input_ids)
        mask[row, :n] = torch.tensor(loss_weights(t, after_tool_weight), dtype=torch.float32)
        attn[row, :n] = 1
    return ids.to(device), mask.to(device), attn.to(device)


def _epoch(traces: Sequence[TokenizedTrace], cfg: SFTConfig, rng: random.Random) -> list[list[int]]:
    """One pass over the demonstrations as batches of similar length, in random order."""
    order = list(range(len(traces)))
    rng.shuffle(order)
    group = cfg.batch_size * cfg.length_buckets
    batches: list[list[int]] = []
    for start in range(0, len(order), group):
        chunk = sorted(order[start : start + group], key=lambda i: len(traces[i].input_ids))
        batches += [chunk[j : j + cfg.batch_size] for j in range(0, len(chunk), cfg.batch_size)]
    rng.shuffle(batches)
    return batches


def sft(
    model: PreTrainedModel,
    traces: Sequence[TokenizedTrace],
    cfg: SFTConfig = SFTConfig(),
    *,
    pad_token_id: int = 0,
    on_step: Callable[[int, float], None] | None = None,
) -> list[float]:
    """Train ``model`` in place on ``traces``; returns the loss of every step.

    ``on_step(step, loss)`` runs after every step; it may evaluate the model (the next step puts
    it back in training mode).
    """
    if not traces:
        raise TrainerError("no demonstrations to train on")
    device = next(model.parameters()).device
    rng = random.Random(cfg.seed)
    batches: list[list[int]] = []
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    losses = []
    pool: Sequence[TokenizedTrace] = (
        [first_turn(t) for t in traces] if cfg.first_turn_steps else traces
    )
    for step in range(cfg.steps):
        if step == cfg.first_turn_steps and pool is not traces:
            pool, batches = traces, []
        if not batches:
            batches = _epoch(pool, cfg, rng)
            weight = sum(sum(loss_weights(t, cfg.after_tool_weight)) for t in pool)
            norm = cfg.batch_size * max(1.0, weight / len(pool))
        batch = [pool[i] for i in batches.pop()]
        model.train()
        ids, mask, attn = _collate(batch, pad_token_id, device, cfg.after_tool_weight)
        logits = model(input_ids=ids, attention_mask=attn).logits[:, :-1].float()  # (B, T-1, V)
        targets = ids[:, 1:]
        target_mask = mask[:, 1:]
        nll = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none"
        ).view_as(targets)
        # A fixed normaliser (the mean loss tokens of a batch over all demonstrations), not this
        # batch's own count: with length bucketing, short batches (direct answers) would
        # otherwise weigh each of their tokens several times more than long ones (tool calls),
        # and the model would learn to answer rather than call.
        loss = (nll * target_mask).sum() / norm
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, cfg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
        opt.step()
        losses.append(loss.item())
        if on_step is not None:
            on_step(step, losses[-1])
    model.eval()
    return losses
