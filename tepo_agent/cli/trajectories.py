"""``tepo-agent trajectories list|show|export``: look at what the agent has recorded.

    tepo-agent trajectories list [--limit N] [--json]     newest first
    tepo-agent trajectories show ID [--json] [--no-color] every turn, with H and ΔH; on a
                                                          terminal, tokens coloured by entropy
    tepo-agent trajectories browse [--port 8001]          the store in Datasette (optional extra)
    tepo-agent trajectories export --out FILE.jsonl       everything, one JSON line each

ID may be any unique prefix of a trajectory id (an ambiguous one lists the candidates).
``--out -`` writes to standard output. ``--db`` defaults to ``$TEPO_AGENT_DB`` or
``./tepo-agent.db`` and must exist.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import asdict

from tepo_agent.cli._db import DB_HELP, open_store
from tepo_agent.cli._show import error_text, malformed_texts
from tepo_agent.trajectory import Trajectory, Turn


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "trajectories",
        help="list, show or export stored trajectories",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    db_help = DB_HELP

    ls = actions.add_parser("list", help="the most recent trajectories")
    ls.add_argument("--db", default=None, help=db_help)
    ls.add_argument("--limit", type=int, default=20, help="most trajectories listed")
    ls.add_argument("--json", action="store_true", help="one JSON object per line")
    ls.set_defaults(func=run_list)

    show = actions.add_parser("show", help="one trajectory turn by turn")
    show.add_argument("id", metavar="ID", help="a trajectory id or a unique prefix of one")
    show.add_argument("--db", default=None, help=db_help)
    show.add_argument(
        "--json", action="store_true", help="the full record and its feedback as one JSON line"
    )
    show.add_argument("--no-color", action="store_true", help="never colour tokens by entropy")
    show.set_defaults(func=run_show)

    export = actions.add_parser("export", help="every trajectory as JSON lines")
    export.add_argument("--out", required=True, help="output .jsonl file, or - for stdout")
    export.add_argument("--db", default=None, help=db_help)
    export.set_defaults(func=run_export)
    from tepo_agent.cli.trajectories_browse import register_browse

    register_browse(actions)


def _fmt(value: float | None, spec: str = ".3f") -> str:
    return "-" if value is None else format(value, spec)


def run_list(args: argparse.Namespace) -> int:
    with open_store(args.db) as store:
        rows = store.list(limit=args.limit, newest_first=True)
    if args.json:
        for row in rows:
            print(json.dumps(row.to_dict(), ensure_ascii=False))
        return 0
    print(f"{'seq':>6}  {'id':32}  {'policy':>6}  {'calls':>5}  {'↓H':>3}  {'score':>5}  task")
    for r in rows:
        task = r.task.replace("\n", " ")
        task = task if len(task) <= 50 else task[:49] + "…"
        policy = "-" if r.policy_version is None else str(r.policy_version)
        print(
            f"{r.seq:>6}  {r.id:32}  {policy:>6}  {r.num_tool_calls:>5}  "
            f"{r.num_entropy_reducing_calls:>3}  {_fmt(r.score, '.2f'):>5}  {task}"
        )
    return 0


def _turn_lines(
    idx: int, turn: Turn, raw: str | None, colour: Callable[[Turn], str] | None = None
) -> list[str]:
    if turn.role == "assistant":
        text = colour(turn) if colour is not None else turn.text
        policy = "-" if turn.policy_version is None else str(turn.policy_version)
        head = (
            f"[{idx}] assistant  policy={policy}"
            f"  tokens={len(turn.token_ids)}  H={_fmt(turn.entropy_mean)}"
            f"  finish={turn.finish_reason or '-'}"
        )
        return [head, *("    " + line for line in text.splitlines() or [""])]
    if turn.tool_name is None:
        what = f"malformed call {raw!r}"
    else:
        args = json.dumps(turn.tool_args, ensure_ascii=False) if turn.tool_args is not None else ""
        what = f"{turn.tool_name}({args})"
    head = f"[{idx}] tool {what}  ΔH={_fmt(turn.delta_entropy, '+.3f')}"
    outcome = error_text(turn.tool_error) if turn.tool_error else (turn.tool_result or "")
    return [head, *("    → " + line for line in outcome.splitlines() or [""])]


def _show_text(traj: Trajectory, colour: Callable[[Turn], str] | None = None) -> list[str]:
    lines = [
        f"id: {traj.id}",
        f"task: {traj.task}",
        f"group: {traj.group_id or '-'}  policy: {traj.policy_version}  status: {traj.status}"
        f"  score: {_fmt(traj.score, '.2f')}  seed: {traj.metadata.get('seed', '-')}",
        f"prompt tokens: {len(traj.prompt_token_ids)}",
    ]
    raws = malformed_texts(traj, [t.tool_call_id or "" for t in traj.turns])
    for idx, (turn, raw) in enumerate(zip(traj.turns, raws, strict=True)):
        lines.extend(_turn_lines(idx, turn, raw, colour))
    lines.append(f"answer: {traj.answer if traj.answer is not None else '-'}")
    return lines


def run_show(args: argparse.Namespace) -> int:
    with open_store(args.db) as store:
        traj = store.get(store.resolve_id(args.id))
        feedback = store.feedback(traj.id)
    if args.json:
        print(json.dumps({**asdict(traj), "feedback": feedback}, ensure_ascii=False))
        return 0
    from tepo_agent.report.terminal import TurnColourer, colour_wanted, legend, load_decoder

    colour = None
    if colour_wanted(args.no_color, sys.stdout):  # each token on the colour of its entropy
        colour = TurnColourer.for_trajectory(traj, load_decoder(None, store.location))
    lines = _show_text(traj, colour)
    lines.extend(f"feedback: {f['value']:g} from {f['source']}" for f in feedback)
    if colour is not None:
        lines.append(legend(colour.top))
    print("\n".join(lines))
    return 0


def run_export(args: argparse.Namespace) -> int:
    with open_store(args.db) as store:
        count = store.export_jsonl(sys.stdout if args.out == "-" else args.out)
    # the count goes to stderr when the records go to stdout, so a pipe gets JSON lines only
    print(
        f"exported {count} trajectories to {'stdout' if args.out == '-' else args.out}",
        file=sys.stderr if args.out == "-" else sys.stdout,
    )
    return 0
