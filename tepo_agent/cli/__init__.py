"""The ``tepo-agent`` command line: a thin layer over the library.

Each sub-command lives in its own module of this package, which defines
``register(subparsers) -> None``; the parser it adds sets ``func=`` to a ``(args) -> int``
function that builds library objects and calls one method. Add a new module's name to
``_COMMANDS`` to expose it.

Building the parser imports every command module, so a command module imports only the standard
library at its top and imports the library (torch, the store, the trainer...) inside its
handler: ``tepo-agent --help`` and the store-only commands then never load torch, and serving
commands never load the trainer (tests/test_cli_imports.py runs each command in a fresh
interpreter and checks ``sys.modules``).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

_COMMANDS: tuple[str, ...] = (
    "demo",
    "generate",
    "bootstrap",
    "run",
    "feedback",
    "trajectories",
    "tool",
    "index",
    "serve",
    "init_model",
    "vllm",
    "train",
    "rollback",
    "check_logprobs",
    "report",
    "dashboard",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tepo-agent",
        description="Agent runtime with live token entropy and TEPO online learning.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in _COMMANDS:
        importlib.import_module(f"tepo_agent.cli.{name}").register(subparsers)
    return parser


def _quiet_library_progress_bars() -> None:
    """transformers draws a bar for every weight load and save; commands draw their own.

    Through huggingface_hub's switch, which transformers' bars follow from its first import:
    calling ``transformers.utils.logging.disable_progress_bar()`` here would import transformers
    (a second or more) for commands that never use it. An explicit setting is kept.
    """
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _quiet_library_progress_bars()
    from tepo_agent.errors import TepoError  # after parsing: `--help` answers without it

    try:
        return int(args.func(args) or 0)
    except TepoError as exc:
        print(f"tepo-agent {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"tepo-agent {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
