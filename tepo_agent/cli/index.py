"""``tepo-agent index CORPUS.jsonl --out DB``: build the FTS5 search index of a corpus."""

from __future__ import annotations

import argparse
from typing import Any


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "index",
        help="build the search index from a JSON-lines corpus",
        description='Index a corpus of {"id", "title", "text"} JSON lines into an SQLite FTS5 '
        "database for the search tool (replaces an earlier index in the same file).",
    )
    parser.add_argument("corpus", help="JSON-lines corpus file")
    parser.add_argument("--out", required=True, help="SQLite database to write")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tepo_agent.tools.search import build_index

    count = build_index(args.corpus, args.out)
    print(f"indexed {count} documents into {args.out}")
    return 0
