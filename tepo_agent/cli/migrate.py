"""``tepo-agent migrate --from DB --to URL``: copy a whole store into an empty one, and check it.

Moves a store between SQLite and PostgreSQL, either way (or between two of one kind): every
trajectory with its token arrays, feedback, train steps, the policy registry and its history,
evaluations and served responses, with their ids, cursor numbers and timestamps unchanged, so
a trainer resumes on the copy where it stopped on the original. The destination must be empty
(a new SQLite file, or a new PostgreSQL database); the copy is one transaction there.

After copying, every table is compared: the same row count, and each row equal field by field.
Stop the writers (applications, trainer) first: rows written during the copy are not copied.

    tepo-agent migrate --from tepo-agent.db --to postgresql://tepo@db-host/tepo
    tepo-agent migrate --from postgresql://tepo@db-host/tepo --to backup.db
"""

from __future__ import annotations

import argparse
from typing import Any


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "migrate",
        help="copy a store into an empty one (SQLite <-> PostgreSQL) and verify the copy",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--from", dest="source", metavar="DB", required=True,
        help="the store to copy: a SQLite file, sqlite:///PATH or postgresql://...",
    )  # fmt: skip
    p.add_argument(
        "--to", dest="dest", metavar="URL", required=True,
        help="the empty store to copy into (created if missing; same forms as --from)",
    )  # fmt: skip
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from tepo_agent.store.migrate import copy_store, count_rows, describe, verify_copy

    source, dest = describe(args.source), describe(args.dest)
    total = sum(count_rows(args.source).values()) if not args.no_progress else 0
    with tqdm(total=total, unit="row", disable=args.no_progress, desc="copying") as bar:
        copied = copy_store(args.source, args.dest, progress=lambda table, n: bar.update(n))
    compared = verify_copy(args.source, args.dest)
    for table, n in copied.items():
        print(f"{table:<18} {n:>9} rows copied, {compared[table]:>9} compared equal")
    print(f"{source} -> {dest}: {sum(copied.values())} rows, every field equal")
    return 0
