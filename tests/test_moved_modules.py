"""Module paths that moved in the re-layout keep working for one release, with a warning."""

from __future__ import annotations

import importlib
import importlib.util
import sys
import warnings
from pathlib import Path

import pytest

import tepo_agent
from tepo_agent._moved import MOVED


@pytest.mark.parametrize("old", sorted(MOVED))
def test_old_path_is_the_new_module_and_warns(old: str, monkeypatch: pytest.MonkeyPatch) -> None:
    new = importlib.import_module(MOVED[old])
    monkeypatch.delitem(sys.modules, old, raising=False)  # a fresh import, as in a new process
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = importlib.import_module(old)
    assert got is new
    messages = [str(w.message) for w in caught if issubclass(w.category, DeprecationWarning)]
    assert any(old in m and MOVED[old] in m for m in messages), messages


def test_no_file_remains_at_an_old_path() -> None:
    for old, new in MOVED.items():
        assert importlib.util.find_spec(new).origin.endswith(".py"), new
        parent, _, leaf = old.rpartition(".")
        spec_dirs = importlib.import_module(parent).__path__
        assert not any((Path(d) / f"{leaf}.py").exists() for d in spec_dirs)


def test_agent_package_keeps_the_old_agent_module_names() -> None:
    from tepo_agent.agent import AgentConfig, AgentResult, TepoAgent

    assert TepoAgent is tepo_agent.TepoAgent
    assert AgentConfig is tepo_agent.AgentConfig
    assert AgentResult is tepo_agent.AgentResult
    with pytest.raises(AttributeError):
        _ = tepo_agent.agent.NoSuchName  # type: ignore[attr-defined]
