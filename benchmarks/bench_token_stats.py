"""Peak memory and time of the sampled-token logprobs/entropies: full log-softmax vs chunked.

    python benchmarks/bench_token_stats.py [--vocab 151936] [--tokens 1024] [--chunk 128]

One forward and backward pass of a random-weight Qwen2-shaped model (hidden 256, 2 layers, the
given vocabulary, untied output layer) over ``--tokens`` positions, the loss being
Σ logprob + Σ entropy of the next tokens, on CPU float32. ``full`` is the trainer's path before
issue 17: the model's (B, T, V) logits, then one float32 log-softmax over all of them
(``entropy.token_logprobs_and_entropy``). ``chunked`` is ``trainer.token_stats.TokenStats``:
the decoder's hidden states, then the output layer and log-softmax over ``--chunk`` positions
at a time, each chunk checkpointed. Each mode runs in its own process; the figure is the growth
of peak RSS over the process's RSS before the pass (model and inputs already built), the median
of ``--repeats`` runs. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _measure(args: argparse.Namespace) -> dict[str, float]:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from tepo_agent.entropy import token_logprobs_and_entropy
    from tepo_agent.trainer.token_stats import TokenStats

    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=args.vocab, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False,
    )  # fmt: skip
    model = Qwen2ForCausalLM(config).train()
    ids = torch.randint(0, args.vocab, (1, args.tokens))
    mask = torch.ones_like(ids)
    stats = TokenStats(model, chunk_tokens=args.chunk)
    before = _rss_mb()
    start = time.perf_counter()
    if args.mode == "full":
        logits = model(input_ids=ids, attention_mask=mask).logits  # (1, T, V)
        lp, ent = token_logprobs_and_entropy(logits[:, :-1], ids[:, 1:])
    else:
        lp, ent = stats(ids, mask)
    (lp.sum() + ent.sum()).backward()
    return {"peak_mb": _rss_mb() - before, "seconds": time.perf_counter() - start}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--vocab", type=int, default=151936, help="Qwen2's vocabulary by default")
    p.add_argument("--tokens", type=int, default=1024)
    p.add_argument("--chunk", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--mode", choices=("full", "chunked"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.mode:
        print("RESULT " + json.dumps(_measure(args)))
        return
    rows: dict[str, list[dict[str, float]]] = {"full": [], "chunked": []}
    for _ in range(args.repeats):
        for mode in rows:
            cmd = [sys.executable, __file__, "--mode", mode, "--vocab", str(args.vocab),
                   "--tokens", str(args.tokens), "--chunk", str(args.chunk)]  # fmt: skip
            done = subprocess.run(cmd, capture_output=True, text=True, check=True)
            line = [x for x in done.stdout.splitlines() if x.startswith("RESULT ")][-1]
            rows[mode].append(json.loads(line[7:]))
    print(
        f"vocabulary {args.vocab}, {args.tokens} tokens, chunk {args.chunk}, hidden 256, "
        f"2 layers, CPU float32, forward + backward, median of {args.repeats}\n"
    )
    print("| path | peak memory growth (MB) | seconds |")
    print("|---|---|---|")
    med = {
        m: (
            statistics.median(r["peak_mb"] for r in rs),
            statistics.median(r["seconds"] for r in rs),
        )
        for m, rs in rows.items()
    }
    for mode, (mb, s) in med.items():
        print(f"| {mode} | {mb:.0f} | {s:.2f} |")
    print(f"\nchunked / full peak memory: {med['chunked'][0] / med['full'][0]:.2f}")


if __name__ == "__main__":
    main()
