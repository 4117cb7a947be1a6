"""Checkpoints: published policy directories and the trainer's resumable state.

Two kinds of directory live under a run directory (``RUN``)::

    RUN/policies/v-000002-<hex>/   a published policy: a full Hugging Face model directory
                                   (safetensors + config + tokenizer) or a peft LoRA adapter
    RUN/state/step-000002/         trainer state after step 2: dcp/ (the trainable weights and
                                   the AdamW state, torch.distributed.checkpoint), state.json
    RUN/state/LATEST               the name of the newest complete state directory

The trainer state is written with torch.distributed.checkpoint (DCP): every rank writes its own
shards, keyed by parameter name, and a job of any world size (one process included) loads them,
resharding on the fly. So a run started on 2 ranks resumes on 1 or 4 and back. The frozen base
weights of a LoRA run are not in it (they come from the base model). States written before DCP
(model/ + optimizer.pt) still load in one process. A published policy is one consolidated Hugging
Face directory whatever the world size: the shards are gathered onto rank 0, which writes it.

Every directory is written under a temporary name in the same parent and renamed into place, so
a process killed mid-write (SIGKILL) leaves either the previous complete directory or the new
complete one, never half of one. ``LATEST`` is replaced with ``os.replace`` after the rename.
Policy directories are never overwritten: every publish gets a NEW directory (vLLM keys its
prefix cache on the adapter path, and a live server may still be reading the old one).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from tepo_agent.atomic import publish_directory, write_text_atomic
from tepo_agent.errors import ConfigError, TrainerError
from tepo_agent.trainer.distributed import Dist

# Files of a model directory that are not weights or config: copied next to a published full
# checkpoint so that it loads on its own (tokenizer, chat template, generation config).
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


@dataclass(frozen=True)
class TrainerState:
    """What the trainer needs to continue after a crash.

    Attributes:
        step: Optimisation steps completed.
        cursor_seq: The store's ``score_seq`` cursor: every trajectory at or below it was used.
        weights_version: The registry version whose weights equal the model's, or None when the
            model has changed since the last publish (then every logged token is off-policy).
        base_model: The base model directory training started from.
        finetune: ``full`` or ``lora``.
        last_published: The last version this run registered (promoted or rejected), if any.
    """

    step: int
    cursor_seq: int
    weights_version: int | None
    base_model: str
    finetune: str
    last_published: int | None = None


def _atomic_dir(parent: Path, name: str, fill: Callable[[Path], None]) -> Path:
    """Create ``parent/name`` by filling a temporary sibling and renaming it into place."""
    target = parent / name
    if target.exists():
        raise TrainerError(f"{target} already exists; checkpoint directories are never reused")
    return publish_directory(target, fill)


def copy_model_assets(base_dir: str | os.PathLike[str], out: Path) -> None:
    """Copy a model directory's non-weight files (tokenizer, templates) into ``out``."""
    for item in Path(base_dir).iterdir():
        if (
            item.is_file()
            and not item.name.endswith(_WEIGHT_SUFFIXES)
            and item.name
            not in (
                "config.json",
                "model.safetensors.index.json",
            )
        ):
            shutil.copy2(item, out / item.name)


def save_policy(
    model: torch.nn.Module,
    run_dir: str | os.PathLike[str],
    *,
    step: int,
    base_model: str,
    state_dict: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write the model (full weights, or only the adapter of a peft model) as a NEW policy dir.

    A full model directory gets the base model's tokenizer files too, so a server can load it
    alone. ``state_dict``: the weights to write instead of the model's own (the consolidated
    weights of a sharded model, :func:`consolidated_weights`). Returns the directory.
    """
    is_lora = hasattr(model, "peft_config")

    if state_dict is not None and not is_lora:
        # a tied output layer is gathered under both names; keep the one the model saves
        own = {name for name, _ in model.named_parameters()}
        own |= {name for name, _ in model.named_buffers()}
        state_dict = {k: v for k, v in state_dict.items() if k in own}

    def fill(tmp: Path) -> None:
        model.save_pretrained(tmp, safe_serialization=True, state_dict=state_dict)  # type: ignore[operator]
        if not is_lora:
            copy_model_assets(base_model, tmp)

    name = f"v-{step:06d}-{uuid.uuid4().hex[:8]}"
    return _atomic_dir(Path(run_dir) / "policies", name, fill)


def _options(**extra: bool) -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    # frozen weights (a LoRA run's base model) are rebuilt from the base model, never saved
    return StateDictOptions(ignore_frozen_params=True, **extra)


def consolidated_weights(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The trainable model's full weights on rank 0's CPU (empty on the other ranks).

    A collective when the model is sharded: every rank must call it. ``module`` is the
    trainer's ``TokenStats``; the keys are those of the model it wraps (its ``lm.`` prefix cut),
    trainable weights only (all of them for full fine-tuning, the adapter for LoRA).
    """
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    weights = get_model_state_dict(module, options=_options(full_state_dict=True, cpu_offload=True))
    return {k.removeprefix("lm."): v for k, v in weights.items()}


def save_state(
    run_dir: str | os.PathLike[str],
    module: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    state: TrainerState,
    *,
    keep: int = 2,
    dist: Dist | None = None,
) -> Path:
    """Write the trainer state after a step, point ``LATEST`` at it, keep the newest ``keep``.

    ``module``: the trainer's ``TokenStats`` (sharded or not). With several ranks every rank
    must call it (it writes its shards); rank 0 names the directory and renames it into place
    once all shards are written.
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    d = dist if dist is not None else Dist()
    root = Path(run_dir) / "state"
    name = f"step-{state.step:06d}"
    tmp: Path | None = None
    if d.is_main:
        if (root / name).exists():  # a crash after rename but before LATEST: the dir is complete
            shutil.rmtree(root / name)
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=root))
    tmp = d.broadcast(tmp)
    assert tmp is not None
    try:
        model_sd, optim_sd = get_state_dict(module, optimizer, options=_options())
        dcp.save(
            {"model": model_sd, "optim": optim_sd}, checkpoint_id=tmp / "dcp", no_dist=not d.active
        )
        d.barrier()
        if d.is_main:
            (tmp / "state.json").write_text(json.dumps(asdict(state), indent=2))
            os.replace(tmp, root / name)
            write_text_atomic(root / "LATEST", name)
            steps = sorted(p for p in root.glob("step-*") if p.is_dir())
            for old in steps[: max(0, len(steps) - keep)]:
                shutil.rmtree(old, ignore_errors=True)
    finally:
        if d.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
    d.barrier()
    return root / name


@dataclass(frozen=True)
class SavedState:
    """A complete trainer state directory: its path and its :class:`TrainerState`."""

    path: Path
    state: TrainerState

    @property
    def model_dir(self) -> Path:
        """The weights of a state written before DCP (``model/``, a model or adapter dir)."""
        return self.path / "model"

    @property
    def sharded(self) -> bool:
        """Whether the state was written with torch.distributed.checkpoint (``dcp/``)."""
        return (self.path / "dcp").is_dir()

    def load_into(
        self, module: torch.nn.Module, optimizer: torch.optim.Optimizer, *, distributed: bool
    ) -> None:
        """Load the saved weights and AdamW state into the trainer's ``TokenStats`` and optimizer
        (sharded or not, any world size). A state from before DCP holds its weights in
        :attr:`model_dir` (the model was built from it) and loads its optimizer here."""
        if not self.sharded:
            if distributed:
                raise ConfigError(
                    f"{self.path} was written by a single-process trainer before sharded "
                    "checkpoints; resume it once without --nproc (it then writes a state any "
                    "world size can load), or use another --run-dir"
                )
            device = next(module.parameters()).device
            loaded: dict[str, Any] = torch.load(
                self.path / "optimizer.pt", map_location=device, weights_only=True
            )
            optimizer.load_state_dict(loaded)
            return
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

        model_sd, optim_sd = get_state_dict(module, optimizer, options=_options())
        target = {"model": model_sd, "optim": optim_sd}
        dcp.load(target, checkpoint_id=self.path / "dcp", no_dist=not distributed)
        set_state_dict(
            module,
            optimizer,
            model_state_dict=target["model"],
            optim_state_dict=target["optim"],
            options=_options(),
        )


def load_latest_state(run_dir: str | os.PathLike[str]) -> SavedState | None:
    """The newest complete trainer state of ``run_dir``, or None when it has none."""
    root = Path(run_dir) / "state"
    latest = root / "LATEST"
    if not latest.is_file():
        return None
    path = root / latest.read_text().strip()
    state_file = path / "state.json"
    if not state_file.is_file():
        raise TrainerError(
            f"{latest} names {path.name}, which is incomplete; delete {root} to start over"
        )
    try:
        state = TrainerState(**json.loads(state_file.read_text()))
    except (ValueError, TypeError) as exc:
        raise TrainerError(f"{state_file} is not a trainer state ({exc}); delete {root}") from exc
    return SavedState(path=path, state=state)


__all__ = [
    "SavedState",
    "TrainerState",
    "consolidated_weights",
    "copy_model_assets",
    "load_latest_state",
    "save_policy",
    "save_state",
]
