"""What every store backend keeps beside trajectories: evaluations, served responses, the
report's aggregates (worked out by hand below), and the filtered reads the tools use."""

from __future__ import annotations

import pytest

from tepo_agent.errors import ConfigError
from tepo_agent.store import (
    EvaluationItemRecord,
    EvaluationRecord,
    ServedResponse,
    SessionTrajectory,
    Store,
    ToolStats,
    VersionStats,
)
from tepo_agent.trajectory import Trajectory, Turn


def _assistant(version: int) -> Turn:
    return Turn(role="assistant", token_ids=[1, 2], text="x", policy_version=version)


def _tool(name: str, dh: float | None, latency: float, kind: str | None = None) -> Turn:
    error = None if kind is None else f"error: {kind}"
    return Turn(role="tool", token_ids=[3], text="r", tool_name=name, tool_result="r",
                tool_error=error, error_kind=kind, tool_latency_s=latency,
                delta_entropy=dh)  # type: ignore[arg-type]  # fmt: skip


def _three(store: Store) -> list[Trajectory]:
    """v1 scored 1.0 with a reducing calculator call and a failed search; v1 scored 0.0 with a
    timed-out calculator call; v2 unscored without calls."""
    trajs = [
        Trajectory(task="a", prompt_token_ids=[9], score=1.0, turns=[
            _assistant(1), _tool("calculator", -0.5, 0.1),
            _tool("search", 0.2, 0.3, "unknown_tool"),
        ]),
        Trajectory(task="b", prompt_token_ids=[9], score=0.0, turns=[
            _assistant(1), _tool("calculator", None, 0.2, "timeout"),
        ]),
        Trajectory(task="c", prompt_token_ids=[9], group_id="g", turns=[_assistant(2)]),
    ]  # fmt: skip
    store.add_many(trajs)
    return trajs


def test_version_and_tool_aggregates_match_the_hand_computed_table(store: Store) -> None:
    first, _, _ = _three(store)
    store.record_reward(first.id, 0.25)
    v1, v2 = store.version_stats()
    assert v1 == VersionStats(version=1, runs=2, score=pytest.approx(0.5), scored=2,
                              reward=pytest.approx(0.25), calls=pytest.approx(1.5),
                              reducing_share=pytest.approx(1 / 3))  # fmt: skip
    assert v2 == VersionStats(version=2, runs=1, score=None, scored=0, reward=None,
                              calls=pytest.approx(0.0), reducing_share=None)  # fmt: skip
    calc, search = store.tool_stats()
    assert calc == ToolStats(name="calculator", calls=2, mean_delta_entropy=pytest.approx(-0.5),
                             known=1, reducing_share=pytest.approx(1.0),
                             mean_latency_s=pytest.approx(0.15), errors={"timeout": 1})  # fmt: skip
    assert search == ToolStats(name="search", calls=1, mean_delta_entropy=pytest.approx(0.2),
                               known=1, reducing_share=pytest.approx(0.0),
                               mean_latency_s=pytest.approx(0.3),
                               errors={"unknown_tool": 1})  # fmt: skip


def test_the_report_stamp_moves_with_every_change_it_shows(store: Store) -> None:
    seen = {store.report_stamp()}
    first, _, third = _three(store)
    for change in (
        lambda: store.record_feedback(third.id, 0.5),
        lambda: store.record_reward(first.id, 0.1),
        lambda: store.record_train_step(1, {}, cursor_seq=2, policy_version=1),
        lambda: store.ensure_base_policy("/m/base", "full"),
        lambda: store.register_policy("/c/1", kind="full", parent=0, metrics={}),
    ):
        change()
        stamp = store.report_stamp()
        assert stamp not in seen
        seen.add(stamp)


def test_filters_select_the_same_rows_for_list_and_count(store: Store) -> None:
    first, second, third = _three(store)
    cases = {
        "policy_version": (1, {first.id, second.id}),
        "tool": ("search", {first.id}),
        "min_score": (0.5, {first.id}),
        "max_score": (0.5, {second.id}),
        "group_id": ("g", {third.id}),
        "trajectory_id": (second.id, {second.id}),
        "since_seq": (1, {second.id, third.id}),
    }
    for name, (value, want) in cases.items():
        assert {s.id for s in store.list(**{name: value})} == want, name
        assert store.count(**{name: value}) == len(want), name
    assert store.count() == 3
    newest = store.list(policy_version=1, newest_first=True, limit=1)
    assert [s.id for s in newest] == [second.id]
    assert store.existing_ids([first.id, "nope", third.id]) == {first.id, third.id}
    assert store.newest_sampled_version() == 2
    assert store.count_scored_since(0) == 2
    store.record_feedback(third.id, 1.0)
    assert store.count_scored_since(2) == 1


def test_an_empty_store_has_no_sampled_version_and_no_aggregates(store: Store) -> None:
    assert store.newest_sampled_version() is None
    assert store.version_stats() == [] and store.tool_stats() == []
    assert store.existing_ids([]) == set()


def _item(i: int) -> EvaluationItemRecord:
    return EvaluationItemRecord(task_id=f"t{i}", sample=0, suite="math", needs_tool=i == 1,
                                score=float(i % 2), answer=None if i else "4", status="ok",
                                tool_calls=i, calls=[{"tool": "calculator", "ok": True}] * i,
                                policy_version=3, entropy_kind="exact")  # fmt: skip


def test_an_evaluation_comes_back_with_its_items_in_stored_order(store: Store) -> None:
    record = EvaluationRecord(policy_version=3, label="gate", suite="all", seed=7, n=2,
                              samples=1, temperature=0.0, entropy_kind="exact",
                              config={"key": "k", "nested": [1, 2]},
                              summary={"accuracy": {"estimate": 0.5}})  # fmt: skip
    items = [
        EvaluationItemRecord(
            task_id=f"t{i}",
            sample=0,
            suite="math",
            needs_tool=i == 1,
            score=float(i % 2),
            answer=None if i else "4",
            status="ok",
            tool_calls=i,
            calls=[{"tool": "calculator", "ok": True}] * i,
            policy_version=3,
            entropy_kind="exact",
        )
        for i in (2, 0, 1)
    ]
    first = store.save_evaluation(record, items)
    other = store.save_evaluation(EvaluationRecord(None, None, "math", 1, 1, 2, 1.0, None), [])
    assert first != other
    found = store.evaluation(first)
    assert found is not None
    back, back_items = found
    assert back.id == first and back.created_at > 0
    assert (back.config, back.summary, back.label) == (record.config, record.summary, "gate")
    assert back_items == items
    assert store.evaluation(first + other + 100) is None
    assert [e.id for e in store.evaluations()] == [first, other]
    assert [e.id for e in store.evaluations(policy_version=3)] == [first]
    assert list(back.to_dict())[:3] == ["id", "policy_version", "label"]


def test_served_responses_map_to_trajectories_per_owner(store: Store) -> None:
    meta = {"started": 1.5, "ended": 2.5, "response_ids": ["r1", "r2"]}
    a = Trajectory(task="a", prompt_token_ids=[1], metadata=meta, turns=[_assistant(4)])
    b = Trajectory(task="b", prompt_token_ids=[1], turns=[_assistant(4)])
    store.add_many([a, b])
    store.record_served([
        ServedResponse("r1", a.id, "s1", "alice", 1.0),
        ServedResponse("r2", a.id, "s1", "alice", 1.0),
        ServedResponse("r3", b.id, "s1", "bob", 1.0),
    ])  # fmt: skip
    store.record_served([ServedResponse("r1", a.id, "s1", "alice", 2.0)])  # replaced, not doubled
    assert store.served_trajectory_ids(response_id="r1") == {a.id}
    assert store.served_trajectory_ids(session_id="s1") == {a.id, b.id}
    assert store.served_trajectory_ids(session_id="s1", owner="bob") == {b.id}
    assert store.served_trajectory_ids(trajectory_id=a.id, owner="bob") == set()
    assert store.served_trajectory_ids(response_id="nope") == set()
    with pytest.raises(ConfigError, match="exactly one"):
        store.served_trajectory_ids(response_id="r1", session_id="s1")
    with pytest.raises(ConfigError, match="exactly one"):
        store.served_trajectory_ids(owner="bob")
    mine = store.session_trajectories("s1", "alice")
    assert mine == [SessionTrajectory(id=a.id, status="ok", score=None, policy_version=4,
                                      num_turns=1, num_tool_calls=0, started=1.5, ended=2.5,
                                      response_ids=["r1", "r2"])]  # fmt: skip
    both = store.session_trajectories("s1")
    assert [t.id for t in both] == [a.id, b.id]  # write order
    assert (both[1].started, both[1].response_ids) == (None, [])
    assert store.session_trajectories("s2") == []
