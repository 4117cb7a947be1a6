"""Checkpoints: published policy directories and the trainer's resumable state.

Two kinds of directory live under a run directory (``RUN``)::

    RUN/policies/v-000002-<hex>/   a published policy: a full Hugging Face model directory
                                   (safetensors + config + tokenizer) or a peft LoRA adapter
    RUN/state/step-000002/         trainer state after step 2: model/ (save_pretrained of the
                                   trained model or adapter), optimizer.pt, state.json
    RUN/state/LATEST               the name of the newest complete state directory

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
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from tepo_agent.atomic import publish_directory, write_text_atomic
from tepo_agent.errors import TrainerError

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
    model: torch.nn.Module, run_dir: str | os.PathLike[str], *, step: int, base_model: str
) -> Path:
    """Write the model (full weights, or only the adapter of a peft model) as a NEW policy dir.

    A full model directory gets the base model's tokenizer files too, so a server can load it
    alone. Returns the directory.
    """
    is_lora = hasattr(model, "peft_config")

    def fill(tmp: Path) -> None:
        model.save_pretrained(tmp, safe_serialization=True)  # type: ignore[operator]
        if not is_lora:
            copy_model_assets(base_model, tmp)

    name = f"v-{step:06d}-{uuid.uuid4().hex[:8]}"
    return _atomic_dir(Path(run_dir) / "policies", name, fill)


def save_state(
    run_dir: str | os.PathLike[str],
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    state: TrainerState,
    *,
    keep: int = 2,
) -> Path:
    """Write the trainer state after a step, point ``LATEST`` at it, keep the newest ``keep``."""
    root = Path(run_dir) / "state"

    def fill(tmp: Path) -> None:
        model.save_pretrained(tmp / "model", safe_serialization=True)  # type: ignore[operator]
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        (tmp / "state.json").write_text(json.dumps(asdict(state), indent=2))

    name = f"step-{state.step:06d}"
    if (root / name).exists():  # a crash after rename but before LATEST: the dir is complete
        shutil.rmtree(root / name)
    target = _atomic_dir(root, name, fill)
    write_text_atomic(root / "LATEST", name)
    steps = sorted(p for p in root.glob("step-*") if p.is_dir())
    for old in steps[: max(0, len(steps) - keep)]:
        shutil.rmtree(old, ignore_errors=True)
    return target


@dataclass(frozen=True)
class SavedState:
    """A complete trainer state directory: its path and its :class:`TrainerState`."""

    path: Path
    state: TrainerState

    @property
    def model_dir(self) -> Path:
        return self.path / "model"

    def optimizer_state(self, device: torch.device | str) -> dict[str, Any]:
        loaded: dict[str, Any] = torch.load(
            self.path / "optimizer.pt", map_location=device, weights_only=True
        )
        return loaded


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
    "copy_model_assets",
    "load_latest_state",
    "save_policy",
    "save_state",
]
