"""Wall time of ``tepo-agent --help`` and of a store-only command (``feedback ID 1.0``).

Each command runs as a fresh process, ``--runs`` times, interleaved with the other commands and
with a bare ``python -c pass`` (the interpreter's own start, the floor); the median is reported.
``--src DIR`` measures another checkout of the project (its root: ``tepo_agent/``, ``tools/``,
``trainer/``), e.g. the commit before the lazy CLI::

    python benchmarks/bench_cli.py --runs 7
    git archive 761dc96 | tar -x -C /tmp/before && python benchmarks/bench_cli.py --src /tmp/before

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


def _env(src: Path | None) -> dict[str, str]:
    env = dict(os.environ)
    if src is not None:
        # tools/ and trainer/ install as tepo_agent.tools/.trainer: mirror that with links
        for name in ("tools", "trainer"):
            link = src / "tepo_agent" / name
            if not link.exists():
                link.symlink_to(src / name, target_is_directory=True)
        env["PYTHONPATH"] = str(src)
    return env


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
    parser.add_argument("--src", type=Path, help="another checkout's root (default: installed)")
    args = parser.parse_args()
    env = _env(args.src)
    with tempfile.TemporaryDirectory() as tmp:
        db, tid = _database(Path(tmp))
        commands = {
            "python -c pass": [sys.executable, "-c", "pass"],
            "tepo-agent --help": [sys.executable, "-m", "tepo_agent", "--help"],
            "tepo-agent feedback ID 1.0": [
                *(sys.executable, "-m", "tepo_agent", "feedback", tid, "1.0", "--db", str(db))
            ],
        }
        times: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(args.runs):
            for name, cmd in commands.items():
                started = time.perf_counter()
                subprocess.run(cmd, env=env, capture_output=True, check=True, cwd=tmp)
                times[name].append(time.perf_counter() - started)
    print(f"source: {args.src or 'installed'}, {args.runs} runs each, median (min..max) seconds")
    for name, values in times.items():
        print(
            f"  {name:<28} {statistics.median(values):6.3f}  ({min(values):.3f}..{max(values):.3f})"
        )


if __name__ == "__main__":
    main()
