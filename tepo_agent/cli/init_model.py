"""``tepo-agent init-model --out DIR [--seed N]``: build the embedded default model in DIR.

Writes the default byte-level tokenizer (with its chat template) and a random-weight tiny Qwen2
causal LM, an ordinary Hugging Face model directory. Same as
``tepo_agent.model.default.init_model``.
"""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "init-model",
        help="build the default tokenizer and a random-weight tiny Qwen2 model in a directory",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="new or empty directory")
    parser.add_argument("--seed", type=int, default=0, help="weight seed (default: 0)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tepo_agent.model.default import DefaultModelConfig, init_model, parameter_count

    config = DefaultModelConfig()
    out = init_model(args.out, seed=args.seed, config=config)
    for path in sorted(out.iterdir()):
        print(f"wrote {path} ({path.stat().st_size:,} bytes)")
    print(f"{parameter_count(config):,} parameters, seed {args.seed}")
    return 0
