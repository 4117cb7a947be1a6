"""``tepo-agent train``: the TEPO trainer process.

    tepo-agent train [--db PATH] [--reward outcome|sparse|dense] [--steps N]
    tepo-agent train [--db PATH] --reward sparse --watch [--every-n 64] [--every-s 600]
    tepo-agent train [--db PATH] --nproc 4 [--finetune lora] [--precision bf16]

Trains on the scored trajectories of the database (``--steps`` updates, then publishes through
the held-out gate), or with ``--watch`` keeps running and retrains whenever ``--every-n`` new
scored trajectories arrived or ``--every-s`` seconds passed. ``--nproc N`` trains data-parallel
on N ranks of this machine under torchrun (FSDP2: one GPU each, or CPU processes with gloo);
started by ``torchrun ... -m tepo_agent train ...`` itself it joins that job (several machines:
docs/distributed.md). Starts from the live policy version (after ``tepo-agent rollback``, the
version rolled back to) and says which; resumes from its last checkpoint in ``--run-dir`` after a
crash, whatever the number of ranks that wrote it. Prints a progress bar and one summary line
per step. The database must exist (``tepo-agent run --db`` creates it).
"""

from __future__ import annotations

import argparse
import functools
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tepo_agent.cli._db import DB_HELP, existing_db
from tepo_agent.errors import ConfigError

if TYPE_CHECKING:
    from tepo_agent.trainer.distributed import Dist


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "train",
        help="train on scored trajectories (TEPO GRPO) and publish through the gate",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--db", metavar="PATH|URL", help=DB_HELP)
    p.add_argument(
        "--reward",
        choices=("outcome", "sparse", "dense"),
        default="sparse",
        help="outcome: the score; sparse/dense: TEPO's entropy-shaped rewards",
    )
    p.add_argument("--alpha", type=float, default=1.0, help="dense reward bonus (default 1.0)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--steps", type=int, default=1, help="optimisation steps (default 1)")
    mode.add_argument("--watch", action="store_true", help="retrain periodically")
    p.add_argument("--every-n", type=int, default=None, help="--watch: after N new trajectories")
    p.add_argument("--every-s", type=float, default=None, help="--watch: after S seconds")
    p.add_argument("--poll-s", type=float, default=5.0, help="--watch: poll interval (seconds)")
    p.add_argument(
        "--model", metavar="DIR", help="base model directory (default: the registry's version 0)"
    )
    p.add_argument(
        "--run-dir",
        help="checkpoints and trainer state (default: DB.trainer/ beside a SQLite file; "
        "required with a postgresql:// --db)",
    )
    p.add_argument("--finetune", choices=("full", "lora"), default="full", help="what is trained")
    p.add_argument("--lora-rank", type=int, default=16, help="with --finetune lora")
    p.add_argument("--lr", type=float, default=1e-5, help="AdamW learning rate")
    p.add_argument("--batch", type=int, default=32, help="trajectories per step")
    p.add_argument("--micro-batch", type=int, default=4, help="rows per forward/backward")
    p.add_argument("--updates-per-batch", type=int, default=1, help="optimizer updates per batch")
    p.add_argument("--kl", type=float, default=0.0, help="k3 KL coefficient to the base model")
    p.add_argument("--publish-every", type=int, default=0, help="0: at the end of each run")
    p.add_argument("--gate-tasks", type=int, default=32, help="held-out items per suite (32)")
    p.add_argument(
        "--gate-suites", default="math,knowledge,deep_search", help="comma list (default: all)"
    )
    p.add_argument(
        "--gate-margin", type=float, default=0.0,
        help="reject when the paired 95%% interval of the accuracy change lies below -MARGIN",
    )  # fmt: skip
    p.add_argument(
        "--gate-format-margin", type=float, default=0.0,
        help="reject when the paired interval of the format-error change lies above this",
    )  # fmt: skip
    p.add_argument("--gate-workdir", help="where held-out worlds are built (default: cache)")
    p.add_argument("--no-gate", action="store_true", help="accept every candidate (experiments)")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto")
    p.add_argument(
        "--nproc", type=int, default=1,
        help="ranks on this machine: >1 starts them under torchrun (FSDP2)",
    )  # fmt: skip
    p.add_argument(
        "--precision", choices=("auto", "fp32", "bf16"), default="auto",
        help="auto: bf16 autocast on CUDA, float32 on CPU (weights stay float32)",
    )  # fmt: skip
    p.add_argument(
        "--activation-checkpointing", action="store_true",
        help="recompute decoder activations in the backward pass (less memory, ~1 more forward)",
    )  # fmt: skip
    p.add_argument(
        "--logit-chunk", type=int, default=1024,
        help="positions whose logits and log-softmax exist at once (memory vs. kernels)",
    )  # fmt: skip
    p.add_argument("--result-file", help=argparse.SUPPRESS)  # --nproc's launcher reads it
    p.add_argument("--seed", type=int, default=0, help="the trainer's seed (minibatch order)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=functools.partial(run, parser=p))


def _worker_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> list[str]:
    """``train`` and the options given (all but --nproc), for the ranks torchrun starts."""
    argv = ["train"]
    for action in parser._actions:  # argparse lists its options nowhere public
        value = getattr(args, action.dest, None)
        if not action.option_strings or action.dest in ("help", "nproc", "result_file"):
            continue
        if value is None or value == action.default:
            continue
        flag = action.option_strings[-1]
        argv += [flag] if isinstance(action, argparse._StoreTrueAction) else [flag, str(value)]
    return argv


def _launch(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """``--nproc N``: run N ranks under torchrun; rank 0 leaves the run's exit status in a file."""
    from tepo_agent.trainer.launch import launch

    db = existing_db(args.db)
    if args.run_dir is None and not isinstance(db, Path):
        raise ConfigError(
            "--db is a database URL: name the trainer's checkpoint folder with --run-dir, a "
            "directory every rank can reach"
        )
    run_dir = args.run_dir or f"{Path(db).resolve()}.trainer"
    with tempfile.TemporaryDirectory(prefix="tepo-train-") as tmp:
        result = Path(tmp) / "status"
        worker = [*_worker_args(parser, args), "--result-file", str(result)]
        code = launch(worker, args.nproc, run_dir=run_dir)
        if code == 0 and result.is_file():
            return int(result.read_text())
        return code


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from tepo_agent.trainer.distributed import launched_by_torchrun

    if args.nproc > 1 and not launched_by_torchrun(os.environ):
        return _launch(parser, args)
    if not launched_by_torchrun(os.environ):
        return _train(args, None)
    from tepo_agent.trainer.distributed import init_distributed, shutdown

    dist = init_distributed(args.device)
    try:
        code = _train(args, dist)
    finally:
        shutdown(dist)
    if args.result_file and dist.is_main:
        Path(args.result_file).write_text(str(code))
    return 0 if args.result_file else code


def _train(args: argparse.Namespace, dist: Dist | None) -> int:
    from dataclasses import replace

    from tepo_agent.trainer.config import LossConfig, RewardConfig
    from tepo_agent.trainer.eval_gate import GateConfig
    from tepo_agent.trainer.loop import TrainConfig
    from tepo_agent.trainer.training_run import RunConfig, TrainingRun
    from tepo_agent.trainer.watch import WatchConfig, watch

    train = TrainConfig(
        reward=RewardConfig(kind=args.reward, alpha=args.alpha),
        loss=LossConfig(kl_coef=args.kl),
        finetune=args.finetune,
        lora_rank=args.lora_rank,
        learning_rate=args.lr,
        batch_trajectories=args.batch,
        micro_batch_size=args.micro_batch,
        updates_per_batch=args.updates_per_batch,
        device=args.device,
        precision=args.precision,
        logit_chunk_tokens=args.logit_chunk,
        activation_checkpointing=args.activation_checkpointing,
        seed=args.seed,
    )
    if dist is not None:
        from tepo_agent.trainer.distributed import rank_device

        train = replace(train, device=rank_device(dist, args.device))
    gate = GateConfig(
        tasks=args.gate_tasks,
        suites=tuple(s.strip() for s in args.gate_suites.split(",") if s.strip()),  # type: ignore[arg-type]
        margin=args.gate_margin,
        format_margin=args.gate_format_margin,
        workdir=args.gate_workdir,
        enabled=not args.no_gate,
    )
    cfg = RunConfig(train=train, gate=gate, run_dir=args.run_dir, publish_every=args.publish_every)
    db = existing_db(args.db) if dist is None or dist.is_main else (args.db or "")
    with TrainingRun(db, cfg, base_model=args.model, dist=dist) as training:
        if args.watch:
            _stop_on_signals()
            watch_cfg = WatchConfig(
                min_new=args.every_n if args.every_n or args.every_s else 64,
                every_s=args.every_s,
                poll_s=args.poll_s,
            )
            trigger = " or ".join(
                t
                for t in (
                    f"{watch_cfg.min_new} new scored trajectories" if watch_cfg.min_new else "",
                    f"{watch_cfg.every_s:g} s" if watch_cfg.every_s else "",
                )
                if t
            )
            if dist is None or dist.is_main:
                print(f"watching {args.db or 'the database'}: a round after {trigger}; "
                      "Ctrl-C or SIGTERM stops", flush=True)  # fmt: skip
            watch(training, watch_cfg, progress=not args.no_progress)
            return 0
        summary = training.run(args.steps, progress=not args.no_progress)
    if not summary.steps:
        if dist is None or dist.is_main:
            print("no new scored trajectories to train on; collect and score some first")
        return 0
    rejected = [p for p in summary.published if not p.accepted]
    return 2 if rejected else 0


def _stop_on_signals() -> None:
    """Ctrl-C and SIGTERM end ``--watch`` (a process started in the background inherits SIGINT
    ignored, and a process manager stops it with SIGTERM): both raise KeyboardInterrupt, which
    the command line turns into exit status 130."""
    import signal

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
