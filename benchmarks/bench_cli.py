"""Wall time of ``tepo-agent --help`` and of a store-only command (``feedback ID 1.0``).

Each command runs as a fresh process, ``--runs`` times, interleaved with the other commands and
with a bare ``python -c pass`` (the interpreter's own start, the floor); the median is reported.
``--before DIR`` also measures another checkout of the project (its root: ``tepo_agent/``,
``tools/``, ``trainer/``), e.g. the commit before the lazy CLI, interleaved with this one so both
see the same machine load::

    mkdir /tmp/before && git archive 761dc96 | tar -x -C /tmp/before
    python benchmarks/bench_cli.py --runs 7 --before /tmp/before

Results go to benchmarks/RESULTS.md by hand.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _env(src: Path) -> dict[str, str]:
    """Run ``src``'s tepo_agent instead of the installed one (PYTHONPATH wins over the editable
    install's finder); tools/ and trainer/ install as tepo_agent.tools/.trainer, mirrored by
    links."""
    for name in ("tools", "trainer"):
        link = src / "tepo_agent" / name
        if not link.exists():
            link.symlink_to(src.resolve() / name, target_is_directory=True)
    return {**os.environ, "PYTHONPATH": str(src)}


def _database(folder: Path) -> tuple[Path, str]:
    from tepo_agent.store import TrajectoryStore
    from tepo_agent.trajectory import Trajectory, Turn

    path = folder / "bench.db"
    turn = Turn("assistant", [1], text="4", logprobs=[-0.1], entropies=[0.2], policy_version=0)
    trajectory = Trajectory(task="2+2?", prompt_token_ids=[1, 2], turns=[turn])
    with TrajectoryStore(path) as store:
        store.add(trajectory)
    return path, trajectory.id


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--before", type=Path, help="another checkout's root, measured too")
    args = parser.parse_args()
    trees = {"": dict(os.environ)}
    if args.before is not None:
        trees = {"before: ": _env(args.before), "after:  ": dict(os.environ)}
    with tempfile.TemporaryDirectory() as tmp:
        db, tid = _database(Path(tmp))
        tepo = [sys.executable, "-m", "tepo_agent"]
        commands = {"python -c pass": ([sys.executable, "-c", "pass"], dict(os.environ))}
        for label, env in trees.items():
            commands[f"{label}tepo-agent --help"] = ([*tepo, "--help"], env)
            feedback = [*tepo, "feedback", tid, "1.0", "--db", str(db)]
            commands[f"{label}tepo-agent feedback ID 1.0"] = (feedback, env)
        times: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(args.runs):
            for name, (cmd, env) in commands.items():
                started = time.perf_counter()
                subprocess.run(cmd, env=env, capture_output=True, check=True, cwd=tmp)
                times[name].append(time.perf_counter() - started)
    print(f"{args.runs} runs each, interleaved; median (min..max) seconds")
    for name, values in times.items():
        print(
            f"  {name:<36} {statistics.median(values):6.3f}  ({min(values):.3f}..{max(values):.3f})"
        )


if __name__ == "__main__":
    main()
