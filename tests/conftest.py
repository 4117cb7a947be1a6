"""Shared pytest fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest


# -- the embedded default model (tepo_agent.model.default) ---------------------------------------
@pytest.fixture(scope="session")
def default_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight default model (tokenizer + tiny Qwen2, seed 0), built once per session."""
    from tepo_agent.model.default import init_model

    return init_model(tmp_path_factory.mktemp("default-model") / "model", seed=0)
