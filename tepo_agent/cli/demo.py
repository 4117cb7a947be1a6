"""``tepo-agent demo``: watch the agent learn, measured on held-out items.

1. the default model (shipped with the package; or ``--model DIR``);
2. a serving backend (in process, or a real vLLM server with ``--backend vllm``) that follows the
   policy registry and hot-swaps each newly live version between requests;
3. **before**: the live policy answers held-out items (a world no training ever saw; greedy),
   and the table shows its accuracy with a 95% interval, tool calls and ΔH;
4. **learning**, ``--rounds`` times: the agent answers training items in GRPO groups (a few shown
   live with each tool call's ΔH), verifiers score them as feedback in the SQLite store, and
   ``tepo-agent train --watch``, running as its own process throughout, trains on them (TEPO
   reward, GRPO), evaluates its candidate on the same held-out items and publishes it through
   the gate (a paired test against the live policy); the running agent hot-swaps to the new
   version before its next requests;
5. **after**: the live policy on the same held-out items (the gate's evaluation of it);
6. **the change**, item by item: (after − before) with its paired 95% interval. The lower end
   above zero means the gain is larger than chance (for the sparse reward, which cuts tool
   calls: the upper end of the change in calls per item below zero).

``--quick`` runs one short round on fewer items (about 3 minutes on 2 cores) to show the whole
loop; it prints before/after without enough items for significance. Everything lands in
``--workdir`` (default ``./tepo-demo``): the database (trajectories, policies, evaluations:
``sqlite3 tepo-demo/tepo-agent.db``), the trainer's checkpoints, ``demo.json`` with the figures
and phase times.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, replace


@dataclass(frozen=True)
class DemoPlan:
    """The demo's budget (defaults chosen so the gain is clearly visible within 10 minutes).

    Attributes:
        reward: The TEPO reward trained with.
        rounds: Collect → train → publish cycles.
        tasks, group: Training items per round and samples per item (a GRPO group).
        steps: Optimisation steps per round; lr: their learning rate.
        eval_n: Held-out items per suite for before/after.
        eval_samples: Runs per held-out item for before/after: 1 is greedy (the gate's own
            evaluation, reused); more sample at T = 1, as the agent runs by default, and an
            item's score is the mean of its samples.
        gate_tasks: Held-out items per suite the gate compares candidate and live policy on
            (greedy). With ``eval_samples=1`` and ``gate_tasks == eval_n`` the demo's before and
            after are the gate's own evaluations.
    """

    reward: str = "outcome"
    rounds: int = 5
    tasks: int = 32
    group: int = 8
    steps: int = 6
    lr: float = 1e-4
    eval_n: int = 48
    eval_samples: int = 4
    gate_tasks: int = 16


FULL = DemoPlan()
"""Measured on the shipped default (benchmarks/RESULTS.md, "It learns"): accuracy +0.036
[+0.016, +0.057] and +0.033 [+0.010, +0.056] on 144 held-out items (training seeds 1 and 2),
about 5.5 minutes on 2 shared cores; with lr 3e-4, or 3 rounds of 2 steps, the change was not
distinguishable from zero (or negative)."""
QUICK = DemoPlan(
    rounds=1, tasks=6, group=4, steps=1, lr=3e-4, eval_n=8, eval_samples=2, gate_tasks=4
)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "demo",
        help="watch the agent learn: before/after on held-out items, collect, train, gate, swap",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--workdir", default="tepo-demo", help="default: ./tepo-demo")
    p.add_argument("--model", metavar="DIR", help="a local HF model instead of the default")
    p.add_argument("--backend", choices=("inprocess", "vllm"), default="inprocess")
    p.add_argument("--quick", action="store_true", help="one short round (~3 min), no stats")
    p.add_argument("--reward", choices=("outcome", "sparse", "dense"), help=f"({FULL.reward})")
    p.add_argument("--rounds", type=int, help=f"collect/train rounds ({FULL.rounds})")
    p.add_argument("--tasks", type=int, help=f"training items per round ({FULL.tasks})")
    p.add_argument("--group", type=int, help=f"samples per item ({FULL.group})")
    p.add_argument("--steps", type=int, help=f"training steps per round ({FULL.steps})")
    p.add_argument("--lr", type=float, help=f"learning rate ({FULL.lr:g})")
    p.add_argument("--eval-n", type=int, help=f"held-out items per suite ({FULL.eval_n})")
    p.add_argument(
        "--eval-samples", type=int, help=f"runs per held-out item, T=1 if > 1 ({FULL.eval_samples})"
    )
    p.add_argument("--gate-tasks", type=int, help=f"gate items per suite ({FULL.gate_tasks})")
    p.add_argument("--seed", type=int, default=0, help="training item and sampling seed")
    p.add_argument("--fresh", action="store_true", help="delete --workdir first")
    p.set_defaults(func=run)


_PLAN_FIELDS = (
    "reward", "rounds", "tasks", "group", "steps", "lr", "eval_n", "eval_samples", "gate_tasks",
)  # fmt: skip


def _plan(args: argparse.Namespace) -> DemoPlan:
    plan = QUICK if args.quick else FULL
    given = {k: getattr(args, k) for k in _PLAN_FIELDS if getattr(args, k) is not None}
    return replace(plan, **given)


def run(args: argparse.Namespace) -> int:
    from tepo_agent.cli._demo import run_demo  # the library loads here, not for --help

    return run_demo(_plan(args), args)
