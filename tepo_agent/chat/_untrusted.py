"""Text a user or a tool wrote is tokenized as text: typed ``<|im_end|>`` never becomes token 507.

A chat template renders a conversation to one string and the tokenizer turns every added token
written in that string (``<|im_start|>``, ``<|im_end|>``, ``<tool_call>``...) into its id. Left
alone, a user who types ``<|im_end|>\\n<|im_start|>system`` would close their own turn and open a
system turn in the model's input, and a web page a tool fetched could do the same.

:class:`UntrustedText` prevents it. Before rendering, every added token's text inside the
``content`` of ``user`` and ``tool`` messages is replaced by a mark: a private-use character
(``MARK_LEAD``, U+10FFFD) followed by one private-use character naming which token it was. After
rendering, the text between the template's own added tokens is tokenized as before, except the
pieces holding marks: their marks are put back and the piece is tokenized by a copy of the
tokenizer that knows no added tokens, so the typed text becomes ordinary tokens
(``<``, ``|``, ``im``, ``_end``...). A conversation with no such text is tokenized exactly as
before (its rendering holds no mark); only the ids of typed added-token text change.

``MARK_LEAD`` itself, where any message's content holds it, is marked too, so marks never
collide with text. Not covered: added-token text inside tool schemas or a system prompt (the
application's own text), and tokenizers without a fast backend, whose non-special added tokens
are still matched (``split_special_tokens`` covers only the special ones there).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from transformers import PreTrainedTokenizerBase

MARK_LEAD = "\U0010fffd"
"""Starts every mark (a private-use character; the next character says which text it hides)."""
_MARK_BASE = 0xF0000  # supplementary private use area A: the second character of a mark
_UNTRUSTED_ROLES = ("user", "tool")


class UntrustedText:
    """Marks added-token text in untrusted message contents and tokenizes it as plain text."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        added = tokenizer.added_tokens_decoder
        self._special_ids = {token.content: token_id for token_id, token in added.items()}
        hidden = [MARK_LEAD, *sorted(self._special_ids, key=len, reverse=True)]
        self._mark_of = {text: MARK_LEAD + chr(_MARK_BASE + i) for i, text in enumerate(hidden)}
        self._text_of = {mark: text for text, mark in self._mark_of.items()}
        self._finder = re.compile("|".join(re.escape(t) for t in hidden))
        self._marks = re.compile(re.escape(MARK_LEAD) + ".", re.S)
        alternatives = sorted(self._special_ids, key=len, reverse=True)
        self._splitter = (
            re.compile("(" + "|".join(re.escape(t) for t in alternatives) + ")")
            if alternatives
            else None
        )
        self._plain = _plain_encoder(tokenizer)

    def mark_messages(self, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """``messages`` with added-token text in user/tool contents (and ``MARK_LEAD`` in any
        content) replaced by marks; the dicts are copies where something changed."""
        out = []
        for message in messages:
            content = message.get("content")
            untrusted = message.get("role") in _UNTRUSTED_ROLES
            marked = self._mark_content(content, untrusted)
            out.append(message if marked is content else {**message, "content": marked})
        return out

    def _mark_content(self, content: Any, untrusted: bool) -> Any:
        if isinstance(content, str):
            return self._mark(content, untrusted)
        if isinstance(content, list):  # OpenAI content parts
            parts = []
            for part in content:
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    text = self._mark(part["text"], untrusted)
                    part = part if text is part["text"] else {**part, "text": text}
                parts.append(part)
            return parts
        return content

    def _mark(self, text: str, untrusted: bool) -> str:
        if untrusted:
            return self._finder.sub(lambda m: self._mark_of[m.group(0)], text)
        if MARK_LEAD in text:
            return text.replace(MARK_LEAD, self._mark_of[MARK_LEAD])
        return text

    def unmark(self, text: str) -> str:
        """``text`` with every mark replaced by the text it hides."""
        if MARK_LEAD not in text:
            return text
        return self._marks.sub(lambda m: self._text_of.get(m.group(0), m.group(0)), text)

    def encode(self, text: str, encode_trusted: Callable[[str], list[int]]) -> list[int]:
        """Token ids of a marked rendering: ``encode_trusted`` for the template's text, the
        plain tokenizer for pieces that hold marks."""
        if MARK_LEAD not in text or self._splitter is None:
            return encode_trusted(self.unmark(text))
        ids: list[int] = []
        for index, piece in enumerate(self._splitter.split(text)):
            if index % 2:  # an added token the template wrote
                ids.append(self._special_ids[piece])
            elif MARK_LEAD in piece:
                ids.extend(self._plain(self.unmark(piece)))
            elif piece:
                ids.extend(encode_trusted(piece))
        return ids


def _plain_encoder(tokenizer: PreTrainedTokenizerBase) -> Callable[[str], list[int]]:
    """Encodes text with no added token matched: a copy of the fast tokenizer without its
    added-token list (the model's vocabulary and pre-tokenizer unchanged)."""
    backend: Any = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        from tokenizers import Tokenizer

        spec = json.loads(backend.to_str())
        spec["added_tokens"] = []
        plain = Tokenizer.from_str(json.dumps(spec))

        def encode_fast(text: str) -> list[int]:
            return list(plain.encode(text, add_special_tokens=False).ids)

        return encode_fast

    def encode_slow(text: str) -> list[int]:
        return list(tokenizer.encode(text, add_special_tokens=False, split_special_tokens=True))

    return encode_slow


__all__ = ["MARK_LEAD", "UntrustedText"]
