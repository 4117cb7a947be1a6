"""The command line's conventions: fast help, --version, defaults shown, --db errors, id prefixes,
``--out -``, quiet closed pipes, compact JSON, the policies view, malformed calls as written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tepo_agent import __version__
from tepo_agent.cli import COMMANDS, build_parser, main, plain_text
from tepo_agent.policy.registry import PolicyRegistry
from tepo_agent.store import TrajectoryStore
from tepo_agent.trajectory import Trajectory, Turn

MALFORMED = '<tool_call>\n{"name": calculator}\n</tool_call>'


def _trajectory(tid: str, text: str = "4", version: int | None = 0) -> Trajectory:
    turns = [Turn("assistant", [1, 2], text=text, logprobs=[-0.1, -0.2], entropies=[0.5, 0.4],
                  policy_version=version, finish_reason="stop", entropy_mean=0.45)]  # fmt: skip
    return Trajectory(task="What is 2+2?", prompt_token_ids=[5, 6], turns=turns, id=tid)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "cli.db"
    malformed = _trajectory("cafe" + "2" * 28, text=MALFORMED)
    malformed.turns.append(
        Turn("tool", [7], tool_call_id="invalid-1", tool_error="error: malformed tool call (x)")
    )
    with TrajectoryStore(path) as store:
        store.add_many([_trajectory("cafe" + "1" * 28), malformed, _trajectory("beef" + "0" * 28)])
        PolicyRegistry(store).ensure_base("/models/base")
    return path


def cli(*argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tepo_agent", *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


# -- fast and conventional -----------------------------------------------------------------------


def test_help_loads_no_heavy_library_and_answers_fast() -> None:
    code = (
        "import sys, time; t = time.perf_counter(); from tepo_agent.cli import main\n"
        "try: main(['--help'])\nexcept SystemExit: pass\n"
        "heavy = [m for m in ('torch', 'transformers', 'langgraph', 'langchain_core', 'pandas')"
        " if m in sys.modules]\nprint(heavy, time.perf_counter() - t, file=sys.stderr)"
    )
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    wall = time.perf_counter() - started
    heavy, _ = done.stderr.strip().rsplit(" ", 1)
    assert heavy == "[]", done.stderr
    assert all(name in done.stdout for name in COMMANDS)
    assert wall < 3.0  # generous: ~0.2 s on a quiet machine (benchmarks/RESULTS.md)


def test_store_only_commands_load_no_heavy_library(db: Path) -> None:
    code = (
        "import sys; from tepo_agent.cli import main\n"
        f"assert main(['feedback', 'beef', '0.5', '--db', {str(db)!r}]) == 0\n"
        "heavy = [m for m in ('torch', 'transformers', 'langgraph', 'langchain_core', 'pandas',"
        " 'numpy') if m in sys.modules]\nprint(heavy, file=sys.stderr)"
    )
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    wall = time.perf_counter() - started
    assert done.returncode == 0 and done.stderr.strip() == "[]", done.stderr
    assert wall < 3.0  # generous: ~0.4 s on a quiet machine (benchmarks/RESULTS.md)


def test_version_and_lazy_help_match_the_full_parser(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"tepo-agent {__version__}"
    # the one-line help of each command is written twice (COMMANDS and its module): same text
    full = build_parser().format_help()
    lazy = build_parser(load=()).format_help()
    assert full == lazy


def test_help_is_plain_text_and_shows_every_default() -> None:
    assert plain_text("see ``x`` and :class:`~a.b.C`::") == "see x and C:"
    for name in COMMANDS:
        parser = build_parser(load=(name,))
        sub = parser._subparsers._group_actions[0].choices[name]  # type: ignore[union-attr]
        text = sub.format_help()
        assert "``" not in text and ":class:" not in text, name
        for action in sub._actions:
            if action.option_strings and action.default not in (None, False, "==SUPPRESS=="):
                shown = sub._get_formatter()._format_action(action)
                assert "default" in shown, (name, action.dest, shown)


# -- --db ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["feedback", "abc", "1"],
        ["trajectories", "list"],
        ["rollback", "0"],
        ["policies"],
        ["train", "--steps", "1"],
        ["check-logprobs"],
    ],
)
def test_a_mistyped_db_is_an_error_and_never_a_new_file(
    db: Path, argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    typo = db.parent / "clii.db"
    assert main([*argv, "--db", str(typo)]) == 1
    err = capsys.readouterr().err
    assert f"no trajectory database at {typo}" in err and "--db" in err
    assert f"did you mean --db {db}" in err
    assert not typo.exists()


# -- ids and output ------------------------------------------------------------------------------


def test_unique_prefixes_are_accepted_and_ambiguous_ones_listed(
    db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["feedback", "beef", "1.0", "--db", str(db)]) == 0
    assert capsys.readouterr().out.startswith("beef" + "0" * 28 + ": score 1")
    assert main(["trajectories", "show", "CAFE1", "--db", str(db)]) == 0
    assert "id: cafe1111" in capsys.readouterr().out
    assert main(["trajectories", "show", "cafe", "--db", str(db)]) == 1
    err = capsys.readouterr().err
    assert "ambiguous" in err and "cafe1111" in err and "cafe2222" in err
    assert main(["feedback", "0123", "1.0", "--db", str(db)]) == 1
    assert "no trajectory with id '0123'" in capsys.readouterr().err


def test_show_json_is_one_compact_line(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["trajectories", "show", "beef", "--json", "--db", str(db)]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    assert json.loads(out)["turns"][0]["token_ids"] == [1, 2]


def test_malformed_calls_show_what_the_model_wrote(
    db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["trajectories", "show", "cafe2", "--db", str(db)]) == 0
    out = capsys.readouterr().out
    assert f"tool malformed call {MALFORMED!r}" in out
    assert "→ error: malformed tool call (x)" in out and "error: error:" not in out


def test_export_to_stdout_and_a_closed_pipe_ends_quietly(db: Path, tmp_path: Path) -> None:
    done = cli("trajectories", "export", "--out", "-", "--db", str(db))
    assert done.returncode == 0, done.stderr
    assert [json.loads(line)["seq"] for line in done.stdout.splitlines()] == [1, 2, 3]
    assert "exported 3 trajectories to stdout" in done.stderr
    assert not (tmp_path / "-").exists()
    with TrajectoryStore(db) as store:  # enough lines to overflow the pipe's buffer
        store.add_many([_trajectory(f"{i:032x}", text="x" * 2000) for i in range(200)])
    piped = subprocess.run(
        f"{sys.executable} -m tepo_agent trajectories export --out /dev/stdout --db {db} | head -1",
        shell=True, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert json.loads(piped.stdout)["seq"] == 1
    assert "Traceback" not in piped.stderr and "BrokenPipe" not in piped.stderr, piped.stderr


def test_policies_view_counts_trajectories_per_version(
    db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with TrajectoryStore(db) as store:
        store.add(_trajectory("f" * 32, version=None))
    assert main(["policies", "--db", str(db)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split()[:3] == ["0", "-", "live"] and "/models/base" in lines[1]
    assert lines[1].split()[-2] == "3"
    assert "sampled by models outside the registry" in lines[2]
    assert main(["policies", "--db", str(db), "--json"]) == 0
    rows = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert rows[0]["trajectories"] == 3 and rows[1] == {
        "version": None,
        "status": "unregistered",
        "trajectories": 1,
    }


@pytest.mark.parametrize(
    ("line", "expected", "absent"),
    [
        ("tepo-agent tra", {"trajectories", "train"}, {"run"}),
        ("tepo-agent run --max-", {"--max-tool-calls", "--max-new-tokens"}, {"--watch"}),
    ],
)
def test_shell_completion_names_commands_and_options(
    line: str, expected: set[str], absent: set[str], tmp_path: Path
) -> None:
    pytest.importorskip("argcomplete")
    out = tmp_path / "completions"
    env = {**os.environ, "_ARGCOMPLETE": "1", "COMP_LINE": line, "COMP_POINT": str(len(line))}
    # argcomplete answers on file descriptor 8, as the shell hook sets it up
    done = subprocess.run(
        f'{sys.executable} -m tepo_agent 8>"{out}" 9>/dev/null',
        shell=True, env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    offered = set(out.read_text().replace("\x0b", " ").split())
    assert expected <= offered and not (absent & offered), offered


def test_bootstrap_with_other_settings_needs_its_own_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # the cache holds THE default model: --steps or --seed without --out would silently return
    # (or overwrite) it; it is an error naming the option instead, and nothing is built
    monkeypatch.setenv("TEPO_AGENT_HOME", str(tmp_path / "home"))
    assert main(["bootstrap", "--steps", "5"]) == 1
    assert main(["bootstrap", "--seed", "3"]) == 1
    assert main(["bootstrap", "--init-from", str(tmp_path)]) == 1
    assert main(["bootstrap", "--after-tool-weight", "2"]) == 1
    err = capsys.readouterr().err
    assert err.count("--out DIR") == 4
    assert not (tmp_path / "home").exists()


def test_bootstrap_flags_make_the_recipe_they_name() -> None:
    from tepo_agent.cli import build_parser
    from tepo_agent.cli.bootstrap import CONTINUATION, config_from_args

    parse = build_parser().parse_args
    cont = config_from_args(parse(["bootstrap", "--init-from", "prev", "--out", "x"]))
    assert cont.init_from == "prev"
    assert (cont.sft.steps, cont.sft.first_turn_steps, cont.sft.lr) == (
        CONTINUATION["steps"],
        0,
        CONTINUATION["lr"],
    )
    assert cont.select_from == cont.select_every == 200
    args = ["bootstrap", "--init-from", "p", "--steps", "600", "--after-tool-weight", "3"]
    tuned = config_from_args(parse([*args, "--math-items", "32", "--lr", "5e-4", "--out", "x"]))
    assert (tuned.sft.steps, tuned.sft.after_tool_weight, tuned.sft.lr) == (600, 3.0, 5e-4)
    assert tuned.math_items == 32
    scratch = config_from_args(parse(["bootstrap", "--out", "x"]))
    assert scratch.init_from is None and scratch.sft.first_turn_steps == 2200
