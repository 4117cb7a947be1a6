"""Token ids to the text pieces a page or terminal colours one by one.

Each id is decoded on its own (cached by id), so a piece is exactly one sampled token; a token
that is half of a multi-byte character shows as U+FFFD, as in any per-token view. Without a
tokenizer a token shows as ``⟨id⟩``.

Which tokenizer: ``--model DIR`` when given, else the base model the registry records as
version 0 (``policies.path``), else the default model directories if they were built.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tepo_agent.errors import ConfigError, StoreError
from tepo_agent.paths import bootstrapped_model_dir, default_home
from tepo_agent.store import is_store_url, open_store


class TokenDecoder:
    """Decode token ids one by one with a per-id cache (see the module docstring)."""

    def __init__(self, tokenizer: Any | None) -> None:
        self.tokenizer = tokenizer
        self._cache: dict[int, str] = {}

    def pieces(self, ids: Sequence[int]) -> list[str]:
        if self.tokenizer is None:
            return [f"⟨{i}⟩" for i in ids]
        missing = [i for i in dict.fromkeys(ids) if i not in self._cache]
        if missing:
            texts = self.tokenizer.batch_decode([[i] for i in missing])
            self._cache.update(zip(missing, texts, strict=True))
        return [self._cache[i] for i in ids]


def _has_tokenizer(path: Path) -> bool:
    return (path / "tokenizer.json").is_file() or (path / "tokenizer_config.json").is_file()


def candidate_dirs(db_path: str | os.PathLike[str] | None) -> list[Path]:
    """Where a tokenizer is looked for when no model is named, in order."""
    found: list[Path] = []
    if db_path is not None and (is_store_url(db_path) or Path(db_path).is_file()):
        try:
            with open_store(db_path, create=False, read_only=True) as store:
                base = store.policy(0)
        except StoreError:
            base = None
        if base is not None:
            found.append(Path(base.path))
    found += [bootstrapped_model_dir(), default_home() / "models" / "default-init"]
    return found


def load_decoder(
    model: str | os.PathLike[str] | None, db_path: str | os.PathLike[str] | None = None
) -> TokenDecoder:
    """A decoder with the tokenizer of ``model``, or of the first candidate directory that has
    one (see the module docstring), or none."""
    if model and not _has_tokenizer(Path(model)):
        raise ConfigError(f"{model} has no tokenizer (tokenizer.json); pass a model directory")
    dirs = [Path(model)] if model else candidate_dirs(db_path)
    for path in dirs:
        if _has_tokenizer(path):
            from transformers import AutoTokenizer

            return TokenDecoder(AutoTokenizer.from_pretrained(str(path)))
    return TokenDecoder(None)
