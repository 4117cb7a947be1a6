"""Publishing: a checkpoint directory → gate evaluation → registry row → promote or reject.

``publish_checkpoint`` evaluates the candidate (its weights loaded into a fresh in-process
backend exactly as a serving process would load them: full weights, or the LoRA adapter merged
into version 0) and the live policy on the same held-out tasks (``trainer.eval_gate``), registers
the candidate with both evaluations in its metrics, and then promotes it (serving processes pick
it up between requests, see ``tepo_agent.policy.hotswap``) or rejects it: the directory and the
row are kept, marked ``rejected`` with the reason, and the reason is returned for the caller to
report.

A live policy's evaluation is stored in its registry metrics, so it is reused by later publishes
made under the same gate settings (:attr:`GateConfig.key`) instead of being recomputed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tepo_agent.backends.transformers_backend import TransformersBackend
from tepo_agent.chat.format import ChatFormat
from tepo_agent.policy.hotswap import InProcessTarget
from tepo_agent.policy.registry import PolicyKind, PolicyRecord, PolicyRegistry
from tepo_agent.trainer.eval_gate import EvalResult, GateConfig, decide, evaluate_policy


@dataclass(frozen=True)
class PublishResult:
    """What happened to a candidate.

    Attributes:
        version: The registry version it was given.
        path: Its checkpoint directory.
        accepted: True if it is live now.
        reason: Why it was accepted or rejected.
        candidate: Its evaluation (None with the gate disabled).
        live: The evaluation of the policy it was compared with (None if none).
    """

    version: int
    path: str
    accepted: bool
    reason: str
    candidate: EvalResult | None
    live: EvalResult | None


def evaluate_record(
    record: PolicyRecord,
    registry: PolicyRegistry,
    gate: GateConfig,
    *,
    base_model: str | os.PathLike[str],
    device: str = "cpu",
) -> EvalResult:
    """Evaluate a registered (or about-to-be registered) policy on the held-out tasks."""
    base = registry.get(0) if record.kind == "lora" else None
    backend = TransformersBackend.from_pretrained(base_model, device=device, dtype="float32")
    try:
        if record.kind == "lora" or Path(record.path) != Path(base_model):
            InProcessTarget(backend).swap(record, base)
        fmt = ChatFormat.from_pretrained(base_model)
        return evaluate_policy(backend, fmt, gate)
    finally:
        backend.close()


def _live_evaluation(
    registry: PolicyRegistry, gate: GateConfig, base_model: str, device: str
) -> tuple[PolicyRecord | None, EvalResult | None]:
    live = registry.live()
    if live is None:
        return None, None
    cached = EvalResult.from_json(live.metrics.get("gate"))
    if cached is not None and cached.key == gate.key:
        return live, cached
    return live, evaluate_record(live, registry, gate, base_model=base_model, device=device)


def publish_checkpoint(
    path: str | os.PathLike[str],
    registry: PolicyRegistry,
    *,
    kind: PolicyKind,
    parent: int | None,
    base_model: str | os.PathLike[str],
    gate: GateConfig,
    device: str = "cpu",
    train_metrics: dict[str, Any] | None = None,
) -> PublishResult:
    """Gate a checkpoint directory, register it, and promote or reject it (module docstring)."""
    path = str(path)
    base_model = str(base_model)
    registry.ensure_base(base_model)
    cand_eval: EvalResult | None = None
    live_eval: EvalResult | None = None
    if gate.enabled:
        pending = PolicyRecord(version=-1, parent=parent, path=path, kind=kind, status="candidate")
        cand_eval = evaluate_record(pending, registry, gate, base_model=base_model, device=device)
        _, live_eval = _live_evaluation(registry, gate, base_model, device)
        decision = decide(cand_eval, live_eval, gate)
    else:
        from tepo_agent.trainer.eval_gate import GateDecision

        decision = GateDecision(True, "gate disabled")
    metrics: dict[str, Any] = {"train": train_metrics or {}}
    if cand_eval is not None:
        metrics["gate"] = cand_eval.to_json()
    if live_eval is not None:
        metrics["live_gate"] = live_eval.to_json()
    version = registry.register(path, kind=kind, parent=parent, metrics=metrics)
    if decision.accept:
        registry.promote(version)
    else:
        registry.reject(version, decision.reason)
    return PublishResult(version, path, decision.accept, decision.reason, cand_eval, live_eval)


__all__ = ["PublishResult", "evaluate_record", "publish_checkpoint"]
