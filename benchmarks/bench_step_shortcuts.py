"""How much of a training step the two loop shortcuts save (issue 11, item 6).

    python benchmarks/bench_step_shortcuts.py [--groups 8] [--group 8] [--flat 0.5] [--repeats 3]

Collects ``--groups`` GRPO groups of ``--group`` runs with the ~1.1 M default model (random
weights, in process, so the logged entropies are exact and on-policy for version 0); a share
``--flat`` of the groups is scored all-wrong (flat: no reward variance, as most groups of a weak
policy are), the rest half right. Then times ``Trainer.step`` on the same trajectories, each on a
fresh trainer, in three configurations:

- ``baseline``: every group trains, exact recompute pass, training forward, backward;
- ``+ skip flat groups``: flat groups skip the recompute and the backward (DAPO dynamic sampling);
- ``+ fuse recompute``: the first update's training forward is the recompute (``trainer.fusion``;
  what a step on weights other than the sampler's gets);
- ``+ reuse exact logs``: on-policy exact logged values replace the recompute pass altogether.

Prints a markdown table (median of ``--repeats``). CPU float32.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests" / "trainer"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--groups", type=int, default=8)
    p.add_argument("--group", type=int, default=8)
    p.add_argument("--flat", type=float, default=0.5)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()

    from _tepo_data import collect

    from tepo_agent.model.default import init_model
    from tepo_agent.store import TrajectoryStore
    from tepo_agent.trainer.config import RewardConfig
    from tepo_agent.trainer.loop import TrainConfig, Trainer, build_policy

    root = Path(tempfile.mkdtemp(prefix="bench-step-"))
    model = init_model(root / "model", seed=0)
    db = root / "t.db"
    flat = round(args.groups * args.flat)
    if flat:
        collect(model, db, groups=flat, n=args.group, scores=[0.0])
    if args.groups - flat:
        collect(model, db, groups=args.groups - flat, n=args.group, seed=1, scores=[1.0, 0.0])
    with TrajectoryStore(db) as store:
        trajs = [t for g in store.scored_since(0) for t in g.members]
    tokens = sum(len(t.full_token_ids()) for t in trajs)

    configs = {
        "baseline": {
            "skip_zero_variance": False,
            "reuse_logged_exact": False,
            "fuse_recompute": False,
        },
        "+ skip flat groups": {
            "skip_zero_variance": True,
            "reuse_logged_exact": False,
            "fuse_recompute": False,
        },
        "+ fuse recompute": {
            "skip_zero_variance": True,
            "reuse_logged_exact": False,
            "fuse_recompute": True,
        },
        "+ reuse exact logs": {"skip_zero_variance": True, "reuse_logged_exact": True},
    }
    print(f"{len(trajs)} trajectories ({flat}/{args.groups} groups flat), {tokens} tokens\n")
    print("| configuration | step (s, median) | vs baseline |")
    print("|---|---|---|")
    base = None
    for name, flags in configs.items():
        times = []
        for _ in range(args.repeats):
            cfg = TrainConfig(
                reward=RewardConfig(kind="outcome"), device="cpu", learning_rate=1e-4,
                batch_trajectories=len(trajs), micro_batch_size=8, **flags,
            )  # fmt: skip
            trainer = Trainer(
                build_policy(cfg, str(model)), cfg, weights_version=0, pad_token_id=0,
                base_model=str(model),
            )  # fmt: skip
            t0 = time.perf_counter()
            trainer.step(trajs)
            times.append(time.perf_counter() - t0)
        med = statistics.median(times)
        base = base or med
        print(f"| {name} | {med:.2f} | {100 * (med / base - 1):+.0f}% |")


if __name__ == "__main__":
    main()
