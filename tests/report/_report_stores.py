"""Small stores with hand-chosen contents for the report tests (real SQLite, real registry)."""

from __future__ import annotations

from pathlib import Path

from transformers import AutoTokenizer

from tepo_agent.policy.registry import PolicyRegistry
from tepo_agent.store import TrajectoryStore
from tepo_agent.trajectory import Trajectory, Turn

STEP_METRICS = [
    {"reward_mean": 0.25, "score_mean": 0.5, "kl": 0.001, "grad_norm": 1.5, "loss": 0.3},
    {"reward_mean": 0.5, "score_mean": 0.5, "kl": 0.002, "grad_norm": 1.25, "loss": 0.2},
    {"reward_mean": 0.75, "score_mean": 1.0, "kl": 0.004, "grad_norm": 0.5, "loss": 0.1},
]


def assistant(tok: AutoTokenizer, text: str, entropies: list[float] | None, v: int) -> Turn:
    ids = tok.encode(text, add_special_tokens=False)
    ents = entropies if entropies is not None else [0.1 + 0.37 * (i % 7) for i in range(len(ids))]
    assert len(ents) == len(ids), (text, len(ids))
    return Turn(role="assistant", token_ids=ids, text=text, logprobs=[-0.5] * len(ids),
                entropies=ents, entropy_kind="exact", policy_version=v, finish_reason="stop",
                entropy_mean=sum(ents) / len(ents))  # fmt: skip


def tool(name: str | None, args: dict | None, result: str | None, error: str | None,
         dh: float | None, latency: float = 0.01) -> Turn:  # fmt: skip
    return Turn(role="tool", token_ids=[1, 2], text=result or error or "", tool_call_id="c",
                tool_name=name, tool_args=args, tool_result=result, tool_error=error,
                tool_latency_s=latency, delta_entropy=dh)  # fmt: skip


def runs(tok: AutoTokenizer) -> list[Trajectory]:
    """Four runs: two calculator calls (one ok, one malformed), a search with an unknown-tool
    error, and a run without tools. ΔH: -0.5, +0.25, -0.75, None."""
    a = lambda text, v=1: assistant(tok, text, None, v)  # noqa: E731
    return [
        Trajectory(task="What is 6 * 7?", prompt_token_ids=[5, 6],
                   turns=[a("I will use the calculator."),
                          tool("calculator", {"expression": "6*7"}, "42", None, -0.5, 0.002),
                          a("The answer is 42.")],
                   answer="42", score=1.0, group_id="g1"),
        Trajectory(task="What is 9 * 9?", prompt_token_ids=[5, 6],
                   turns=[a("Let me compute that."),
                          tool("calculator", None, None, "error: malformed tool call (bad json)",
                               0.25, 0.0),
                          a("The answer is 80.")],
                   answer="80", score=0.0, group_id="g1"),
        Trajectory(task="Who founded Arcadia Mills?", prompt_token_ids=[5, 6],
                   turns=[a("I will search.", v=2),
                          tool("search", {"query": "Arcadia"}, "Ada Quill founded it.", None,
                               -0.75, 0.05),
                          tool("lookup", {"q": "x"}, None, "error: unknown tool 'lookup'", None),
                          a("Ada Quill.", v=2)],
                   answer="Ada Quill", score=1.0),
        Trajectory(task="Say hi.", prompt_token_ids=[5, 6], turns=[a("Hi there!", v=2)],
                   answer="Hi there!", score=None),
    ]  # fmt: skip


def write_runs(path: Path, model_dir: Path) -> list[str]:
    """Only the runs above (the base model stays the live version); returns their ids."""
    with TrajectoryStore(path) as store:
        return store.add_many(runs(AutoTokenizer.from_pretrained(str(model_dir))))


def write_store(path: Path, model_dir: Path) -> list[str]:
    """The runs above, three train steps and a registry history; returns the run ids."""
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    with TrajectoryStore(path) as store:
        registry = PolicyRegistry(store)
        registry.ensure_base(model_dir)
        gate = {"gate": {"accuracy": 0.625, "tasks": 8, "key": "k"}}
        v1 = registry.register(path.parent / "v1", kind="lora", parent=0, metrics=gate)
        registry.promote(v1)
        ids = store.add_many(runs(tok))
        for step, metrics in enumerate(STEP_METRICS, start=1):
            store.record_train_step(step, metrics, cursor_seq=step, policy_version=v1,
                                    published_version=2 if step == 3 else None)  # fmt: skip
        v2 = registry.register(path.parent / "v2", kind="lora", parent=v1)
        registry.reject(v2, "accuracy fell")
    return ids
