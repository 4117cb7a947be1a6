"""``tepo-agent tool`` and ``tepo-agent index``, run as real subprocesses, and the tool set."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tepo_agent.cli import main
from tepo_agent.errors import ConfigError
from tepo_agent.tools import TOOL_NAMES, build_index, default_tools, make_tool

# Each subprocess imports the whole package (torch included): mark those tests slow.


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tepo_agent", *args], capture_output=True, text=True, timeout=120
    )


@pytest.mark.slow
def test_calculator_from_the_command_line() -> None:
    done = cli("tool", "calculator", '{"expression": "2 * (3 + 4)"}')
    assert done.returncode == 0, done.stderr
    assert done.stdout == "14\n"


@pytest.mark.slow
def test_tool_error_exits_1_with_the_message() -> None:
    done = cli("tool", "calculator", '{"expression": "1/0"}')
    assert done.returncode == 1
    assert "division by zero" in done.stderr and done.stdout == ""


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ("{nope", "ARGS is not valid JSON"),
        ("[1]", "ARGS must be a JSON object"),
        ('{"expr": "1"}', "invalid arguments for calculator"),
    ],
)
def test_bad_json_or_arguments_exit_1(
    capsys: pytest.CaptureFixture[str], args: str, message: str
) -> None:
    assert main(["tool", "calculator", args]) == 1
    assert message in capsys.readouterr().err


def test_python_tool_through_the_cli_entry_point(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["tool", "python", json.dumps({"code": "print(sum(range(101)))"})]) == 0
    assert capsys.readouterr().out == "5050\n"
    assert main(["tool", "python", json.dumps({"code": "raise SystemExit(3)"})]) == 1
    assert "exit status 3" in capsys.readouterr().err


@pytest.mark.slow
def test_index_then_search_from_the_command_line(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.jsonl"
    docs = [
        {"id": "1", "title": "Nile", "text": "The Nile is the longest river in Africa."},
        {"id": "2", "title": "Alps", "text": "The Alps are mountains in Europe."},
    ]
    corpus.write_text("".join(json.dumps(d) + "\n" for d in docs))
    db = tmp_path / "kb.db"
    done = cli("index", str(corpus), "--out", str(db))
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"indexed 2 documents into {db}\n"
    done = cli("tool", "search", '{"query": "longest river"}', "--search-db", str(db))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("1. Nile (id 1): ")


def test_search_without_an_index_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["tool", "search", '{"query": "river"}']) == 1
    assert "--search-db" in capsys.readouterr().err


def test_default_tools_include_search_only_with_an_index(tmp_path: Path) -> None:
    assert [tool.name for tool in default_tools()] == ["calculator", "python"]
    corpus = tmp_path / "c.jsonl"
    corpus.write_text('{"id": "a", "title": "A", "text": "alpha"}\n')
    build_index(corpus, tmp_path / "kb.db")
    names = [tool.name for tool in default_tools(search_db=tmp_path / "kb.db")]
    assert names == list(TOOL_NAMES)
    with pytest.raises(ConfigError, match="unknown tool 'shell'"):
        make_tool("shell")
