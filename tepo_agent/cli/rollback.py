"""``tepo-agent rollback VERSION``: make an earlier policy version live again.

Serving processes that follow the registry (``tepo_agent.policy.hotswap``) swap it in between
requests.
``--list`` shows every version with its status instead (``tepo-agent policies`` shows more).
The next ``tepo-agent train`` starts from the version rolled back to.
"""

from __future__ import annotations

import argparse
from typing import Any

from tepo_agent.cli._db import DB_HELP, open_store


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "rollback",
        help="make an earlier (retired) policy version live again",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("version", metavar="VERSION", type=int, nargs="?", help="the version")
    p.add_argument("--db", metavar="PATH|URL", help=DB_HELP)
    p.add_argument("--list", action="store_true", help="list the versions and their status")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tepo_agent.policy.registry import PolicyRegistry

    with open_store(args.db) as store:
        registry = PolicyRegistry(store)
        if args.list or args.version is None:
            for r in registry.list():
                reason = f"  ({r.reason})" if r.reason else ""
                print(f"{r.version:>4}  {r.status:<9} {r.kind:<4} {r.path}{reason}")
            return 0
        record = registry.rollback(args.version)
    print(f"version {record.version} is live ({record.path})")
    return 0
