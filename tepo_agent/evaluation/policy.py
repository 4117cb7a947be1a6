"""The policy under evaluation: a model directory, a registry version, or a server.

:func:`open_policy` gives a :class:`PolicyUnderTest` (a backend and its chat format) for the three
ways ``tepo-agent eval`` names a policy:

- ``model_dir``: a Hugging Face model directory, run in process (exact entropies);
- ``db`` (+ ``version``, default the live one): a version of a policy registry, loaded into an
  in-process backend exactly as a serving process loads it (full weights, or a LoRA adapter
  merged into version 0);
- ``base_url`` (+ ``served_model``): a running vLLM or ``tepo-agent serve``; ``model_dir`` then
  supplies the tokenizer and chat template only, and entropies are the server's exact values
  (``entropy="server"``) or an estimate (``topk``, ``surprisal``), which the report names.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tepo_agent.agent.sync import run_sync
from tepo_agent.backends.base import Backend
from tepo_agent.chat.format import ChatFormat
from tepo_agent.errors import ConfigError

EntropySource = Literal["topk", "surprisal", "server"]


@dataclass
class PolicyUnderTest:
    """A backend serving one policy, with what the report needs to say about it.

    Attributes:
        backend, chat_format: What the agent runs on.
        model_dir: The directory of the tokenizer and chat template (and of the weights when in
            process).
        policy_version: The registry version (None for a bare model directory or a server).
        entropy: ``exact`` in process; with a server, the entropy source used.
        describe: One line for the report ("model DIR", "policy v3 of DB", "server URL").
    """

    backend: Backend
    chat_format: ChatFormat
    model_dir: Path
    policy_version: int | None
    entropy: str
    describe: str

    def close(self) -> None:
        run_sync(self.backend.aclose())


def _in_process(model_dir: Path, device: str, max_batch_size: int) -> Backend:
    from tepo_agent.backends.transformers_backend import TransformersBackend

    return TransformersBackend.from_pretrained(
        model_dir, device=device, dtype="float32", max_batch_size=max_batch_size
    )


def _from_registry(
    db: str | os.PathLike[str], version: int | None, device: str, max_batch_size: int
) -> PolicyUnderTest:
    from tepo_agent.policy.hotswap import InProcessTarget
    from tepo_agent.policy.registry import PolicyRegistry
    from tepo_agent.store import open_store

    with open_store(db, create=False) as store:
        registry = PolicyRegistry(store)
        record = registry.get(version) if version is not None else registry.live()
        if record is None:
            raise ConfigError(f"{db} has no live policy; name one with --policy V")
        base = registry.get(0)
    backend = _in_process(Path(base.path), device, max_batch_size)
    if record.version != 0:
        InProcessTarget(backend).swap(record, base)  # type: ignore[arg-type]
    return PolicyUnderTest(
        backend=backend,
        chat_format=ChatFormat.from_pretrained(base.path),
        model_dir=Path(base.path),
        policy_version=record.version,
        entropy="exact",
        describe=f"policy v{record.version} ({record.status}) of {db}",
    )


def open_policy(
    *,
    model_dir: str | os.PathLike[str] | None = None,
    db: str | os.PathLike[str] | None = None,
    version: int | None = None,
    base_url: str | None = None,
    served_model: str | None = None,
    entropy: EntropySource = "server",
    device: str = "auto",
    max_batch_size: int = 32,
) -> PolicyUnderTest:
    """The policy to evaluate (see the module docstring); the caller closes it."""
    if db is not None:
        if base_url is not None:
            raise ConfigError("name the policy either by --db/--policy or by --base-url, not both")
        return _from_registry(db, version, device, max_batch_size)
    if model_dir is None:
        raise ConfigError("name a policy: --model DIR, --db DB [--policy V] or --base-url URL")
    model = Path(model_dir)
    fmt = ChatFormat.from_pretrained(model)
    if base_url is None:
        backend = _in_process(model, device, max_batch_size)
        return PolicyUnderTest(backend, fmt, model, None, "exact", f"model {model}")
    from tepo_agent.backends.http_backend import HttpBackend, HttpBackendConfig

    if not served_model:
        raise ConfigError("--base-url needs --served-model NAME (the model the server serves)")
    vocab = int(json.loads((model / "config.json").read_text())["vocab_size"])
    backend = HttpBackend(
        HttpBackendConfig(base_url=base_url, model=served_model, entropy_estimator=entropy),
        vocab_size=vocab,
    )
    label = "exact (server)" if entropy == "server" else f"estimated ({entropy})"
    return PolicyUnderTest(backend, fmt, model, None, label, f"server {base_url} ({served_model})")


__all__ = ["EntropySource", "PolicyUnderTest", "open_policy"]
