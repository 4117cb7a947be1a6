"""``tepo-agent tool NAME 'JSON-ARGS' [--search-db PATH]``: run one tool and print its result.

Runs one built-in tool with its arguments as a JSON object and prints the result; a tool error
goes to stderr with exit status 1. Example:

    tepo-agent tool calculator '{"expression": "2*(3+4)"}'
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from tepo_agent.errors import ConfigError


def _arguments_help() -> str:
    """Each tool's arguments: name, type, required or default, description."""
    from tepo_agent.tools.catalog import argument_schemas

    lines = ["tools and their arguments (JSON-ARGS keys):"]
    for name, schema in argument_schemas().items():
        lines.append(f"  {name}")
        for field, info in schema.model_fields.items():
            kind = getattr(info.annotation, "__name__", str(info.annotation))
            need = "required" if info.is_required() else f"default {info.default!r}"
            lines.append(f"    {field} ({kind}, {need}): {info.description or ''}".rstrip())
    lines.append("  search also needs --search-db (an index built by `tepo-agent index`).")
    return "\n".join(lines)


def register(subparsers: Any) -> None:
    from tepo_agent.tools.catalog import TOOL_NAMES

    parser = subparsers.add_parser(
        "tool",
        help="run one tool directly and print its result",
        description=__doc__,
        epilog=_arguments_help(),
    )
    parser.add_argument("name", choices=TOOL_NAMES, help="the tool to run")
    parser.add_argument("args", metavar="JSON-ARGS", help="the tool's arguments as a JSON object")
    parser.add_argument("--search-db", help="index built by `tepo-agent index` (search tool)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from tepo_agent.errors import argument_errors
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
        raise ConfigError(
            f"invalid arguments for {args.name}: {argument_errors(exc)} "
            f"(`tepo-agent tool --help` lists them)"
        ) from None
    if message.status == "error":
        print(f"tepo-agent tool: {args.name} failed: {message.text}", file=sys.stderr)
        return 1
    print(message.text)
    return 0
