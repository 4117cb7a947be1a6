"""``tepo-agent bootstrap [--out DIR]``: teach the default model the tool-call format (SFT).

Builds the default model's seeded world (knowledge base, search index), generates demonstrations
with scripted solvers that call the real calculator and search tools, and fine-tunes the random
default model on them. Without ``--out`` the result is cached as the default model
(``$TEPO_AGENT_HOME/models/default-sft-v1``), which ``generate``, ``run``, ``serve`` and the demo
then use. Built once: 1,883 s on 2 shared CPU cores (benchmarks/RESULTS.md).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace

from tepo_agent.errors import ConfigError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "bootstrap",
        help="fine-tune the default model on synthetic tool-use demonstrations (cached)",
        description=__doc__,
    )
    parser.add_argument("--out", metavar="DIR", help="write here instead of the default cache")
    parser.add_argument(
        "--steps", type=int, help="SFT steps (default: BootstrapConfig's; needs --out)"
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="weights and demonstrations seed (other: needs --out)"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tepo_agent.trainer.bootstrap import (
        BootstrapConfig,
        bootstrap_model,
        ensure_bootstrapped_model,
    )

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
    out = bootstrap_model(args.out, cfg) if args.out else ensure_bootstrapped_model(cfg)
    info = json.loads((out / "bootstrap.json").read_text())
    print(
        f"bootstrapped model: {out}\n  {info['demonstrations']} demonstrations "
        f"({info['demonstration_tokens']:,} tokens), final SFT loss {info['final_loss']:.3f}, "
        f"{info['seconds']:.0f} s"
    )
    return 0
