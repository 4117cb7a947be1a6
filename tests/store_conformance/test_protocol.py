"""Every store backend implements the whole Store protocol with its exact signatures, and no code
outside tepo_agent/store reaches into a database."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from tepo_agent.errors import StoreError
from tepo_agent.store import Store, TrajectoryStore, open_store, redact, sqlite_path
from tepo_agent.store import protocol as protocol_module

ROOT = Path(__file__).resolve().parents[2]


def _members() -> dict[str, object]:
    """Every operation and property the protocol declares (its bases' included)."""
    members: dict[str, object] = {}
    for cls in reversed(Store.__mro__):
        if cls.__module__ == protocol_module.__name__:
            members.update({k: v for k, v in vars(cls).items() if not k.startswith("_")})
    return members


OPERATIONS = {
    # lifecycle
    "location", "schema_version", "close",
    # trajectories, scores, the trainer's cursor
    "add", "add_many", "get", "resolve_id", "existing_ids", "list", "count",
    "newest_sampled_version", "record_feedback", "feedback", "record_reward", "scored_since",
    "count_scored_since", "record_train_step", "train_steps", "export_jsonl",
    # the policy registry
    "live_policy", "policy", "policies", "policy_events", "ensure_base_policy",
    "register_policy", "promote_policy", "rollback_policy", "reject_policy",
    # evaluations, served responses, the report
    "save_evaluation", "evaluation", "evaluations",
    "record_served", "served_trajectory_ids", "session_trajectories",
    "report_stamp", "version_stats", "tool_stats",
}  # fmt: skip


def test_the_protocol_declares_exactly_the_listed_operations() -> None:
    """A new operation is a change to every backend: add it here and to INTERFACES/docs."""
    assert set(_members()) == OPERATIONS


def test_the_store_implements_every_operation_with_the_protocols_signature(store: Store) -> None:
    assert isinstance(store, Store)
    impl = type(store)
    for name, declared in _members().items():
        got = inspect.getattr_static(impl, name, None)
        assert got is not None, f"{impl.__name__} lacks {name}"
        if isinstance(declared, property):
            assert isinstance(got, property), name
            continue
        want = inspect.signature(declared)  # type: ignore[arg-type]
        have = inspect.signature(got)  # type: ignore[arg-type]
        shape = [(p.name, p.kind, p.default) for p in want.parameters.values()]
        assert [(p.name, p.kind, p.default) for p in have.parameters.values()] == shape, name


def test_urls_select_the_backend_and_passwords_never_show(tmp_path: Path) -> None:
    assert sqlite_path(str(tmp_path / "a.db")) == tmp_path / "a.db"
    assert sqlite_path(f"sqlite:///{tmp_path}/a.db") == tmp_path / "a.db"
    assert sqlite_path("sqlite:///rel/a.db") == Path("rel/a.db")
    assert sqlite_path("postgresql://u:pw@h/db") is None
    for bad in ("sqlite://host/a.db", "sqlite:///", "mysql://h/db"):
        with pytest.raises(StoreError):
            sqlite_path(bad)
    with open_store(f"sqlite:///{tmp_path}/b.db") as store:
        assert isinstance(store, TrajectoryStore) and store.location == str(tmp_path / "b.db")
    assert redact("postgresql://u:secret@h:5432/db") == "postgresql://u:***@h:5432/db"
    assert redact("postgresql://h/db") == "postgresql://h/db"


def test_a_read_only_store_refuses_writes_and_never_creates(tmp_path: Path) -> None:
    """SQLite-only: the file is opened mode=ro and left as it was."""
    path = tmp_path / "ro.db"
    with pytest.raises(StoreError, match="no trajectory database"):
        open_store(path, read_only=True)
    assert not path.exists()
    open_store(path).close()
    before = path.read_bytes()
    with open_store(path, read_only=True) as store:
        assert store.count() == 0 and store.policies() == []
        with pytest.raises(StoreError, match="read-only"):
            store.ensure_base_policy("/m", "full")
    assert path.read_bytes() == before


_SQL = re.compile(
    r"import sqlite3|sqlite_utils|\.read\(\s*f?\"(SELECT|WITH)|\.write\(\s*lambda|\.db\.conn"
)
_ALLOWED = ("tepo_agent/store/", "tepo_agent/_sqlite.py", "tepo_agent/tasks/", "tools/")


def test_no_code_outside_the_store_package_reaches_into_a_database() -> None:
    """The search index (tasks/, tools/) is its own SQLite file, not the trajectory store."""
    offenders = []
    for folder in ("tepo_agent", "trainer"):
        for path in (ROOT / folder).rglob("*.py"):
            rel = path.relative_to(ROOT).as_posix()
            if rel.startswith(_ALLOWED):
                continue
            for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if _SQL.search(line):
                    offenders.append(f"{rel}:{n}: {line.strip()}")
    assert offenders == []
