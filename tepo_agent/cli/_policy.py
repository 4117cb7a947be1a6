"""Which weights a command samples with, and which policy version its trajectories then name.

The rule ``tepo-agent run --db`` follows (the promise that every trajectory names the version
that produced it):

- without ``--model``: the database's live version (after a training step, the new one; after a
  rollback, the one rolled back to); a fresh database registers the default model as version 0;
- ``--model DIR`` that is a registered full-weight version of the database: that version;
- ``--model DIR`` on a database with no versions yet: DIR becomes version 0;
- ``--model DIR`` outside the registry: sampled as such, its trajectories name no version
  (``policy_version`` None, ``metadata["model"]`` the directory), which the trainer refuses to
  mistake for on-policy data.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tepo_agent.paths import resolve_model_dir

if TYPE_CHECKING:
    from tepo_agent.backends.transformers_backend import TransformersBackend
    from tepo_agent.policy.registry import PolicyRecord, PolicyRegistry


@dataclass(frozen=True)
class RunPolicy:
    """What a run samples with.

    Attributes:
        model_dir: The full model directory to load (for a LoRA version, the base it adapts).
        record: The registered version to serve, or None outside the registry.
        base: Version 0 (needed to merge a LoRA version), or None.
        note: One line for the user: which version and why.
    """

    model_dir: Path
    record: PolicyRecord | None
    base: PolicyRecord | None
    note: str

    @property
    def version(self) -> int | None:
        return None if self.record is None else self.record.version


def _same_dir(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    try:
        return Path(a).resolve() == Path(b).resolve()
    except OSError:
        return False


def choose_policy(registry: PolicyRegistry, model: str | None) -> RunPolicy:
    """Apply the module docstring's rule (registers version 0 on a fresh database)."""
    records = registry.list()
    if model is None:
        live = registry.live()
        if live is None:
            base = registry.ensure_base(resolve_model_dir(None))
            return RunPolicy(Path(base.path), base, base, "policy v0 (the default model)")
        base = registry.get(0) if live.kind == "lora" else None
        model_dir = Path(base.path if base is not None else live.path)
        return RunPolicy(model_dir, live, base, f"policy v{live.version} (live)")
    model_dir = resolve_model_dir(model)
    for record in records:
        if record.kind == "full" and _same_dir(record.path, model_dir):
            return RunPolicy(model_dir, record, None, f"policy v{record.version} ({record.status})")
    if not records:
        base = registry.ensure_base(model_dir)
        return RunPolicy(model_dir, base, base, f"policy v0 ({model_dir}, registered as the base)")
    note = f"{model_dir} is not a version of this database: trajectories name no policy version"
    return RunPolicy(model_dir, None, None, note)


def load_policy(backend: TransformersBackend, policy: RunPolicy) -> None:
    """Put the chosen version's weights into a backend loaded from ``policy.model_dir``."""
    if policy.record is not None and policy.record.kind == "lora":
        from tepo_agent.policy.hotswap import InProcessTarget

        InProcessTarget(backend).swap(policy.record, policy.base)
