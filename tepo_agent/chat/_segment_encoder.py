"""Tokenize chat renderings piece by piece, between special tokens, remembering each piece.

A Hugging Face fast tokenizer cuts its input at added tokens (``<|im_start|>``, ``<|im_end|>``)
before anything else and tokenizes the pieces between them independently. A rendered
conversation is mostly pieces seen before: the system prompt with its tool schemas, the role
headers, ``<tool_response>`` wrappers. :class:`SegmentEncoder` makes that cut itself and caches
each piece's ids, so a new prompt costs only its new text (the system block of the default
model's prompt is three quarters of its characters). The result is the tokenizer's own:
the encoder is used only when every added token is matched verbatim (no ``lstrip``/``rstrip``/
``single_word``, special tokens not split) and a probe of pieces at the start, middle and end of
a text agrees with whole-text encoding; :meth:`SegmentEncoder.create` returns None otherwise.

Example::

    encoder = SegmentEncoder.create(tokenizer)
    ids = encoder.encode(text) if encoder else tokenizer.encode(text, add_special_tokens=False)
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from transformers import PreTrainedTokenizerBase

MAX_CACHED_PIECES = 4096
"""Pieces remembered; the cache starts over when it is full (prompts are long-lived text)."""

_PROBE_PIECES = (
    ("hello world", "hello", "x = 1"),
    (" hello", "\nhello world.\n\n", " x\t"),
    ("", " hello ", "hello\n"),
)


class SegmentEncoder:
    """Encodes text as the tokenizer does, caching the ids of the text between special tokens."""

    def __init__(
        self,
        encode_piece: Callable[[str], list[int]],
        special_ids: dict[str, int],
    ) -> None:
        self._encode_piece = encode_piece
        self._special_ids = special_ids
        # longest first, so the alternation matches the longest added token at each position
        alternatives = sorted(special_ids, key=len, reverse=True)
        self._splitter = re.compile("(" + "|".join(re.escape(t) for t in alternatives) + ")")
        self._cache: dict[str, tuple[int, ...]] = {}

    @classmethod
    def create(cls, tokenizer: PreTrainedTokenizerBase) -> SegmentEncoder | None:
        """An encoder equivalent to ``tokenizer.encode(text, add_special_tokens=False)``, or
        None when this tokenizer's cuts cannot be reproduced exactly."""
        backend: Any = getattr(tokenizer, "backend_tokenizer", None)
        if backend is None or not getattr(tokenizer, "is_fast", False):
            return None
        if getattr(tokenizer, "split_special_tokens", False):
            return None
        added = tokenizer.added_tokens_decoder
        if not added:
            return None
        for token in added.values():
            if token.lstrip or token.rstrip or token.single_word:
                return None
            if token.normalized and backend.normalizer is not None:
                return None  # matched on normalized text, which a regex on the raw text is not
        special_ids = {token.content: token_id for token_id, token in added.items()}

        def encode_piece(piece: str) -> list[int]:
            return list(backend.encode(piece, add_special_tokens=False).ids)

        encoder = cls(encode_piece, special_ids)

        def reference(text: str) -> list[int]:
            return list(tokenizer.encode(text, add_special_tokens=False))

        # pieces at the start, between and after added tokens, starting and ending with letters,
        # spaces and newlines: catches pre-tokenizers that treat a text's first piece apart
        probes = [
            f"{a}{marker}{b}{marker}{c}"
            for marker in list(special_ids)[:3]
            for a, b, c in _PROBE_PIECES
        ]
        if any(encoder.encode(p) != reference(p) for p in probes):
            return None
        encoder._cache.clear()
        return encoder

    def encode(self, text: str) -> list[int]:
        """The token ids of ``text``; special tokens written in it become their ids."""
        ids: list[int] = []
        for index, piece in enumerate(self._splitter.split(text)):
            if index % 2:  # the splitter's capture group: an added token
                ids.append(self._special_ids[piece])
            elif piece:
                cached = self._cache.get(piece)
                if cached is None:
                    cached = tuple(self._encode_piece(piece))
                    if len(self._cache) >= MAX_CACHED_PIECES:
                        self._cache.clear()
                    self._cache[piece] = cached
                ids.extend(cached)
        return ids


__all__ = ["MAX_CACHED_PIECES", "SegmentEncoder"]
