"""Data-parallel scaling of the trainer on CPU: one process, 1 rank and 2 ranks on the same batch.

    python benchmarks/bench_distributed.py [--groups 4] [--group 4] [--steps 5]
        [--threads-per-rank 1] [--hidden 128 --layers 4]

Collects ``groups × group`` scored trajectories with the real agent on a random-weight default-
shaped model, then times ``Trainer.step`` (recompute + rewards + advantages + update: the step
without the store and the checkpoint) on that same global batch: in one plain process, and under
torchrun (FSDP2 over gloo) with 1 and with 2 ranks, each rank (and the plain process) with
``--threads-per-rank`` torch threads: 2 ranks use twice the cores of 1, which is what scaling
measures. (On a machine shared with other work, more threads per process than free cores makes
OpenMP's waiting threads spin against each other, and times balloon.)
Each figure is the median of ``--steps`` steps after one warm-up step (every timed step runs the
exact recompute: after the first update the logged values are off-policy). Scaling efficiency =
(1-rank time / 2-rank time) / 2. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests" / "trainer"))


def _worker(args: argparse.Namespace) -> None:
    """One rank (or the plain process): time Trainer.step on the whole database's batch."""
    import torch

    from tepo_agent.trainer.distributed import Dist, init_distributed, launched_by_torchrun
    from tepo_agent.trainer.eval_gate import GateConfig
    from tepo_agent.trainer.loop import TrainConfig
    from tepo_agent.trainer.training_run import RunConfig, TrainingRun

    distributed = launched_by_torchrun(os.environ)
    d = init_distributed("cpu") if distributed else Dist()
    torch.set_num_threads(args.threads_per_rank)
    cfg = RunConfig(
        train=TrainConfig(
            batch_trajectories=args.groups * args.group, micro_batch_size=args.micro_batch,
            device="cpu", learning_rate=1e-4,
        ),
        gate=GateConfig(enabled=False), run_dir=str(Path(args.out).parent / "run"),
    )  # fmt: skip
    with TrainingRun(args.db, cfg, out=io.StringIO(), dist=d) as run:
        trajectories, _ = run.pull()
        times = []
        for _ in range(args.steps + 1):
            d.barrier()
            start = time.perf_counter()
            result = run.trainer.step(trajectories)
            d.barrier()
            times.append(time.perf_counter() - start)
    if d.is_main:
        tokens = result.metrics["seq_tokens"]
        Path(args.out).write_text(json.dumps({"step_s": statistics.median(times[1:]),
                                              "tokens": tokens}))  # fmt: skip
    if distributed:
        import torch.distributed

        torch.distributed.destroy_process_group()


def _launch(args: argparse.Namespace, root: Path, nproc: int | None) -> dict[str, float]:
    from tepo_agent.net import free_port

    out = root / f"n{nproc}" / "result.json"
    out.parent.mkdir()
    worker = [__file__, "--worker", "--db", str(root / "t.db"), "--out", str(out),
              "--groups", str(args.groups), "--group", str(args.group),
              "--steps", str(args.steps), "--threads-per-rank", str(args.threads_per_rank),
              "--micro-batch", str(args.micro_batch)]  # fmt: skip
    launcher = (
        []
        if nproc is None
        else ["-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", str(nproc),
              "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{free_port()}"]
    )  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads_per_rank)}
    done = subprocess.run([sys.executable, *launcher, *worker], env=env, capture_output=True,
                          text=True)  # fmt: skip
    if done.returncode:
        raise SystemExit(f"nproc={nproc} failed:\n{done.stderr[-3000:]}")
    return json.loads(out.read_text())  # type: ignore[no-any-return]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--groups", type=int, default=4)
    p.add_argument("--group", type=int, default=4)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--threads-per-rank", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--micro-batch", type=int, default=4)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--db", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        _worker(args)
        return
    from _tepo_data import collect

    from tepo_agent.model.default import DefaultModelConfig, init_model, parameter_count
    from tepo_agent.policy.registry import PolicyRegistry

    config = DefaultModelConfig(
        hidden_size=args.hidden, intermediate_size=4 * args.hidden, num_hidden_layers=args.layers
    )
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = init_model(root / "model", seed=0, config=config)
        collect(model, root / "t.db", groups=args.groups, n=args.group, scores=[1.0, 0.0])
        with PolicyRegistry(root / "t.db") as registry:
            registry.ensure_base(str(model))
        runs = (("one process", None), ("torchrun, 1 rank", 1), ("torchrun, 2 ranks", 2))
        rows = {name: _launch(args, root, n) for name, n in runs}
    one = rows["torchrun, 1 rank"]["step_s"]
    two = rows["torchrun, 2 ranks"]["step_s"]
    print(
        f"model: hidden {args.hidden}, {args.layers} layers ({parameter_count(config) / 1e6:.2f} M "
        f"parameters); batch {args.groups}×{args.group} = {args.groups * args.group} trajectories, "
        f"{rows['one process']['tokens']:.0f} tokens; micro-batch {args.micro_batch}; "
        f"{args.threads_per_rank} torch thread(s) per rank; median of {args.steps} steps\n"
    )
    print("| run | step (s) | tokens/s |")
    print("|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['step_s']:.3f} | {r['tokens'] / r['step_s']:.0f} |")
    print(f"\nspeed-up 2 ranks / 1 rank: {one / two:.2f}x; scaling efficiency {one / two / 2:.0%}")


if __name__ == "__main__":
    main()
