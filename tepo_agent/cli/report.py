"""``tepo-agent report``: one self-contained HTML page about a trajectory store.

    tepo-agent report [--db DB] [--out report.html] [--limit N] [--version V] [--tool NAME]
                      [--min-score S] [--max-score S] [--group ID] [--trajectory ID] [--model DIR]

The page holds policy versions (a timeline of their events and the gate's numbers), training
curves per step, evaluations per version, per-tool statistics and a trajectory browser with every
assistant token coloured by its entropy. It loads nothing from the network: open it anywhere.

Large stores stay fast: aggregates cover every row, and only the ``--limit`` most recent
trajectories that match the filters (default 100) are embedded with their tokens;
``--trajectory ID`` renders one trajectory in full. ``--model`` names the tokenizer that turns
token ids into text (default: the registry's base model, else the default model).
"""

from __future__ import annotations

import argparse

from tepo_agent.cli._db import DB_HELP, db_target


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "report",
        help="write a self-contained HTML report: versions, curves, tools, token entropy",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--db", metavar="PATH|URL", help=DB_HELP)
    parser.add_argument("--out", default="report.html", help="output file (default report.html)")
    parser.add_argument("--limit", type=int, default=100, help="trajectories shown (default 100)")
    parser.add_argument("--version", type=int, help="only trajectories of this policy version")
    parser.add_argument("--tool", help="only trajectories that called this tool")
    parser.add_argument("--min-score", type=float, help="only trajectories scored at least this")
    parser.add_argument("--max-score", type=float, help="only trajectories scored at most this")
    parser.add_argument("--group", help="only this GRPO group")
    parser.add_argument("--trajectory", metavar="ID", help="just this trajectory, in full")
    parser.add_argument("--model", metavar="DIR", help="tokenizer directory (default: see above)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tepo_agent.report import SampleFilter, write_report

    sample = SampleFilter(
        limit=args.limit,
        policy_version=args.version,
        min_score=args.min_score,
        max_score=args.max_score,
        tool=args.tool,
        group_id=args.group,
        trajectory_id=args.trajectory,
    )
    out = write_report(db_target(args.db), args.out, sample, model=args.model)
    print(f"report: {out.resolve()}")
    return 0
