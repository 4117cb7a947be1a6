"""Data-parallel training under torchrun (FSDP2 over gloo, CPU ranks): real processes, real store.

Two ranks update the weights as one process does on the same batch; a state written by two
ranks resumes in one process and back; a killed rank fails the job with nothing published.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from _tepo_data import collect, make_model
from safetensors.torch import load_file

from tepo_agent.policy.registry import PolicyRegistry
from tepo_agent.trainer.distributed import balance_by_tokens, launched_by_torchrun, passes_needed
from tepo_agent.trainer.launch import torchrun_command

# every training run here starts torchrun and 2 fresh interpreters (torch + transformers imports):
# ~15 s on a quiet 2-core machine, minutes on a busy one; the fixture below runs four
pytestmark = pytest.mark.timeout(1800)

# lr 1e-3: AdamW moves every weight by ~1e-3 per step, 100x the tolerance of the comparison
TRAIN = ["--batch", "4", "--micro-batch", "3", "--lr", "1e-3", "--device", "cpu",
         "--no-gate", "--no-progress"]  # fmt: skip


def _train(db: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "tepo_agent", "train", "--db", str(db), *TRAIN, *args],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip


def _published(db: Path) -> list[dict[str, torch.Tensor]]:
    with PolicyRegistry(db) as registry:
        records = [r for r in registry.list() if r.version > 0]
    return [load_file(str(Path(r.path) / "model.safetensors")) for r in records]


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert sorted(a) == sorted(b)
    return max(float((a[k] - b[k]).abs().max()) for k in a)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny model and a database with three steps of scored groups (4 trajectories each)."""
    root = tmp_path_factory.mktemp("dist")
    model = make_model(root / "model")
    db = root / "t.db"
    collect(model, db, groups=3, n=4, scores=[1.0, 0.0])
    with PolicyRegistry(db) as registry:
        registry.ensure_base(str(model))
    return model, db


@pytest.fixture(scope="module")
def runs(data: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One process trains 3 steps; the same 3 steps run as 2 ranks → 1 process → 2 ranks."""
    _, db = data
    root = tmp_path_factory.mktemp("runs")
    single, chain = root / "single.db", root / "chain.db"
    shutil.copy(db, single)
    shutil.copy(db, chain)
    done = _train(single, "--steps", "3", "--publish-every", "1")
    assert done.returncode == 0, done.stderr[-3000:]
    outputs = []
    for nproc in ("2", "1", "2"):
        done = _train(chain, "--steps", "1", "--nproc", nproc)
        assert done.returncode == 0, done.stderr[-3000:]
        outputs.append(done.stdout)
    (root / "chain.out").write_text("\n".join(outputs))
    return {"single": single, "chain": chain, "out": root / "chain.out"}


@pytest.mark.slow
def test_two_ranks_update_the_weights_as_one_process_does(
    data: tuple[Path, Path], runs: dict[str, Path]
) -> None:
    model, _ = data
    base = load_file(str(model / "model.safetensors"))
    one, two = _published(runs["single"])[0], _published(runs["chain"])[0]
    assert _max_diff(one, base) > 5e-4  # the step moved the weights
    assert _max_diff(two, one) < 1e-5  # fp32: 2 ranks = 1 rank up to summation order
    assert set(two) == set(base)  # the base model's tensors, no more (a tied output layer once)


@pytest.mark.slow
def test_a_state_written_by_two_ranks_resumes_in_one_process_and_back(
    runs: dict[str, Path],
) -> None:
    out = runs["out"].read_text()
    assert "training from live policy v0" in out
    assert "resuming from step 1" in out and "step 2:" in out
    assert "resuming from step 2" in out and "step 3:" in out
    single, chain = _published(runs["single"]), _published(runs["chain"])
    assert len(single) == len(chain) == 3
    # AdamW's moments crossed 2 → 1 → 2 ranks intact: step 3 lands where one process's does
    assert _max_diff(chain[-1], single[-1]) < 1e-5
    assert _max_diff(chain[-1], chain[-2]) > 5e-4


@pytest.mark.slow
def test_two_ranks_train_a_lora_adapter_as_one_process_does(
    data: tuple[Path, Path], tmp_path: Path
) -> None:
    _, source = data
    adapters = []
    for nproc in ("1", "2"):
        db = tmp_path / f"n{nproc}.db"
        shutil.copy(source, db)
        done = _train(db, "--steps", "1", "--nproc", nproc, "--finetune", "lora",
                      "--lora-rank", "4")  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
        with PolicyRegistry(db) as registry:
            (record,) = [r for r in registry.list() if r.version > 0]
        assert record.kind == "lora"
        adapters.append(load_file(str(Path(record.path) / "adapter_model.safetensors")))
    one, two = adapters
    assert all("lora_" in k for k in two)  # the adapter alone, not the gathered base model
    assert max(float(v.abs().max()) for k, v in two.items() if "lora_B" in k) > 5e-4
    assert _max_diff(two, one) < 1e-5


def _parent(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])


def _rank_pid(ancestor: int, rank: int) -> int | None:
    """The pid of the process below ``ancestor`` that torchrun started as ``rank``."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            env = (proc / "environ").read_bytes().split(b"\0")
            pid = int(proc.name)
            chain = [pid]
            while chain[-1] > 1 and chain[-1] != ancestor:
                chain.append(_parent(chain[-1]))
        except (OSError, ValueError, IndexError):
            continue
        if f"RANK={rank}".encode() in env and chain[-1] == ancestor:
            return pid
    return None


@pytest.mark.slow
def test_a_killed_rank_fails_the_job_clearly_and_publishes_nothing(
    data: tuple[Path, Path], tmp_path: Path
) -> None:
    _, source = data
    db = tmp_path / "t.db"
    shutil.copy(source, db)
    proc = subprocess.Popen(
        [sys.executable, "-m", "tepo_agent", "train", "--db", str(db), *TRAIN,
         "--batch", "2", "--steps", "3", "--nproc", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    latest = Path(f"{db}.trainer/state/LATEST")
    deadline = time.monotonic() + 300
    while not latest.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    victim = _rank_pid(proc.pid, 1)
    assert victim is not None, "rank 1 not found"
    os.kill(victim, signal.SIGKILL)  # step 1 is saved; steps 2-3 and the publish are not done
    out, err = proc.communicate(timeout=300)
    assert proc.returncode != 0, out
    assert "the 2-rank job failed" in err and "Run the same command again" in err
    assert "SIGKILL" in err  # torchrun names the rank that died and how
    assert "published version" not in out
    with PolicyRegistry(db) as registry:
        assert [r.version for r in registry.list()] == [0]


def test_whole_trajectories_go_to_ranks_balanced_by_tokens() -> None:
    # longest first, each to the least-loaded rank (ties: lower rank)
    #   len 9 → r0 (9) | 7 → r1 (7) | 5 → r1 (12) | 4 → r0 (13) | 3 → r1 (15) | 1 → r0 (14)
    assert balance_by_tokens([5, 9, 1, 7, 3, 4], 2) == [[1, 2, 5], [0, 3, 4]]
    assert balance_by_tokens([5, 9, 1], 1) == [[0, 1, 2]]
    assert balance_by_tokens([4], 3) == [[0], [], []]
    assert passes_needed([[0, 1, 2], [3]], 2) == 2  # the rank with one row runs an idle pass
    assert passes_needed([[], []], 2) == 0


def test_torchrun_is_recognised_and_launched_with_a_local_rendezvous() -> None:
    env = {"RANK": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"}
    assert launched_by_torchrun(env)
    assert not launched_by_torchrun({"RANK": "1"})
    cmd = torchrun_command(["train", "--db", "t.db"], 2, 29500)
    assert cmd[1:3] == ["-m", "torch.distributed.run"]
    assert cmd[cmd.index("--nproc-per-node") + 1] == "2"
    assert cmd[cmd.index("--rdzv-endpoint") + 1] == "127.0.0.1:29500"
    assert cmd[-4:] == ["tepo_agent", "train", "--db", "t.db"]


def test_the_ranks_get_the_options_given_but_nproc() -> None:
    from tepo_agent.cli import build_parser
    from tepo_agent.cli.train import _worker_args

    parser = build_parser(load=("train",))
    argv = ["train", "--db", "t.db", "--nproc", "4", "--lr", "0.001", "--no-gate", "--watch"]
    args = parser.parse_args(argv)
    train_parser = args.func.keywords["parser"]
    worker = _worker_args(train_parser, args)
    assert worker[0] == "train" and "--nproc" not in worker
    assert worker[worker.index("--db") + 1] == "t.db"
    assert worker[worker.index("--lr") + 1] == "0.001"
    assert "--no-gate" in worker and "--watch" in worker
    assert "--steps" not in worker  # defaults stay defaults: the ranks parse the same parser
    assert train_parser.parse_args(worker[1:]).lr == args.lr
