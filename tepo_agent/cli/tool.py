"""``tepo-agent tool NAME 'JSON-ARGS' [--search-db PATH]``: run one tool and print its result."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from tepo_agent.tools.catalog import TOOL_NAMES


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "tool",
        help="run one tool directly and print its result",
        description="Run one built-in tool with JSON arguments, e.g. "
        """tepo-agent tool calculator '{"expression": "2*(3+4)"}'. Exit status 1 on error.""",
    )
    parser.add_argument("name", choices=TOOL_NAMES, help="the tool to run")
    parser.add_argument("args", help="the tool's arguments as a JSON object")
    parser.add_argument("--search-db", help="index built by `tepo-agent index` (search tool)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from tepo_agent.errors import ConfigError
    from tepo_agent.tools.catalog import make_tool

    try:
        tool_args = json.loads(args.args)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"ARGS is not valid JSON ({exc.msg}): {args.args!r}") from None
    if not isinstance(tool_args, dict):
        raise ConfigError('ARGS must be a JSON object, e.g. \'{"expression": "1+1"}\'')
    tool = make_tool(args.name, search_db=args.search_db)
    try:
        # As a tool call, so a tool failure comes back as an error ToolMessage (its
        # handle_tool_error) that we can tell apart from a result.
        message = tool.invoke(
            {"type": "tool_call", "id": "cli", "name": tool.name, "args": tool_args}
        )
    except ValidationError as exc:
        raise ConfigError(f"invalid arguments for {args.name}: {exc}") from None
    if message.status == "error":
        print(f"tepo-agent tool: {args.name} failed: {message.text}", file=sys.stderr)
        return 1
    print(message.text)
    return 0
