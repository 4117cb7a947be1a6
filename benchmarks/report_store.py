"""A store that looks like a few hours of an agent learning: for the report benchmark and the
README screenshot (``scripts/make_screenshot.py``).

    python -m benchmarks.report_store --db /tmp/big.db --count 100000

Everything is written through the real components (``TrajectoryStore.add_many``,
``PolicyRegistry``, ``record_train_step``); only the runs are synthetic. Each run is a math or a
lookup question, tokenized with the default model's tokenizer, answered with one or two tool
calls (calculator or search) and a final answer. Token entropies are drawn from a seeded
generator: high while the model writes its call, lower after a useful result (ΔH < 0) and
higher after an error, with later policy versions surer and calling tools less, so the curves and
colours have the shapes the report is made to show.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path

from tqdm import tqdm

from tepo_agent.model.default import ensure_default_model
from tepo_agent.policy.registry import PolicyRegistry
from tepo_agent.store import TrajectoryStore
from tepo_agent.trajectory import Trajectory, Turn, new_id

_FIRMS = ["Arcadia Mills", "Brisk Harbor", "Cobalt Ferry", "Dunmore Glass", "Elm & Sons"]
_FOUNDERS = ["Ada Quill", "Bruno Vale", "Clara Moss", "Dev Patel", "Esme Hart"]


class _Tok:
    """Tokenize with a cache: a 100k-run store repeats the same few hundred texts."""

    def __init__(self, model_dir: Path) -> None:
        from transformers import AutoTokenizer

        self.tok = AutoTokenizer.from_pretrained(str(model_dir))
        self.cache: dict[str, list[int]] = {}

    def __call__(self, text: str) -> list[int]:
        ids = self.cache.get(text)
        if ids is None:
            ids = self.cache[text] = self.tok.encode(text, add_special_tokens=False)
        return ids


def _entropies(rng: random.Random, n: int, level: float) -> list[float]:
    # a few unsure tokens (numbers, names) in a run of sure ones
    return [
        max(0.0, rng.gauss(level * (3.0 if rng.random() < 0.12 else 0.6), 0.15)) for _ in range(n)
    ]


def _assistant(tok: _Tok, rng: random.Random, text: str, level: float, version: int) -> Turn:
    ids = tok(text)
    ents = _entropies(rng, len(ids), level)
    return Turn(role="assistant", token_ids=ids, text=text, logprobs=[-h / 2 for h in ents],
                entropies=ents, entropy_kind="exact", policy_version=version,
                finish_reason="stop", entropy_mean=sum(ents) / max(1, len(ents)))  # fmt: skip


def _run(tok: _Tok, rng: random.Random, version: int, group: str | None) -> Trajectory:
    skill = min(1.0, 0.35 + 0.12 * version)  # later versions: surer, right more often
    if rng.random() < 0.5:
        a, b = rng.randint(12, 99), rng.randint(12, 99)
        task, tool, args, result = (
            f"What is {a} * {b}?",
            "calculator",
            {"expression": f"{a}*{b}"},
            str(a * b),
        )
        answer = str(a * b)
    else:
        k = rng.randrange(len(_FIRMS))
        task, tool, args = f"Who founded {_FIRMS[k]}?", "search", {"query": f"{_FIRMS[k]} founder"}
        result, answer = f"{_FIRMS[k]} was founded by {_FOUNDERS[k]}.", _FOUNDERS[k]
    error = None
    if rng.random() < 0.08 * (1.2 - skill):
        error, result = "error: malformed tool call (unparseable). Write the call as JSON.", None
    elif rng.random() < 0.05:
        error, result = "error: unknown tool 'lookup'; tools: ['calculator', 'search']", None
    first_level = 1.6 - 0.6 * skill
    call_text = f"<tool_call>\n{json.dumps({'name': tool, 'arguments': args})}\n</tool_call>"
    t0 = _assistant(tok, rng, "Let me check with a tool.\n" + call_text, first_level, version)
    correct = error is None and rng.random() < 0.5 + 0.5 * skill
    final = f"The answer is {answer if correct else rng.randint(100, 999)}."
    t1 = _assistant(tok, rng, final, first_level * (0.45 if error is None else 1.3), version)
    delta = (t1.entropy_mean or 0.0) - (t0.entropy_mean or 0.0)
    shown = result if error is None else error
    call = Turn(role="tool", token_ids=tok(shown), text=shown, tool_call_id=new_id()[:8],
                tool_name=tool, tool_args=args, tool_result=result, tool_error=error,
                tool_latency_s=rng.uniform(0.001, 0.004) if tool == "calculator"
                else rng.uniform(0.02, 0.08), delta_entropy=delta)  # fmt: skip
    return Trajectory(task=task, prompt_token_ids=tok(f"<|user|>{task}<|assistant|>"),
                      turns=[t0, call, t1], group_id=group, answer=final,
                      score=1.0 if correct else 0.0, app_tag="synthetic")  # fmt: skip


def _metrics(rng: random.Random, step: int, steps: int) -> dict[str, float]:
    p = step / max(1, steps)
    return {
        "reward_mean": 0.35 + 0.45 * p + rng.gauss(0, 0.04),
        "score_mean": 0.4 + 0.4 * p + rng.gauss(0, 0.04),
        "tool_calls_per_trajectory": 1.6 - 0.5 * p + rng.gauss(0, 0.05),
        "entropy_reducing_share": 0.45 + 0.35 * p + rng.gauss(0, 0.03),
        "delta_entropy_mean": -0.1 - 0.4 * p + rng.gauss(0, 0.04),
        "kl": 0.002 + 0.01 * p + abs(rng.gauss(0, 0.001)),
        "clip_frac": max(0.0, 0.05 - 0.03 * p + rng.gauss(0, 0.005)),
        "grad_norm": 0.9 * math.exp(-2 * p) + 0.2 + abs(rng.gauss(0, 0.05)),
        "tokens_per_s": 4200 + rng.gauss(0, 150),
    }


def build_store(
    db: str | Path, count: int, *, versions: int = 4, steps: int = 60, seed: int = 0
) -> Path:
    """Write ``count`` runs over ``versions`` promoted versions (one rejected between) and
    ``steps`` train steps into a new store at ``db``; returns its path."""
    db = Path(db)
    if db.exists():
        raise FileExistsError(f"{db} exists; build_store writes a new store")
    rng = random.Random(seed)
    model_dir = ensure_default_model()
    tok = _Tok(model_dir)
    with TrajectoryStore(db) as store:
        registry = PolicyRegistry(store)
        registry.ensure_base(model_dir)
        per_version = max(1, count // (versions + 1))
        step, done, live = 0, 0, 0
        bar = tqdm(total=count, desc="synthetic runs", unit="run", disable=count < 5000)
        for version in range(versions + 1):
            n = per_version if version < versions else count - done
            batch: list[Trajectory] = []
            for i in range(n):
                group = f"g{version}-{i // 4}" if i % 16 < 8 else None
                batch.append(_run(tok, rng, live, group))
                if len(batch) == 512 or i == n - 1:
                    store.add_many(batch)
                    bar.update(len(batch))
                    batch = []
            done += n
            if version == versions:
                break
            if version == 1:  # a candidate the gate turns down
                reject = {"gate": {"accuracy": 0.31, "tasks": 96}}
                bad = registry.register(f"{db}.ckpt/x", kind="lora", parent=live, metrics=reject)
                registry.reject(bad, f"accuracy fell by 0.12 [-0.19, -0.05] against v{live}")
            gate = {"accuracy": round(0.45 + 0.1 * version, 3), "tasks": 96}
            new = registry.register(f"{db}.ckpt/v{version + 1}", kind="lora", parent=live,
                                    metrics={"gate": gate})  # fmt: skip
            registry.promote(new)
            for k in range(steps // versions):
                step += 1
                store.record_train_step(step, _metrics(rng, step, steps), cursor_seq=done,
                                        policy_version=live, published_version=new
                                        if k == steps // versions - 1 else None)  # fmt: skip
            live = new
            time.sleep(0.01)  # distinct event times on the timeline
        bar.close()
    return db


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", required=True, help="the new store's path")
    parser.add_argument("--count", type=int, default=2000, help="runs (default 2000)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    build_store(args.db, args.count, seed=args.seed)
    print(args.db)


if __name__ == "__main__":
    main()
