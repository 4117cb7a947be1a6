"""Shared test data for the trainer tests: a tiny default model and real agent trajectories."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from tepo_agent.agent.graph import AgentConfig, TepoAgent
from tepo_agent.backends.transformers_backend import TransformersBackend
from tepo_agent.chat.format import ChatFormat
from tepo_agent.model.default import DefaultModelConfig, init_model
from tepo_agent.store import TrajectoryStore
from tepo_agent.tasks import math_suite
from tepo_agent.tools.calculator import make_calculator_tool

TINY = DefaultModelConfig(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=1,
    num_attention_heads=2,
    num_key_value_heads=1,
    max_position_embeddings=1024,
)


def make_model(path: Path, seed: int = 0) -> Path:
    """A random-weight tiny default model (the real tokenizer and chat template)."""
    return init_model(path, seed=seed, config=TINY)


def agent_for(backend: TransformersBackend, model_dir: Path, store: TrajectoryStore | None,
              seed: int = 0) -> TepoAgent:  # fmt: skip
    cfg = AgentConfig(max_tool_calls=1, max_new_tokens=12, max_total_tokens=900, seed=seed)
    fmt = ChatFormat.from_pretrained(model_dir)
    return TepoAgent(backend, fmt, [make_calculator_tool()], cfg, store=store)


def collect(
    model_dir: Path,
    db: Path,
    *,
    groups: int = 2,
    n: int = 4,
    seed: int = 0,
    version: int = 0,
    scores: Sequence[float] | None = None,
) -> list[str]:
    """Run the real agent on seeded math tasks in groups of ``n`` and score every run.

    Scores come from the task verifiers; ``scores`` (cycled over each group's members) stands in
    for application feedback where a test needs a learning signal a random model cannot earn.
    """
    ids: list[str] = []
    with (
        TrajectoryStore(db) as store,
        TransformersBackend.from_pretrained(
            model_dir, device="cpu", dtype="float32", policy_version=version
        ) as backend,
    ):
        agent = agent_for(backend, model_dir, store, seed=seed)
        for task in math_suite(groups, seed=seed):
            results = agent.run_group(task.question, n, task_id=task.id)
            for i, result in enumerate(results):
                assert result.trajectory_id is not None
                score = task.score(result.answer) if scores is None else scores[i % len(scores)]
                store.record_feedback(result.trajectory_id, score, source="verifier")
                ids.append(result.trajectory_id)
    return ids
