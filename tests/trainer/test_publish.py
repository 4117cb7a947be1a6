"""Publishing through the gate: the accept/reject rule, promotion, and a kept, marked rejection."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from _tepo_data import make_model

from tepo_agent.errors import ConfigError
from tepo_agent.model.io import load_causal_lm
from tepo_agent.policy.registry import PolicyRegistry
from tepo_agent.trainer.checkpoint import save_policy
from tepo_agent.trainer.eval_gate import EvalResult, GateConfig, decide, held_out_tasks
from tepo_agent.trainer.publish import publish_checkpoint

GATE = GateConfig(tasks=2, margin=0.1, format_margin=0.05, max_new_tokens=8)


def _eval(acc: float, fmt: float) -> EvalResult:
    return EvalResult(accuracy=acc, format_error_rate=fmt, tasks=10, tool_calls=10, key=GATE.key)


@pytest.mark.parametrize(
    ("cand", "live", "accept"),
    [
        ((0.50, 0.0), (0.55, 0.0), True),  # drop 0.05 <= 0.1
        ((0.45, 0.0), (0.55, 0.0), True),  # drop 0.10 == margin
        ((0.40, 0.0), (0.55, 0.0), False),  # drop 0.15 > 0.1
        ((0.90, 0.10), (0.50, 0.0), False),  # format errors rose 0.10 > 0.05
        ((0.90, 0.05), (0.50, 0.0), True),  # rose exactly the allowed 0.05
        ((0.90, 0.0), (0.50, 0.30), True),  # fewer format errors
    ],
)
def test_gate_rule_table(
    cand: tuple[float, float], live: tuple[float, float], accept: bool
) -> None:
    assert decide(_eval(*cand), _eval(*live), GATE).accept is accept


def test_no_live_policy_accepts_and_config_is_validated() -> None:
    assert decide(_eval(0.0, 1.0), None, GATE).accept
    with pytest.raises(ConfigError, match="margin"):
        GateConfig(margin=1.5)
    with pytest.raises(ConfigError, match="search index"):
        held_out_tasks(GateConfig(suites=("knowledge",)), None)


def test_held_out_tasks_are_seeded_and_disjoint_from_training_seeds() -> None:
    tasks, tools = held_out_tasks(GateConfig(tasks=5), None)
    again, _ = held_out_tasks(GateConfig(tasks=5), None)
    assert [t.id for t in tasks] == [t.id for t in again] and len(tasks) == 5
    train, _ = held_out_tasks(GateConfig(tasks=5, seed=0), None)
    assert {t.id for t in tasks}.isdisjoint({t.id for t in train})
    assert [t.name for t in tools] == ["calculator"]


def _perturbed_policy(model_dir: Path, run_dir: Path) -> Path:
    model = load_causal_lm(model_dir, device="cpu", dtype="float32")
    with torch.no_grad():
        model.model.norm.weight.mul_(1.5)
    return save_policy(model, run_dir, step=1, base_model=str(model_dir))


def test_candidate_is_promoted_when_the_gate_accepts(tmp_path: Path) -> None:
    model_dir = make_model(tmp_path / "model")
    path = _perturbed_policy(model_dir, tmp_path / "run")
    with PolicyRegistry(tmp_path / "t.db") as registry:
        result = publish_checkpoint(
            path, registry, kind="full", parent=0, base_model=model_dir,
            gate=GateConfig(tasks=2, margin=1.0, format_margin=1.0, max_new_tokens=8),
        )  # fmt: skip
        live = registry.live()
        assert result.accepted and live is not None and live.version == result.version == 1
        assert registry.get(0).status == "retired"
        assert live.metrics["gate"]["tasks"] == 2 and "live_gate" in live.metrics


def test_a_worse_candidate_is_rejected_kept_and_marked(tmp_path: Path) -> None:
    model_dir = make_model(tmp_path / "model")
    with PolicyRegistry(tmp_path / "t.db") as registry:
        registry.ensure_base(str(model_dir))
        # the live policy (same weights as the base) scored perfectly under this gate
        live_v = registry.register(
            str(model_dir), kind="full", parent=0, metrics={"gate": _eval(1.0, 0.0).to_json()}
        )
        registry.promote(live_v)
        path = _perturbed_policy(model_dir, tmp_path / "run")
        result = publish_checkpoint(
            path, registry, kind="full", parent=live_v, base_model=model_dir, gate=GATE
        )
        assert not result.accepted and "accuracy" in result.reason
        assert result.candidate is not None and result.candidate.accuracy == 0.0
        rejected = registry.get(result.version)
        assert rejected.status == "rejected" and rejected.reason == result.reason
        live = registry.live()
        assert live is not None and live.version == live_v  # the live policy keeps serving
    assert (path / "model.safetensors").is_file()  # kept for inspection
