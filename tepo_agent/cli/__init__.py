"""The ``tepo-agent`` command line: a thin layer over the library.

Each sub-command lives in its own module of this package, which defines
``register(subparsers) -> None``; the parser it adds sets ``func=`` to a ``(args) -> int``
function that builds library objects and calls one method. Add a new module's name to
``_COMMANDS`` to expose it.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from tepo_agent.errors import TepoError

_COMMANDS: tuple[str, ...] = (
    "demo",
    "evaluate",
    "compare",
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
    """transformers draws a bar for every weight load and save; commands draw their own."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _quiet_library_progress_bars()
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
