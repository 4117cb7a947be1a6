"""Publishing through the gate: the accept/reject rule, promotion, and a kept, marked rejection."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from _tepo_data import make_model

from tepo_agent.errors import ConfigError
from tepo_agent.evaluation import ItemResult, find_evaluation, save_evaluation
from tepo_agent.evaluation.heldout import held_out_items
from tepo_agent.model.io import load_causal_lm
from tepo_agent.policy.manifest import build_manifest
from tepo_agent.policy.registry import PolicyRegistry
from tepo_agent.trainer.checkpoint import save_policy
from tepo_agent.trainer.eval_gate import EvalResult, GateConfig, decide, gate_meta
from tepo_agent.trainer.publish import publish_checkpoint

GATE = GateConfig(tasks=2, suites=("math",), max_new_tokens=8)


def _eval(scores: list[float], shares: list[float] | None = None) -> EvalResult:
    shares = shares or [0.0] * len(scores)
    return EvalResult(
        accuracy=sum(scores) / len(scores), format_error_rate=sum(shares) / len(shares),
        tasks=len(scores), tool_calls=len(scores), key=GATE.key,
        scores={f"t{i}": s for i, s in enumerate(scores)},
        format_shares={f"t{i}": f for i, f in enumerate(shares)},
    )  # fmt: skip


LIVE = [1.0] * 20 + [0.0] * 20  # 40 items, accuracy 0.5


@pytest.mark.parametrize(
    ("cand", "accept"),
    [
        (LIVE, True),  # identical: every difference 0, interval [0, 0]
        ([0.0, *LIVE[1:]], True),  # one item lost (the old rule rejected this): not significant
        ([0.0] * 4 + LIVE[4:20] + [1.0] * 4 + LIVE[24:], True),  # 4 lost, 4 won: an equal policy
        ([0.0] * 12 + LIVE[12:], False),  # 12 of 20 solved items lost: clearly worse
        ([1.0] * 40, True),  # better
    ],
)
def test_gate_rule_table(cand: list[float], accept: bool) -> None:
    assert decide(_eval(cand), _eval(LIVE), GATE).accept is accept


def test_gate_tolerates_a_significant_drop_within_the_margin() -> None:
    worse = _eval([0.0] * 12 + LIVE[12:])  # paired change -0.3 [-0.45, -0.15]
    assert not decide(worse, _eval(LIVE), GATE).accept
    assert decide(worse, _eval(LIVE), GateConfig(tasks=2, margin=0.5)).accept


def test_gate_rejects_a_clear_rise_of_format_errors() -> None:
    live = _eval(LIVE, [0.0] * 40)
    assert decide(_eval(LIVE, [0.0] * 39 + [1.0]), live, GATE).accept  # one item: chance
    worse = decide(_eval(LIVE, [1.0] * 15 + [0.0] * 25), live, GATE)
    assert not worse.accept and "format errors" in worse.reason
    assert worse.format_change is not None and worse.format_change.low > 0


def test_no_live_policy_accepts_and_config_is_validated() -> None:
    assert decide(_eval([0.0]), None, GATE).accept
    with pytest.raises(ConfigError, match="margin"):
        GateConfig(margin=1.5)
    with pytest.raises(ConfigError, match="training world"):
        GateConfig(seed=0)
    with pytest.raises(ConfigError, match="different items"):
        decide(_eval([1.0]), _eval([1.0, 0.0]), GATE)


def test_an_old_evaluation_without_item_scores_is_not_reused() -> None:
    old = {"accuracy": 0.5, "format_error_rate": 0.0, "tasks": 16, "tool_calls": 3, "key": "k"}
    assert EvalResult.from_json(old) is None
    assert EvalResult.from_json(_eval(LIVE).to_json()) == _eval(LIVE)


def _perturbed_policy(model_dir: Path, run_dir: Path) -> Path:
    model = load_causal_lm(model_dir, device="cpu", dtype="float32")
    with torch.no_grad():
        model.model.norm.weight.mul_(1.5)
    return save_policy(model, run_dir, step=1, base_model=str(model_dir))


def test_an_identical_candidate_passes_the_real_gate(tmp_path: Path) -> None:
    model_dir = make_model(tmp_path / "model")
    path = save_policy(
        load_causal_lm(model_dir, device="cpu", dtype="float32"), tmp_path / "run", step=1,
        base_model=str(model_dir),
    )  # fmt: skip
    gate = GateConfig(tasks=3, max_new_tokens=8, workdir=str(tmp_path / "eval"))
    with PolicyRegistry(tmp_path / "t.db") as registry:
        result = publish_checkpoint(
            path, registry, kind="full", parent=0, base_model=model_dir, gate=gate
        )
        live = registry.live()
        assert result.accepted and live is not None and live.version == result.version == 1
        assert registry.get(0).status == "retired"
        assert live.metrics["gate"]["tasks"] == 9 and "live_gate" in live.metrics
        # the same weights answer every item the same: the paired change is exactly zero
        assert result.candidate is not None and result.live is not None
        assert result.candidate.scores == result.live.scores
        assert "paired change +0.000" in result.reason


def test_candidate_is_promoted_when_the_gate_accepts(tmp_path: Path) -> None:
    model_dir = make_model(tmp_path / "model")
    path = _perturbed_policy(model_dir, tmp_path / "run")
    with PolicyRegistry(tmp_path / "t.db") as registry:
        result = publish_checkpoint(
            path, registry, kind="full", parent=0, base_model=model_dir,
            gate=GateConfig(tasks=2, suites=("math",), margin=1.0, format_margin=1.0,
                            max_new_tokens=8),
        )  # fmt: skip
        live = registry.live()
        assert result.accepted and live is not None and live.version == result.version == 1
        assert registry.get(0).status == "retired"
        assert live.metrics["gate"]["tasks"] == 2 and "live_gate" in live.metrics
        # the files' digest, recorded for replicas that fetch the version over HTTP
        assert live.metrics["sha256"] == build_manifest(path).sha256


def test_a_worse_candidate_is_rejected_kept_and_marked(tmp_path: Path) -> None:
    model_dir = make_model(tmp_path / "model")
    with PolicyRegistry(tmp_path / "t.db") as registry:
        registry.ensure_base(str(model_dir))
        # the live policy scored perfectly on this gate's items (a random model scores 0)
        tasks, _ = held_out_items("math", GATE.tasks, GATE.seed, workdir=tmp_path / "eval")
        perfect = EvalResult(
            accuracy=1.0, format_error_rate=0.0, tasks=len(tasks), tool_calls=0, key=GATE.key,
            scores={t.id: 1.0 for t in tasks}, format_shares={t.id: 0.0 for t in tasks},
        )  # fmt: skip
        live_v = registry.register(
            str(model_dir), kind="full", parent=0, metrics={"gate": perfect.to_json()}
        )
        registry.promote(live_v)
        path = _perturbed_policy(model_dir, tmp_path / "run")
        result = publish_checkpoint(
            path, registry, kind="full", parent=live_v, base_model=model_dir, gate=GATE
        )
        assert not result.accepted and "worse beyond chance" in result.reason
        assert result.candidate is not None and result.candidate.accuracy == 0.0
        rejected = registry.get(result.version)
        assert rejected.status == "rejected" and rejected.reason == result.reason
        live = registry.live()
        assert live is not None and live.version == live_v  # the live policy keeps serving
    assert (path / "model.safetensors").is_file()  # kept for inspection


def test_gate_evaluations_are_stored_and_a_stored_live_evaluation_is_reused(
    tmp_path: Path,
) -> None:
    model_dir = make_model(tmp_path / "model")
    gate = GateConfig(tasks=2, suites=("math",), max_new_tokens=8, workdir=str(tmp_path / "e"))
    with PolicyRegistry(tmp_path / "t.db") as registry:
        registry.ensure_base(str(model_dir))
        # someone (the demo) evaluated the live version 0 under the gate's key, with a made-up
        # perfect score: the gate must take it rather than run version 0 again
        tasks, _ = held_out_items("math", 2, gate.seed, workdir=tmp_path / "e")
        perfect = [
            ItemResult(t.id, "math", t.needs_tool, 0, 1.0, t.answer, "ok", ()) for t in tasks
        ]
        save_evaluation(registry.store, perfect, gate_meta(gate, 0, label="demo-before"))
        path = _perturbed_policy(model_dir, tmp_path / "run")
        result = publish_checkpoint(
            path, registry, kind="full", parent=0, base_model=model_dir, gate=gate
        )
        assert result.live is not None and result.live.accuracy == 1.0  # reused, not rerun
        stored = find_evaluation(registry.store, policy_version=result.version, key=gate.key)
        assert stored is not None and stored[0].label == "gate"
        assert [i.task_id for i in stored[1]] == [t.id for t in tasks]
