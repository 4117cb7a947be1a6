"""Which model directory a command uses when ``--model`` is not given."""

from __future__ import annotations

from pathlib import Path

from tepo_agent.model.default import ensure_default_model
from tepo_agent.paths import bootstrapped_model_dir


def resolve_model_dir(model: str | None) -> Path:
    """``model`` if given; else the bootstrapped default model (a rebuild in the cache, else the
    weights shipped with the package); else (a source tree without the shipped weights) the
    random-weight default model (built on first use)."""
    if model:
        return Path(model)
    boot = bootstrapped_model_dir()
    if (boot / "bootstrap.json").is_file():
        return boot
    return ensure_default_model()
