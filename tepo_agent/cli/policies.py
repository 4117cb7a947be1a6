"""``tepo-agent policies [--db PATH] [--json]``: every policy version of a trajectory database.

One line per version, oldest first: its number, the version it was trained from, its status
(live, retired, candidate, rejected), kind (full weights or a LoRA adapter), the gate's held-out
figures (accuracy and format-error rate, when it was evaluated), when it was registered, how many
stored trajectories it sampled, its directory, and why it was rejected. Reads the database only.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from tepo_agent.cli._db import DB_HELP, open_store


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "policies",
        help="the policy versions: parent, status, gate figures, trajectories",
        description=__doc__,
    )
    parser.add_argument("--db", metavar="PATH|URL", help=DB_HELP)
    parser.add_argument("--json", action="store_true", help="one JSON object per version")
    parser.set_defaults(func=run)


def policy_rows(db: str | None) -> list[dict[str, Any]]:
    """Every version with its trajectory count, as plain dicts (oldest first)."""
    from tepo_agent.policy.registry import PolicyRegistry

    with open_store(db) as store:
        counts = {v.version: v.runs for v in store.version_stats()}
        records = PolicyRegistry(store).list()
    rows = []
    for r in records:
        gate = r.metrics.get("gate") if isinstance(r.metrics.get("gate"), dict) else {}
        rows.append(
            {
                "version": r.version,
                "parent": r.parent,
                "status": r.status,
                "kind": r.kind,
                "accuracy": gate.get("accuracy"),
                "format_error_rate": gate.get("format_error_rate"),
                "created_at": r.created_at,
                "updated_at": r.updated_at,
                "trajectories": counts.get(r.version, 0),
                "path": r.path,
                "reason": r.reason,
            }
        )
    unregistered = counts.get(None, 0)
    if unregistered:
        rows.append({"version": None, "status": "unregistered", "trajectories": unregistered})
    return rows


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def run(args: argparse.Namespace) -> int:
    rows = policy_rows(args.db)
    if args.json:
        for row in rows:
            print(json.dumps(row))
        return 0
    if not rows:
        print("no policy version registered yet (run the agent with --db, or train)")
        return 0
    print(f"{'ver':>4}  {'parent':>6}  {'status':<9} {'kind':<4}  {'acc':>5}  {'fmt':>5}  "
          f"{'registered':<16}  {'trajs':>5}  path")  # fmt: skip
    for row in rows:
        if row["version"] is None:
            blank = f"{'-':>4}  {'':>6}  {'(none)':<9} {'':<4}  {'':>5}  {'':>5}  {'':<16}"
            print(f"{blank}  {row['trajectories']:>5}  sampled by models outside the registry")
            continue
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(row["created_at"]))
        parent = "-" if row["parent"] is None else str(row["parent"])
        reason = f"  ({row['reason']})" if row["reason"] else ""
        print(
            f"{row['version']:>4}  {parent:>6}  {row['status']:<9} {row['kind']:<4}  "
            f"{_fmt(row['accuracy'], '.3f'):>5}  {_fmt(row['format_error_rate'], '.3f'):>5}  "
            f"{when:<16}  {row['trajectories']:>5}  {row['path']}{reason}"
        )
    return 0
