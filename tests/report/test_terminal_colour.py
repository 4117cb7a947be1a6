"""`trajectories show` colours each token by entropy on a real terminal (a pty), and only there."""

from __future__ import annotations

import os
import pty
import sys
import threading
from pathlib import Path

import pytest
from _report_stores import write_store

from tepo_agent.cli import main
from tepo_agent.report.colour import entropy_colour, scale_max
from tepo_agent.report.terminal import colour_wanted, coloured
from tepo_agent.store import TrajectoryStore


def show(db: Path, tid: str, *extra: str, tty: bool, capsys: pytest.CaptureFixture) -> str:
    """`tepo-agent trajectories show` in this process, its stdout a pty or captured (not a TTY)."""
    argv = ["trajectories", "show", tid, "--db", str(db), *extra]
    if not tty:
        capsys.readouterr()
        assert main(argv) == 0
        return capsys.readouterr().out
    leader, follower = pty.openpty()
    chunks: list[bytes] = []

    def drain() -> None:  # a pty holds only a few KiB: read while the command writes
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:
                return
            if not chunk:
                return
            chunks.append(chunk)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    with capsys.disabled(), os.fdopen(follower, "w", encoding="utf-8") as terminal:
        saved, sys.stdout = sys.stdout, terminal
        try:
            assert main(argv) == 0
        finally:
            sys.stdout = saved
    reader.join(timeout=10)
    os.close(leader)
    return b"".join(chunks).decode()


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory, default_model_dir: Path):
    db = tmp_path_factory.mktemp("term") / "t.db"
    ids = write_store(db, default_model_dir)
    with TrajectoryStore(db, create=False) as store:
        return db, store.get(ids[0])


def test_show_on_a_terminal_colours_every_token_by_its_entropy(stored, capsys, monkeypatch):
    monkeypatch.delenv("NO_COLOR", raising=False)
    db, traj = stored
    out = show(db, traj.id, tty=True, capsys=capsys)
    top = scale_max(h for t in traj.assistant_turns() for h in t.entropies)
    for turn in traj.assistant_turns():
        for h in turn.entropies:
            r, g, b = entropy_colour(h, top)
            assert f"48;2;{r};{g};{b}" in out  # a truecolor background per token
    assert "token entropy:" in out


def test_show_is_plain_through_a_pipe_and_with_no_color(stored, capsys, monkeypatch):
    monkeypatch.delenv("NO_COLOR", raising=False)
    db, traj = stored
    piped = show(db, traj.id, tty=False, capsys=capsys)
    assert "\x1b[" not in piped and traj.turns[0].text.splitlines()[0] in piped
    assert "\x1b[" not in show(db, traj.id, "--no-color", tty=True, capsys=capsys)


def test_colour_wanted_only_on_a_tty_without_no_color(monkeypatch, tmp_path) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    with open(tmp_path / "f", "w") as not_a_tty:
        assert not colour_wanted(False, not_a_tty)
    assert "48;2;215;48;31" in coloured(["a", "b"], [0.0, 9.0], 1.0)
    leader, follower = pty.openpty()
    with os.fdopen(follower, "w") as tty:
        assert colour_wanted(False, tty)
        assert not colour_wanted(True, tty)
        monkeypatch.setenv("NO_COLOR", "1")
        assert not colour_wanted(False, tty)
    os.close(leader)


def test_run_prints_each_assistant_turn_coloured_with_a_legend(
    stored, capsys, default_model_dir, monkeypatch
):
    monkeypatch.delenv("NO_COLOR", raising=False)  # rich honours it too
    # what `tepo-agent run` prints on a terminal before the tool calls and the answer
    from transformers import AutoTokenizer

    from tepo_agent.report.terminal import TokenDecoder, print_coloured_turns

    _, traj = stored
    print_coloured_turns(traj, TokenDecoder(AutoTokenizer.from_pretrained(str(default_model_dir))))
    lines = capsys.readouterr().out.splitlines()
    top = scale_max(h for t in traj.assistant_turns() for h in t.entropies)
    assert lines[-1].count("48;2;") == 5 and "nats" in lines[-1]  # the legend
    r, g, b = entropy_colour(traj.turns[0].entropies[0], top)
    assert lines[0].startswith("\x1b[") and f"48;2;{r};{g};{b}" in lines[0]
