"""Start ``tepo-agent train`` as N ranks under torchrun on this machine (``--nproc N``).

``launch`` runs ``python -m torch.distributed.run`` (torchrun) with a c10d rendezvous on a free
local port and no restarts, each rank running ``python -m tepo_agent train`` with the same
options; the ranks find their place from the variables torchrun sets (``trainer.distributed``).
When any rank fails, torchrun stops the others and exits non-zero; ``launch`` then says so in
one line that names what to do. Ctrl-C stops the ranks (torchrun forwards it) and then the
launcher, as an interruption, not a failure. For several machines, run torchrun yourself on each
(docs/distributed.md).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence

from tepo_agent.errors import ConfigError
from tepo_agent.net import free_port


def torchrun_command(worker_args: Sequence[str], nproc: int, port: int) -> list[str]:
    """The torchrun command line that starts ``nproc`` ranks of ``tepo-agent <worker_args>``."""
    if nproc < 1:
        raise ConfigError(f"--nproc must be >= 1, got {nproc}")
    return [
        sys.executable, "-m", "torch.distributed.run",
        "--nnodes", "1", "--nproc-per-node", str(nproc),
        "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}",
        "--max-restarts", "0",
        "-m", "tepo_agent", *worker_args,
    ]  # fmt: skip


def failure_message(returncode: int, nproc: int, run_dir: str) -> str:
    """What a failed job tells the user (torchrun printed which rank failed and why above)."""
    return (
        f"tepo-agent train: the {nproc}-rank job failed (torchrun exit status {returncode}; "
        "the failed rank and its error are reported above). A rank that stops makes the others "
        "stop: no version was published after the last 'published version' line. Run the same "
        f"command again to resume from the last trainer state in {run_dir}."
    )


def launch(worker_args: Sequence[str], nproc: int, *, run_dir: str) -> int:
    """Run the job to its end; returns its exit status (0, or the failure after the message)."""
    proc = subprocess.Popen(torchrun_command(worker_args, nproc, free_port()))
    interrupted = False
    while True:
        try:
            returncode = proc.wait()
            break
        except KeyboardInterrupt:  # Ctrl-C reaches torchrun too, which stops the ranks: wait
            interrupted = True
    if interrupted:
        raise KeyboardInterrupt
    if returncode != 0:
        print(failure_message(returncode, nproc, run_dir), file=sys.stderr, flush=True)
    return returncode


__all__ = ["failure_message", "launch", "torchrun_command"]
