"""``tepo-agent generate PROMPT``: sample a reply in process and show each token's entropy.

The prompt is sent as one user message through the model's chat template; the reply is sampled
by the in-process backend, which returns every token's id, log-probability and exact entropy
(nats, full vocabulary, temperature 1). The model is ``--model DIR`` or the default model (the
bootstrapped one, ``tepo-agent bootstrap``; ``--model random`` for random weights). Without
``--seed`` a fresh seed is drawn and printed, so any reply can be sampled again.
"""

from __future__ import annotations

import argparse
import json
import math
import secrets
import sys
import time


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "generate",
        help="sample a reply and print each token with its entropy",
        description=__doc__,
    )
    parser.add_argument("prompt", help="the user message")
    parser.add_argument(
        "--model", metavar="DIR", help="model directory, or 'random' (default: the default model)"
    )
    parser.add_argument("--system", help="system message (default: the template's)")
    parser.add_argument("--max-tokens", type=int, default=64, help="most tokens sampled")
    parser.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus mass")
    parser.add_argument("--top-k", type=int, default=-1, help="-1: off")
    parser.add_argument(
        "--seed", type=int, default=None, help="sampling seed (default: a fresh one, printed)"
    )
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(func=run)


def _shade(entropy: float, max_entropy: float) -> str:
    """An ANSI colour from green (certain) to red (uncertain)."""
    level = min(1.0, entropy / max_entropy) if max_entropy > 0 else 0.0
    return ("\033[32m", "\033[33m", "\033[31m")[min(2, int(level * 3))]


def run(args: argparse.Namespace) -> int:
    from tepo_agent.backends import SamplingParams
    from tepo_agent.backends.transformers_backend import TransformersBackend
    from tepo_agent.chat.format import ChatFormat
    from tepo_agent.entropy import turn_entropy
    from tepo_agent.paths import resolve_model_dir

    seed = args.seed if args.seed is not None else secrets.randbelow(2**31)
    model_dir = resolve_model_dir(args.model)
    fmt = ChatFormat.from_pretrained(model_dir)
    messages = [{"role": "user", "content": args.prompt}]
    if args.system:
        messages.insert(0, {"role": "system", "content": args.system})
    prompt_ids = fmt.render(messages)
    params = SamplingParams(
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        seed=seed,
        stop_token_ids=fmt.stop_token_ids,
    )
    with TransformersBackend.from_pretrained(model_dir, device=args.device) as backend:
        started = time.perf_counter()
        gen = backend.generate_sync(prompt_ids, params)
        seconds = time.perf_counter() - started
    pieces = [fmt.decode([i]) for i in gen.token_ids]
    text = fmt.decode(gen.token_ids)
    mean_h = turn_entropy(gen.entropies)
    if args.json:
        print(
            json.dumps(
                {
                    "model": str(model_dir),
                    "text": text,
                    "token_ids": list(gen.token_ids),
                    "tokens": pieces,
                    "logprobs": list(gen.logprobs),
                    "entropies": list(gen.entropies),
                    "turn_entropy": mean_h,
                    "finish_reason": gen.finish_reason,
                    "policy_version": gen.policy_version,
                    "seed": seed,
                }
            )
        )
        return 0
    color = sys.stdout.isatty()
    max_h = math.log(backend.vocab_size)
    print(f"model: {model_dir}  seed: {seed}")
    print(f"prompt: {len(prompt_ids)} tokens\n")
    print(text)
    print("\n  #  token            id  logprob  entropy")
    for n, (piece, tid, lp, h) in enumerate(
        zip(pieces, gen.token_ids, gen.logprobs, gen.entropies, strict=True)
    ):
        shown = json.dumps(piece, ensure_ascii=False)[:16]
        line = f"{n:3d}  {shown:<16} {tid:3d}  {lp:7.3f}  {h:7.3f}"
        print(f"{_shade(h, max_h)}{line}\033[0m" if color else line)
    rate = len(gen.token_ids) / seconds if seconds > 0 else float("inf")
    print(
        f"\n{len(gen.token_ids)} tokens, finish={gen.finish_reason}, mean entropy "
        f"H={mean_h:.3f} nats (max possible {max_h:.3f}), {rate:.0f} tokens/s"
    )
    return 0
