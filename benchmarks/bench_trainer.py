"""Benchmark the TEPO trainer against TRL's GRPOTrainer on the same tiny model and data shape.

    python benchmarks/bench_trainer.py [--steps 4] [--group 4] [--prompts 2] [--max-new 16]
    python benchmarks/bench_trainer.py --fusion [--steps 8] [--group 4] [--prompts 2]

Both sides get the same random-weight default model (~1.1 M parameters), the same math
prompts, group size, batch (prompts × group) and completion length, on CPU float32. TRL
generates inside its step; our trainer trains on trajectories the runtime already generated, so
our column reports the update alone, the update with its crash-safe state checkpoint, and
collection + update (the comparable total). TRL's update alone is its step minus the time its
``_prepare_inputs`` spends generating and scoring (timed inside the same step). Each side runs
in its own subprocess so that peak RSS (memory) is its own. Also measured: the time from
``publish`` (registry promotion) to the first request served by the new weights through an
in-process ``PolicyFollower``. Prints a markdown table.

``--fusion``: our step with the exact recompute fused into the first update's training forward
(``TrainConfig.fuse_recompute``, ``trainer.fusion``) against the same step with its separate
no-grad recompute pass, in one process: two trainers from the same weights, stepping alternately
(fused, unfused, fused, ...) on the same batch, after a first step each (dropped) so that the
weights are no registered version, as in a run. Two shapes: the sparse reward with the batch in
one micro-batch ("graph") and the outcome reward in micro-batches of 2 ("stream"). Reports the
median seconds per step and trained tokens per second.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tepo_agent.model.default import parameter_count

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests" / "trainer"))


def _ours(args: argparse.Namespace, root: Path) -> dict[str, float]:
    import io

    from _tepo_data import agent_for, collect

    from tepo_agent.backends.transformers_backend import TransformersBackend
    from tepo_agent.model.default import init_model
    from tepo_agent.policy.hotswap import InProcessTarget, PolicyFollower
    from tepo_agent.trainer.eval_gate import GateConfig
    from tepo_agent.trainer.loop import TrainConfig
    from tepo_agent.trainer.training_run import RunConfig, TrainingRun

    model = init_model(root / "model", seed=0)
    db = root / "t.db"
    batch = args.prompts * args.group
    t0 = time.perf_counter()
    collect(model, db, groups=args.prompts * args.steps, n=args.group, scores=[1.0, 0.0])
    collect_s = (time.perf_counter() - t0) / args.steps
    cfg = RunConfig(
        train=TrainConfig(
            batch_trajectories=batch, micro_batch_size=batch, device="cpu", learning_rate=1e-4
        ),
        gate=GateConfig(enabled=False),
        publish_every=10**9,
    )
    with TrainingRun(db, cfg, base_model=model, out=io.StringIO()) as run:
        times, pure = [], []
        for _ in range(args.steps):
            trajectories, _ = run.pull()
            t = time.perf_counter()
            run.trainer.step(trajectories)  # the update alone
            pure.append(time.perf_counter() - t)
            t = time.perf_counter()
            run.step()  # the run's step: the update on the same data + its state checkpoint
            times.append(time.perf_counter() - t)
        with TransformersBackend.from_pretrained(model, device="cpu") as backend:
            follower = PolicyFollower(db, InProcessTarget(backend))
            agent = agent_for(backend, model, None)
            t = time.perf_counter()
            result = run.publish()
            follower.poll_once()
            served = agent.run("What is 2 + 3?")
            swap_s = time.perf_counter() - t
            assert served.trajectory.policy_version == result.version
            follower.stop()
    step_s = sorted(times[1:] or times)[len(times[1:] or times) // 2]
    pure_s = sorted(pure[1:] or pure)[len(pure[1:] or pure) // 2]
    return {
        "step_s": step_s,
        "update_s": pure_s,
        "collect_s": collect_s,
        "publish_to_served_s": swap_s,
    }


def _trl(args: argparse.Namespace, root: Path) -> dict[str, float]:
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from tepo_agent.model.default import init_model
    from tepo_agent.model.io import load_causal_lm, load_tokenizer
    from tepo_agent.tasks import math_suite

    model_dir = init_model(root / "model", seed=0)
    tasks = math_suite(args.prompts * args.steps, seed=0)
    # The exact prompt text our agent sends (system message, tool schemas, chat template), so
    # both sides train on sequences of the same length.
    from langchain_core.utils.function_calling import convert_to_openai_tool

    from tepo_agent.agent.state import AgentConfig
    from tepo_agent.chat.format import ChatFormat
    from tepo_agent.tools import make_calculator_tool

    fmt = ChatFormat.from_pretrained(model_dir)
    schemas = [convert_to_openai_tool(make_calculator_tool())]
    system = AgentConfig().system_prompt

    def rendered(question: str) -> str:
        messages = [{"role": "user", "content": question}]
        if system is not None:
            messages.insert(0, {"role": "system", "content": system})
        return fmt.render_text(messages, schemas)

    data = Dataset.from_list([{"prompt": rendered(t.question), "answer": t.answer} for t in tasks])

    def reward(completions: list[str], answer: list[str], **_: object) -> list[float]:
        return [
            float(a in c) + 0.1 * (i % 2)
            for i, (c, a) in enumerate(zip(completions, answer, strict=True))
        ]

    times: list[float] = []

    class Clock(TrainerCallback):
        def on_step_begin(self, *a: object, **k: object) -> None:
            self.t = time.perf_counter()

        def on_step_end(self, *a: object, **k: object) -> None:
            times.append(time.perf_counter() - self.t)

    batch = args.prompts * args.group
    cfg = GRPOConfig(
        output_dir=str(root / "trl"), per_device_train_batch_size=batch,
        num_generations=args.group, max_completion_length=args.max_new, max_steps=args.steps,
        use_cpu=True, report_to=[], save_strategy="no", logging_steps=10**6, beta=0.0,
        learning_rate=1e-4, bf16=False,
    )  # fmt: skip
    tok = load_tokenizer(model_dir)
    trainer = GRPOTrainer(
        model=load_causal_lm(model_dir, device="cpu", dtype="float32"), reward_funcs=reward,
        args=cfg, train_dataset=data, processing_class=tok, callbacks=[Clock()],
    )  # fmt: skip
    # TRL's update alone: its step minus the generation and scoring it does inside the step
    # (``_prepare_inputs`` generates every step here: one generation batch per optimiser step)
    prepare: list[float] = []
    inner = trainer._prepare_inputs

    def timed_prepare(batch: object) -> object:
        t = time.perf_counter()
        out = inner(batch)
        prepare.append(time.perf_counter() - t)
        return out

    trainer._prepare_inputs = timed_prepare  # type: ignore[method-assign]
    trainer.train()
    step_s = sorted(times[1:] or times)[len(times[1:] or times) // 2]
    updates = [t - g for t, g in zip(times, prepare, strict=False)]
    update_s = sorted(updates[1:] or updates)[len(updates[1:] or updates) // 2]
    return {"step_s": step_s, "update_s": update_s}


def _fusion(args: argparse.Namespace, root: Path) -> None:
    import statistics

    from _tepo_data import collect

    from tepo_agent.model.default import init_model
    from tepo_agent.store import TrajectoryStore
    from tepo_agent.trainer.config import RewardConfig
    from tepo_agent.trainer.loop import TrainConfig, Trainer, build_policy

    model = init_model(root / "model", seed=0)
    collect(model, root / "t.db", groups=args.prompts, n=args.group, scores=[1.0, 0.0])
    with TrajectoryStore(root / "t.db") as store:
        trajs = [t for g in store.scored_since(0) for t in g.members]
    tokens = sum(len(t.full_token_ids()) for t in trajs)
    print(
        f"default model ({parameter_count() / 1e6:.2f} M parameters), {len(trajs)} trajectories "
        f"({args.prompts}×{args.group}), {tokens} tokens, CPU float32; "
        f"fused and unfused steps alternated, median of {args.steps} steps each (first dropped)\n"
    )
    print("| shape | path | s/step | trained tokens/s | fused | unfused/fused |")
    print("|---|---|---|---|---|---|")
    shapes = {
        "sparse, one micro-batch (graph)": ("sparse", len(trajs)),
        "outcome, micro-batches of 2 (stream)": ("outcome", 2),
    }
    for shape, (kind, mb) in shapes.items():
        trainers = {}
        for path, fuse in (("fused", True), ("unfused", False)):
            cfg = TrainConfig(
                reward=RewardConfig(kind=kind), micro_batch_size=mb, batch_trajectories=len(trajs),
                device="cpu", learning_rate=1e-4, fuse_recompute=fuse, skip_zero_variance=False,
            )  # fmt: skip
            trainers[path] = Trainer(
                build_policy(cfg, str(model)), cfg, weights_version=None, pad_token_id=0,
                base_model=str(model),
            )  # fmt: skip
        seconds: dict[str, list[float]] = {p: [] for p in trainers}
        rates: dict[str, list[float]] = {p: [] for p in trainers}
        flags: dict[str, float] = {}
        for i in range(args.steps + 1):
            for path, trainer in trainers.items():
                m = trainer.step(trajs).metrics
                flags[path] = m["fused"]
                if i:  # the first step of each warms up
                    seconds[path].append(m["seconds"])
                    rates[path].append(m["seq_tokens"] / m["seconds"])
        med = {p: statistics.median(v) for p, v in seconds.items()}
        for path in trainers:
            ratio = f"{med['unfused'] / med['fused']:.2f}" if path == "fused" else "–"
            print(
                f"| {shape} | {path} | {med[path]:.3f} | {statistics.median(rates[path]):.0f} "
                f"| {flags[path]:.0f} | {ratio} |"
            )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--group", type=int, default=4)
    p.add_argument("--prompts", type=int, default=2)
    # 12: what the shared collection helper (tests/trainer/_tepo_data.agent_for) samples per turn
    p.add_argument("--max-new", type=int, default=12)
    p.add_argument("--side", choices=("ours", "trl"))
    p.add_argument("--fusion", action="store_true", help="fused vs unfused recompute (docstring)")
    args = p.parse_args()
    if args.fusion:
        with tempfile.TemporaryDirectory() as tmp:
            _fusion(args, Path(tmp))
        return
    if args.side:
        with tempfile.TemporaryDirectory() as tmp:
            result = (_ours if args.side == "ours" else _trl)(args, Path(tmp))
        result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print("RESULT " + json.dumps(result))
        return
    results = {}
    for side in ("ours", "trl"):
        cmd = [sys.executable, __file__, "--side", side, "--steps", str(args.steps),
               "--group", str(args.group), "--prompts", str(args.prompts),
               "--max-new", str(args.max_new)]  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True)
        line = [x for x in done.stdout.splitlines() if x.startswith("RESULT ")]
        if done.returncode or not line:
            print(f"{side} failed:\n{done.stderr[-3000:]}")
            return
        results[side] = json.loads(line[-1][7:])
    o, t = results["ours"], results["trl"]
    total = o["step_s"] + o["collect_s"]
    print(
        f"default model ({parameter_count() / 1e6:.2f} M parameters), "
        f"batch {args.prompts}×{args.group}, "
        f"{args.max_new} new tokens at most, CPU float32, median of {args.steps} steps "
        "(first dropped)\n"
    )
    rows = [
        ("step incl. generation (s)", total, t["step_s"]),
        ("optimisation step alone (s)", o["update_s"], t["step_s"]),
        ("update alone, both without generation (s)", o["update_s"], t["update_s"]),
        ("optimisation step + crash-safe state checkpoint (s)", o["step_s"], t["step_s"]),
        ("peak RSS (MB)", o["peak_rss_mb"], t["peak_rss_mb"]),
    ]
    print("| metric | tepo-agent | TRL GRPOTrainer | ours/TRL |")
    print("|---|---|---|---|")
    for name, ours, trl in rows:
        print(f"| {name} | {ours:.3f} | {trl:.3f} | {ours / trl:.2f} |")
    print(f"| publish → first request served (s) | {o['publish_to_served_s']:.3f} | – | – |")


if __name__ == "__main__":
    main()
