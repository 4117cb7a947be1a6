"""Atomic directory publication on a real filesystem: all or nothing, lost races, no leftovers."""

from __future__ import annotations

from pathlib import Path

import pytest

from tepo_agent.atomic import publish_directory, write_text_atomic


def _write(name: str, text: str):
    def fill(out: Path) -> None:
        assert out.is_dir() and not any(out.iterdir())
        (out / name).write_text(text)

    return fill


def test_a_published_directory_appears_complete_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "deep" / "model"
    assert publish_directory(target, _write("config.json", "{}")) == target
    assert (target / "config.json").read_text() == "{}"
    assert sorted(p.name for p in target.parent.iterdir()) == ["model"]


def test_a_failing_fill_publishes_nothing(tmp_path: Path) -> None:
    def fill(out: Path) -> None:
        (out / "half").write_text("x")
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError, match="interrupted"):
        publish_directory(tmp_path / "model", fill)
    assert list(tmp_path.iterdir()) == []


def test_a_lost_race_keeps_the_winner_and_discards_this_copy(tmp_path: Path) -> None:
    target = tmp_path / "model"
    target.mkdir()
    (target / "config.json").write_text("winner")
    done = publish_directory(
        target, _write("config.json", "loser"), is_complete=lambda d: (d / "config.json").exists()
    )
    assert (done / "config.json").read_text() == "winner"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_an_existing_unfinished_target_is_an_error_not_a_race(tmp_path: Path) -> None:
    target = tmp_path / "model"
    target.mkdir()
    (target / "junk").write_text("x")
    with pytest.raises(OSError):
        publish_directory(target, _write("config.json", "{}"))
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_write_text_atomic_replaces_the_whole_file(tmp_path: Path) -> None:
    path = tmp_path / "LATEST"
    write_text_atomic(path, "v-1")
    write_text_atomic(path, "v-2")
    assert path.read_text() == "v-2"
    assert [p.name for p in tmp_path.iterdir()] == ["LATEST"]
