"""PolicyRegistry on every store backend (``store_url``): the candidate -> live -> retired
lifecycle, rejection, rollback, history, and atomicity under concurrent connections."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from tepo_agent.errors import ConfigError, PublishError, StoreError
from tepo_agent.policy.registry import PolicyRegistry
from tepo_agent.store import open_store


@pytest.fixture
def registry(store_url: str):
    with PolicyRegistry(store_url) as reg:
        yield reg


def statuses(reg: PolicyRegistry) -> dict[int, str]:
    return {p.version: p.status for p in reg.list()}


def test_base_model_is_version_zero_and_live(registry: PolicyRegistry) -> None:
    base = registry.ensure_base("/models/base")
    assert (base.version, base.status, base.parent, base.kind) == (0, "live", None, "full")
    assert registry.ensure_base("/models/base") == base  # idempotent
    assert registry.live() == base
    with pytest.raises(PublishError, match="already the base model"):
        registry.ensure_base("/models/other")


def test_register_adds_numbered_candidates_with_metrics(registry: PolicyRegistry) -> None:
    registry.ensure_base("/m/base")
    v1 = registry.register("/ckpt/1", kind="lora", parent=0, metrics={"acc": 0.5})
    v2 = registry.register("/ckpt/2", kind="full", parent=v1)
    assert (v1, v2) == (1, 2)
    record = registry.get(v1)
    assert (record.status, record.kind, record.parent, record.metrics) == (
        "candidate",
        "lora",
        0,
        {"acc": 0.5},
    )
    assert registry.live().version == 0  # registering never changes what serves


def test_register_without_a_base_starts_at_one_and_nothing_is_live(
    registry: PolicyRegistry,
) -> None:
    assert registry.register("/ckpt/a", kind="full", parent=None) == 1
    assert registry.live() is None


def test_register_refuses_unknown_parent_and_kind(registry: PolicyRegistry) -> None:
    with pytest.raises(PublishError, match="parent version 9"):
        registry.register("/x", kind="full", parent=9)
    with pytest.raises(ConfigError, match="kind"):
        registry.register("/x", kind="delta", parent=None)  # type: ignore[arg-type]
    with pytest.raises(StoreError, match="JSON"):
        registry.register("/x", kind="full", parent=None, metrics={"acc": float("nan")})
    assert registry.list() == []


def test_promote_makes_live_and_retires_the_previous(registry: PolicyRegistry) -> None:
    registry.ensure_base("/m/base")
    v1 = registry.register("/ckpt/1", kind="full", parent=0)
    assert registry.promote(v1).status == "live"
    assert statuses(registry) == {0: "retired", 1: "live"}
    v2 = registry.register("/ckpt/2", kind="full", parent=v1)
    registry.promote(v2)
    assert statuses(registry) == {0: "retired", 1: "retired", 2: "live"}
    assert registry.promote(v2).status == "live"  # already live: no change


def test_reject_keeps_the_reason_and_blocks_promotion(registry: PolicyRegistry) -> None:
    registry.ensure_base("/m/base")
    v1 = registry.register("/ckpt/1", kind="full", parent=0)
    rejected = registry.reject(v1, "held-out accuracy 0.31 < live 0.40")
    assert (rejected.status, rejected.reason) == ("rejected", "held-out accuracy 0.31 < live 0.40")
    with pytest.raises(PublishError, match="it is rejected"):
        registry.promote(v1)
    with pytest.raises(PublishError, match="only candidates"):
        registry.reject(0, "no")
    assert registry.live().version == 0


def test_rollback_restores_an_earlier_version(registry: PolicyRegistry) -> None:
    registry.ensure_base("/m/base")
    v1 = registry.register("/ckpt/1", kind="full", parent=0)
    registry.promote(v1)
    v2 = registry.register("/ckpt/2", kind="full", parent=v1)
    registry.promote(v2)
    assert registry.rollback(v1).status == "live"
    assert statuses(registry) == {0: "retired", 1: "live", 2: "retired"}
    v3 = registry.register("/ckpt/3", kind="full", parent=v1)
    with pytest.raises(PublishError, match="expected retired"):
        registry.rollback(v3)  # a candidate must pass its gate and be promoted
    with pytest.raises(PublishError, match="not registered"):
        registry.rollback(42)


def test_base_registered_after_a_promotion_is_retired(registry: PolicyRegistry) -> None:
    v1 = registry.register("/ckpt/1", kind="full", parent=None)
    registry.promote(v1)
    assert registry.ensure_base("/m/base").status == "retired"
    assert registry.live().version == v1


def test_the_database_itself_allows_one_live_version(tmp_path: Path) -> None:
    """SQLite-only: a raw connection to the file (each backend checks its own index)."""
    registry = PolicyRegistry(tmp_path / "r.db")
    registry.ensure_base("/m/base")
    registry.register("/ckpt/1", kind="full", parent=0)
    registry.close()
    conn = sqlite3.connect(tmp_path / "r.db")
    with pytest.raises(sqlite3.IntegrityError):
        conn.execute("UPDATE policies SET status = 'live' WHERE version = 1")
    conn.close()


def test_a_second_process_view_sees_promotions(store_url: str) -> None:
    path = store_url
    with PolicyRegistry(path) as trainer, PolicyRegistry(path) as server:
        trainer.ensure_base("/m/base")
        assert server.live().version == 0
        trainer.promote(trainer.register("/ckpt/1", kind="lora", parent=0))
        assert server.live().path == "/ckpt/1"


def test_a_registry_over_a_shared_store_leaves_it_open(store_url: str) -> None:
    with open_store(store_url) as store:
        with PolicyRegistry(store) as reg:
            reg.ensure_base("/m/base")
        assert store.count() == 0  # still usable


def test_concurrent_registration_and_promotion_stay_atomic(store_url: str) -> None:
    path = store_url
    with PolicyRegistry(path) as reg:
        reg.ensure_base("/m/base")
    versions: list[int] = []
    errors: list[BaseException] = []
    live_seen: list[int | None] = []
    stop = threading.Event()

    def trainer(worker: int) -> None:
        try:
            with PolicyRegistry(path) as own:  # its own connection, like another process
                for i in range(10):
                    v = own.register(f"/ckpt/{worker}-{i}", kind="full", parent=0)
                    versions.append(v)
                    own.promote(v)
        except BaseException as exc:
            errors.append(exc)

    def server() -> None:
        with PolicyRegistry(path) as own:
            while not stop.is_set():
                live = own.live()
                live_seen.append(None if live is None else live.version)

    watcher = threading.Thread(target=server)
    watcher.start()
    workers = [threading.Thread(target=trainer, args=(w,)) for w in range(4)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    stop.set()
    watcher.join()
    assert errors == []
    assert sorted(versions) == list(range(1, 41))
    assert None not in live_seen  # a promotion never leaves a moment with nothing live
    with PolicyRegistry(path) as reg:
        assert sum(p.status == "live" for p in reg.list()) == 1
        assert sum(p.status == "retired" for p in reg.list()) == 40


def test_every_status_change_is_recorded_as_an_event_in_order(registry: PolicyRegistry) -> None:
    registry.ensure_base("/m/base")
    gate = {"accuracy": 0.75, "key": "k"}
    v1 = registry.register("/ckpt/1", kind="lora", parent=0, metrics={"gate": gate})
    registry.promote(v1)
    v2 = registry.register("/ckpt/2", kind="lora", parent=v1)
    registry.reject(v2, "accuracy fell")
    registry.rollback(0)
    got = [(e.version, e.event) for e in registry.events()]
    assert got == [
        (0, "registered"), (0, "promoted"),
        (1, "registered"), (1, "gated"), (0, "retired"), (1, "promoted"),
        (2, "registered"), (2, "rejected"),
        (1, "retired"), (0, "rolled_back"),
    ]  # fmt: skip
    (gated,) = [e for e in registry.events(1) if e.event == "gated"]
    assert gated.detail["gate"] == gate
    assert registry.events(2)[-1].detail == {"reason": "accuracy fell"}
    assert registry.events(0)[-1].detail == {"replaced": 1}
    times = [e.created_at for e in registry.events()]
    assert times == sorted(times)
