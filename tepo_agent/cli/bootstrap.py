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
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from dataclasses import replace
from pathlib import Path

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
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tepo_agent.paths import bootstrap_cache_dir
    from tepo_agent.trainer.bootstrap import BootstrapConfig, bootstrap_model

    if not args.out and (args.steps is not None or args.seed != 0):
        # the cache holds THE default model; other settings make another model, never
        # silently the cached one
        raise ConfigError(
            "--steps and --seed build a model other than the default one: give it its own "
            "directory with --out DIR"
        )
    cfg = BootstrapConfig(seed=args.seed)
    if args.steps is not None:
        cfg = replace(cfg, sft=replace(cfg.sft, steps=args.steps))
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
