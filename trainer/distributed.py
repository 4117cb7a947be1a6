"""Data-parallel training on torch.distributed: the process group, who trains what, FSDP2.

The trainer runs as N processes (ranks) launched by ``torchrun`` (``tepo-agent train --nproc N``
starts it; ``torchrun ... -m tepo_agent train ...`` works the same and spans machines). Every rank
holds a shard of the weights, gradients and AdamW state (FSDP2, ``fully_shard``: each decoder
layer is one unit, the root :class:`~tepo_agent.trainer.token_stats.TokenStats` holds the
embedding, final norm and output layer). How a step is divided:

- **rank 0 alone** opens the store: it reads the cursor and the new trajectories and broadcasts
  them (``Dist.broadcast``), records the step and publishes; the other ranks never open it;
- the exact recompute is split: **whole trajectories** go to ranks balanced by token count
  (:func:`balance_by_tokens`), and the per-token logprobs and entropies are gathered back;
- rewards and **group baselines are computed on the whole batch**, identically on every rank,
  before the rows are split again for the update: a group whose members land on different ranks
  still has one mean and one std;
- each rank's loss is weighted by the *global* token (or row) count, and FSDP's reduce-scatter
  averages gradients over ranks, so the update equals one process's on the same batch (up to
  floating-point summation order; tests/trainer/test_distributed.py).

Every rank must run the same number of forward and backward passes (each gathers the sharded
weights from all ranks): a rank with fewer rows runs idle passes (``recompute.idle_forward``).

Collectives go through gloo on CPU and NCCL on CUDA. A rank that dies (killed, out of memory)
breaks its peers' next collective and torchrun stops the job: nothing is published, and the next
launch resumes from the last complete trainer state (written with torch.distributed.checkpoint,
which any world size can load: ``trainer.checkpoint``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from tepo_agent.errors import ConfigError

T = TypeVar("T")

# Long enough for rank 0's gate evaluation while the other ranks wait at a barrier; a dead peer
# is noticed at once anyway (its connections close), the timeout only catches a hung one.
COLLECTIVE_TIMEOUT = timedelta(minutes=60)


@dataclass(frozen=True)
class Dist:
    """This process's place in the job. ``Dist()`` is a single process (collectives are no-ops).

    Attributes:
        rank: Global rank (0 reads the store and publishes).
        world: Number of ranks.
        local_rank: Rank on this machine (picks the GPU).
        active: Whether a process group is initialised (False for a single process).
    """

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    active: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def broadcast(self, obj: T) -> T:
        """Rank 0's ``obj`` on every rank (pickled; CPU tensors only)."""
        if not self.active:
            return obj
        box: list[Any] = [obj if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]  # type: ignore[no-any-return]

    def all_gather(self, obj: T) -> list[T]:
        """Every rank's ``obj``, in rank order."""
        if not self.active:
            return [obj]
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.active:
            dist.barrier()


def launched_by_torchrun(environ: Mapping[str, str]) -> bool:
    """Whether this process is a rank that torchrun (or another launcher) started."""
    return all(name in environ for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"))


def init_distributed(device: str, environ: Mapping[str, str] | None = None) -> Dist:
    """Join the job torchrun started (gloo on CPU, NCCL on CUDA); returns this rank's place.

    ``device``: the run's ``TrainConfig.device`` (``auto`` is CUDA when available). On CUDA
    every rank takes the GPU of its local rank.
    """
    env = os.environ if environ is None else environ
    if not launched_by_torchrun(env):
        raise ConfigError(
            "not started by torchrun (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT unset): launch "
            "with `tepo-agent train --nproc N` or `torchrun --nproc-per-node N -m tepo_agent train`"
        )
    rank, world = int(env["RANK"]), int(env["WORLD_SIZE"])
    local_rank = int(env.get("LOCAL_RANK", "0"))
    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(
            "nccl" if cuda else "gloo", rank=rank, world_size=world, timeout=COLLECTIVE_TIMEOUT
        )
    return Dist(rank=rank, world=world, local_rank=local_rank, active=True)


def rank_device(d: Dist, device: str) -> str:
    """The device this rank trains on: ``cuda:<local rank>`` on CUDA, else ``device``."""
    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    return f"cuda:{d.local_rank}" if cuda and d.active else device


def shutdown(d: Dist) -> None:
    """Leave the process group (the end of a run)."""
    if d.active and dist.is_initialized():
        dist.destroy_process_group()


def balance_by_tokens(lengths: Sequence[int], world: int) -> list[list[int]]:
    """Assign whole rows to ``world`` ranks so that their token counts are as even as possible.

    Longest first, each to the rank with the fewest tokens so far (ties: the lower rank): the
    LPT rule, within 4/3 of the best split. Pure and deterministic, so every rank computes the
    same assignment without talking to the others.

    Returns:
        ``assignment[r]``: the row indices of rank r, ascending.
    """
    if world < 1:
        raise ConfigError(f"world must be >= 1, got {world}")
    loads = [0] * world
    assignment: list[list[int]] = [[] for _ in range(world)]
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        r = min(range(world), key=lambda r: (loads[r], r))
        assignment[r].append(i)
        loads[r] += lengths[i]
    return [sorted(rows) for rows in assignment]


def passes_needed(assignment: Sequence[Sequence[int]], micro_batch_size: int) -> int:
    """Forward passes of the busiest rank: every rank runs this many (idle ones if short)."""
    return max(-(-len(rows) // micro_batch_size) for rows in assignment)


def gather_rows(
    d: Dist,
    assignment: Sequence[Sequence[int]],
    local: Sequence[torch.Tensor],
    shape: tuple[int, int],
) -> list[torch.Tensor]:
    """Reassemble (B, T) tensors whose rows were computed on different ranks.

    Args:
        d: This rank.
        assignment: The rows of each rank (from :func:`balance_by_tokens`).
        local: This rank's tensors, (len(assignment[rank]), T_r) each, in its row order.
        shape: (B, T) of the whole batch.
    """
    pieces = d.all_gather([t.detach().float().cpu() for t in local])
    out = [torch.zeros(shape, dtype=torch.float32) for _ in local]
    for rows, tensors in zip(assignment, pieces, strict=True):
        for full, part in zip(out, tensors, strict=True):
            for j, row in enumerate(rows):
                full[row, : part.shape[1]] = part[j]
    return out


def shard(module: torch.nn.Module, layers: Sequence[torch.nn.Module], device: str) -> None:
    """FSDP2 over all ranks: each of ``layers`` one unit, ``module`` (the root) the rest.

    Parameters, gradients and optimizer state become DTensors sharded along dim 0; build the
    optimizer after this call, from ``module.parameters()``.
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    device_type = torch.device(device).type
    mesh = init_device_mesh(device_type, (dist.get_world_size(),))
    for layer in layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(module, mesh=mesh)


__all__ = [
    "COLLECTIVE_TIMEOUT",
    "Dist",
    "balance_by_tokens",
    "gather_rows",
    "init_distributed",
    "launched_by_torchrun",
    "passes_needed",
    "rank_device",
    "shard",
    "shutdown",
]
