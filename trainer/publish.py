"""Publishing: a checkpoint directory → gate evaluation → registry row → promote or reject.

``publish_checkpoint`` evaluates the candidate (its weights loaded into a fresh in-process
backend exactly as a serving process would load them: full weights, or the LoRA adapter merged
into version 0) and the live policy on the same held-out tasks (``trainer.eval_gate``), registers
the candidate with both evaluations in its metrics, and then promotes it (serving processes pick
it up between requests, see ``tepo_agent.policy.hotswap``) or rejects it: the directory and the
row are kept, marked ``rejected`` with the reason, and the reason is returned for the caller to
report.

Every gate evaluation is also stored, item by item, in the database's evaluations tables
(``tepo_agent.evaluation.records``) under its policy version and :attr:`GateConfig.key`. The live
policy's evaluation is reused by later publishes under the same key instead of being recomputed:
from its registry metrics, or from any stored evaluation with that key (the demo's "before"
evaluation is one).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tepo_agent.backends.transformers_backend import TransformersBackend
from tepo_agent.chat.format import ChatFormat
from tepo_agent.evaluation import ItemResult, find_evaluation, save_evaluation
from tepo_agent.policy.hotswap import InProcessTarget
from tepo_agent.policy.manifest import directory_sha256
from tepo_agent.policy.registry import PolicyKind, PolicyRecord, PolicyRegistry
from tepo_agent.trainer.eval_gate import EvalResult, GateConfig, decide, gate_items, gate_meta


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


def evaluate_record_items(
    record: PolicyRecord,
    registry: PolicyRegistry,
    gate: GateConfig,
    *,
    base_model: str | os.PathLike[str],
    device: str = "cpu",
) -> list[ItemResult]:
    """Run a registered (or about-to-be registered) policy on the gate's held-out items."""
    base = registry.get(0) if record.kind == "lora" else None
    backend = TransformersBackend.from_pretrained(
        base_model, device=device, dtype="float32", max_batch_size=gate.eval_config().concurrency
    )
    try:
        if record.kind == "lora" or Path(record.path) != Path(base_model):
            InProcessTarget(backend).swap(record, base)
        fmt = ChatFormat.from_pretrained(base_model)
        return gate_items(backend, fmt, gate)
    finally:
        backend.close()


def evaluate_record(
    record: PolicyRecord,
    registry: PolicyRegistry,
    gate: GateConfig,
    *,
    base_model: str | os.PathLike[str],
    device: str = "cpu",
) -> EvalResult:
    """:func:`evaluate_record_items` summarised for the gate's rule."""
    items = evaluate_record_items(record, registry, gate, base_model=base_model, device=device)
    return EvalResult.from_items(items, gate.key)


def _live_evaluation(
    registry: PolicyRegistry, gate: GateConfig, base_model: str, device: str
) -> tuple[PolicyRecord | None, EvalResult | None]:
    """The live policy's evaluation under ``gate``: from its registry metrics, else from the
    evaluations tables (anyone's evaluation under the same key), else run now and stored."""
    live = registry.live()
    if live is None:
        return None, None
    cached = EvalResult.from_json(live.metrics.get("gate"))
    if cached is not None and cached.key == gate.key:
        return live, cached
    stored = find_evaluation(registry.store, policy_version=live.version, key=gate.key)
    if stored is not None:
        return live, EvalResult.from_items(stored[1], gate.key)
    items = evaluate_record_items(live, registry, gate, base_model=base_model, device=device)
    save_evaluation(registry.store, items, gate_meta(gate, live.version))
    return live, EvalResult.from_items(items, gate.key)


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
    cand_items: list[ItemResult] = []
    live_eval: EvalResult | None = None
    if gate.enabled:
        pending = PolicyRecord(version=-1, parent=parent, path=path, kind=kind, status="candidate")
        cand_items = evaluate_record_items(
            pending, registry, gate, base_model=base_model, device=device
        )
        cand_eval = EvalResult.from_items(cand_items, gate.key)
        _, live_eval = _live_evaluation(registry, gate, base_model, device)
        decision = decide(cand_eval, live_eval, gate)
    else:
        from tepo_agent.trainer.eval_gate import GateDecision

        decision = GateDecision(True, "gate disabled")
    # The files' digest, so a replica on another host can verify what it fetches (policy.fleet).
    metrics: dict[str, Any] = {"train": train_metrics or {}, "sha256": directory_sha256(path)}
    if cand_eval is not None:
        metrics["gate"] = cand_eval.to_json()
    if live_eval is not None:
        metrics["live_gate"] = live_eval.to_json()
    version = registry.register(path, kind=kind, parent=parent, metrics=metrics)
    if cand_items:
        save_evaluation(registry.store, cand_items, gate_meta(gate, version))
    if decision.accept:
        registry.promote(version)
    else:
        registry.reject(version, decision.reason)
    return PublishResult(version, path, decision.accept, decision.reason, cand_eval, live_eval)


__all__ = ["PublishResult", "evaluate_record", "evaluate_record_items", "publish_checkpoint"]
