"""``tepo-agent bootstrap [--out DIR]``: rebuild the default model (SFT on tool-use demonstrations).

The package ships the bootstrapped default model (``tepo_agent/assets/default-model``), so nothing
needs building; this command rebuilds it reproducibly from the recipe in
``tepo_agent.trainer.bootstrap.BootstrapConfig``: it builds the training worlds (knowledge bases,
search indexes), generates demonstrations with scripted solvers that call the real calculator and
search tools (with real agents' habits), fine-tunes the random default model on them, chooses the
checkpoint by validation accuracy, evaluates it on a held-out world and writes
``bootstrap.json`` beside the weights. Without ``--out`` the result goes to the cache
(``$TEPO_AGENT_HOME/models/default-sft-v3``), which ``generate``, ``run``, ``serve``, ``eval`` and
the demo then use instead of the shipped weights. The wall time on the machine it ran on is in
``bootstrap.json`` (``wall_seconds``).

The shipped weights continue that recipe: ``--init-from DIR`` starts from a bootstrapped model
instead of random weights (whole demonstrations only, a lower rate) and chains DIR's
``bootstrap.json`` and weights hash into the new record, so the lineage back to random weights
stays in the file (benchmarks/RESULTS.md gives the shipped model's four commands)::

    tepo-agent bootstrap --init-from prev --out next --steps 800 --math-items 32
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from tepo_agent.errors import ConfigError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "bootstrap",
        help="rebuild the default model: SFT on synthetic tool-use demonstrations",
        description=__doc__,
    )
    parser.add_argument(
        "--out", metavar="DIR", help="write here (a new directory) instead of the cache"
    )
    parser.add_argument(
        "--steps",
        type=int,
        help="SFT steps in all (default: BootstrapConfig.sft; its first_turn_steps of them "
        "train on first turns only)",
    )
    parser.add_argument("--seed", type=int, default=0, help="weights and shuffling seed")
    parser.add_argument(
        "--init-from",
        metavar="DIR",
        help="continue from this bootstrapped model (its weights and bootstrap.json; the new "
        "record chains its record and weights hash) instead of random weights; with it, "
        "--steps defaults to 1,200 whole-demonstration steps at --lr 1e-3",
    )
    parser.add_argument("--lr", type=float, help="peak SFT learning rate")
    parser.add_argument(
        "--first-turn-steps", type=int, help="of --steps, how many train on first turns only"
    )
    parser.add_argument(
        "--after-tool-weight",
        type=float,
        help="loss weight of the turns after a tool result (the answer or next call), "
        "relative to the first turn's 1",
    )
    parser.add_argument(
        "--math-items", type=int, help="math demonstrations per training world (default 16)"
    )
    parser.add_argument(
        "--select-every",
        type=int,
        help="measure validation accuracy every this many steps (from --select-from on)",
    )
    parser.add_argument("--select-from", type=int, help="first step whose checkpoint is measured")
    parser.set_defaults(func=run)


CONTINUATION = {"steps": 1200, "first_turn_steps": 0, "lr": 1e-3, "warmup_steps": 10}
"""The fine-tuning settings of a continuation (``--init-from``) unless flags override them:
whole demonstrations only (the first-turn phase has done its work), a lower peak rate."""


def config_from_args(args: argparse.Namespace) -> Any:
    """The ``BootstrapConfig`` the flags describe (the default recipe where none is given)."""
    from tepo_agent.trainer.bootstrap import BootstrapConfig

    cfg = BootstrapConfig(seed=args.seed)
    sft = cfg.sft
    if args.init_from:
        sft = replace(sft, **CONTINUATION)
        cfg = replace(cfg, init_from=str(Path(args.init_from)), select_from=200, select_every=200)
    flags = {
        "steps": args.steps,
        "lr": args.lr,
        "first_turn_steps": args.first_turn_steps,
        "after_tool_weight": args.after_tool_weight,
    }
    sft = replace(sft, **{k: v for k, v in flags.items() if v is not None})
    recipe = {
        "math_items": args.math_items,
        "select_every": args.select_every,
        "select_from": args.select_from,
    }
    return replace(cfg, sft=sft, **{k: v for k, v in recipe.items() if v is not None})


def run(args: argparse.Namespace) -> int:
    from tepo_agent.paths import bootstrap_cache_dir
    from tepo_agent.trainer.bootstrap import BootstrapConfig, bootstrap_model

    cfg = config_from_args(args)
    if not args.out and cfg != BootstrapConfig():
        # the cache holds THE default model; other settings make another model, never
        # silently the cached one
        raise ConfigError(
            "--steps, --seed, --init-from and the other recipe flags build a model other than "
            "the default one: give it its own directory with --out DIR"
        )
    out = Path(args.out) if args.out else bootstrap_cache_dir()
    if not args.out and (out / "bootstrap.json").is_file():
        print(f"a rebuilt default model is already in {out}; remove it to rebuild")
        return 0
    command = shlex.join(["tepo-agent", *sys.argv[1:]])
    bootstrap_model(out, cfg, command=command)
    info = json.loads((out / "bootstrap.json").read_text())
    figures = info["held_out"]["greedy"]
    print(
        f"bootstrapped model: {out}\n  {info['data']['demonstrations']} demonstrations "
        f"({info['data']['tokens']:,} tokens), chosen step {info['chosen_step']}, "
        f"{info['wall_seconds']['total']:.0f} s\n  held-out greedy accuracy: "
        + ", ".join(f"{s} {f['accuracy']:.2f}" for s, f in figures.items())
    )
    return 0
