"""``tepo-agent feedback TRAJECTORY_ID VALUE``: score a stored trajectory from outside the app.

The value is a score in [0, 1]; it becomes the trajectory's score (latest feedback wins) and
queues the trajectory for the trainer. Same as ``TrajectoryStore.record_feedback``.
"""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "feedback",
        help="record a score in [0, 1] for a stored trajectory",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("trajectory_id", metavar="TRAJECTORY_ID")
    parser.add_argument("value", metavar="VALUE", type=float, help="score in [0, 1]")
    parser.add_argument(
        "--db", default=None, help="database file (default: $TEPO_AGENT_DB or ./tepo-agent.db)"
    )
    parser.add_argument("--source", default="cli", help="who gave the feedback (default: cli)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tepo_agent.store import TrajectoryStore, default_db_path

    with TrajectoryStore(args.db or default_db_path(), create=False) as store:
        store.record_feedback(args.trajectory_id, args.value, source=args.source)
    print(f"{args.trajectory_id}: score {args.value:g} ({args.source})")
    return 0
