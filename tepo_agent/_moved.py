"""Module paths that moved in the "one house" re-layout keep working for one release.

``import tepo_agent.hotswap`` (and every other path in :data:`MOVED`) still works and yields the
module at its new path, with a ``DeprecationWarning`` that names the new path. No shim files sit
beside the sub-packages: a finder at the end of ``sys.meta_path`` (installed by ``import
tepo_agent``) answers only for the old names, so a module that exists on disk always wins.
Remove this module, and its call in ``tepo_agent/__init__.py``, in the release after 0.1.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import warnings
from collections.abc import Sequence
from types import ModuleType

MOVED: dict[str, str] = {
    "tepo_agent.agent_state": "tepo_agent.agent.state",
    "tepo_agent.agent_trajectory": "tepo_agent.agent.build",
    "tepo_agent.callbacks": "tepo_agent.agent.recorder",
    "tepo_agent.chat_model": "tepo_agent.agent.chat_model",
    "tepo_agent.sync_loop": "tepo_agent.agent.sync",
    "tepo_agent.chat_format": "tepo_agent.chat.format",
    "tepo_agent.direct_template": "tepo_agent.chat._direct_template",
    "tepo_agent.segment_encoder": "tepo_agent.chat._segment_encoder",
    "tepo_agent.model_io": "tepo_agent.model.io",
    "tepo_agent.default_model": "tepo_agent.model.default",
    "tepo_agent.server.lora": "tepo_agent.model.lora",
    "tepo_agent.server.gate": "tepo_agent.server.swap_gate",
    "tepo_agent.registry": "tepo_agent.policy.registry",
    "tepo_agent.hotswap": "tepo_agent.policy.hotswap",
    "tepo_agent.vllm_env": "tepo_agent.vllm.env",
    "tepo_agent.vllm_launcher": "tepo_agent.vllm.launcher",
    "tepo_agent.tools.registry": "tepo_agent.tools.catalog",
    "tepo_agent.trainer.gate": "tepo_agent.trainer.eval_gate",
    "tepo_agent.trainer.run": "tepo_agent.trainer.training_run",
}
"""Old dotted path → new dotted path."""


class _MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Resolves an old path in :data:`MOVED` to the module at its new path."""

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return None  # the default placeholder; exec_module replaces it in sys.modules

    def exec_module(self, module: ModuleType) -> None:
        old = module.__name__
        new = MOVED[old]
        warnings.warn(
            f"{old} moved to {new}; import it from there (the old path goes in the next release)",
            DeprecationWarning,
            stacklevel=2,
        )
        # The import system returns whatever sys.modules holds for the name once this returns.
        sys.modules[old] = importlib.import_module(new)


def install() -> None:
    """Put the finder at the end of ``sys.meta_path`` (once)."""
    if not any(isinstance(f, _MovedModuleFinder) for f in sys.meta_path):
        sys.meta_path.append(_MovedModuleFinder())
