"""Piecewise, cached tokenization gives exactly the tokenizer's ids, and refuses tokenizers whose
cuts it cannot reproduce."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from tepo_agent.chat import _segment_encoder as segment_encoder
from tepo_agent.chat._segment_encoder import SegmentEncoder
from tepo_agent.chat.format import ChatFormat
from tepo_agent.model.default import TOOL_MARKUP_TOKENS, build_tokenizer

TOKENIZER = build_tokenizer()
ENCODER = SegmentEncoder.create(TOKENIZER)
SPECIALS = ["<|im_start|>", "<|im_end|>", "<|endoftext|>", *TOOL_MARKUP_TOKENS]
PIECES = st.sampled_from(
    [*SPECIALS, "a", "hello", " ", "  ", "\n", "\n\n", "\t", "é", "日本", "<", "|", ">", "im_end",
     "<|im_", "tool_call", "{", '"name"', "0", "17 * 23", "🙂"]
)  # fmt: skip


def reference(text: str) -> list[int]:
    return list(TOKENIZER.encode(text, add_special_tokens=False))


def test_the_default_tokenizer_is_encoded_piecewise() -> None:
    assert ENCODER is not None


@settings(max_examples=300, deadline=None)
@given(st.lists(PIECES, max_size=30))
def test_equals_whole_text_encoding(pieces: list[str]) -> None:
    assert ENCODER is not None
    text = "".join(pieces)
    assert ENCODER.encode(text) == reference(text)
    assert ENCODER.encode(text) == reference(text)  # again, from the cache


def test_equals_whole_text_encoding_on_rendered_conversations() -> None:
    fmt = ChatFormat(TOKENIZER)
    assert fmt._segments is not None
    messages = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "What is 17 * 23?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {"id": "c1", "type": "function",
                 "function": {"name": "calculator", "arguments": {"expression": "17 * 23"}}}
            ],
        },
        {"role": "tool", "content": "391", "tool_call_id": "c1"},
        {"role": "assistant", "content": "The answer is 391."},
    ]  # fmt: skip
    for end in range(1, len(messages) + 1):
        text = fmt.render_text(messages[:end], add_generation_prompt=end % 2 == 0)
        assert fmt.encode(text) == reference(text)


def test_cache_remembers_pieces_and_starts_over_when_full(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[str] = []
    encoder = SegmentEncoder(
        lambda piece: calls.append(piece) or [len(piece)], {"<s>": 0, "<|end|>": 1}
    )
    assert encoder.encode("ab<s>cd<|end|>ab") == [2, 0, 2, 1, 2]
    assert calls == ["ab", "cd"]
    assert encoder.encode("cd<s>") == [2, 0]
    assert calls == ["ab", "cd"]
    monkeypatch.setattr(segment_encoder, "MAX_CACHED_PIECES", 2)
    encoder.encode("ef")
    assert calls[-1] == "ef"
    encoder.encode("ab")
    assert calls[-1] == "ab"  # the cache was full, so it started over


def _metaspace_tokenizer(prepend_scheme: str) -> PreTrainedTokenizerFast:
    letters = ["▁", "h", "e", "l", "o", "w", "r", "d", ".", "x", "=", "1", "\n", "\t", "▁h"]
    vocab = {c: i for i, c in enumerate([*letters, "<unk>"])}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[("▁", "h")], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme=prepend_scheme)
    return PreTrainedTokenizerFast(tokenizer_object=tok, additional_special_tokens=["<|im_end|>"])


def test_refuses_a_pre_tokenizer_that_treats_the_first_piece_apart() -> None:
    # "first" prepends ▁ to the text's first piece only: piece by piece would prepend it to each
    first = _metaspace_tokenizer("first")
    hello = first.encode("hello", add_special_tokens=False)
    end = first.convert_tokens_to_ids("<|im_end|>")
    assert first.encode("hello<|im_end|>hello", add_special_tokens=False) != [*hello, end, *hello]
    assert SegmentEncoder.create(first) is None
    assert SegmentEncoder.create(_metaspace_tokenizer("always")) is not None


def test_refuses_added_tokens_that_strip_their_neighbours() -> None:
    tokenizer = build_tokenizer()
    tokenizer.add_tokens([AddedToken("<|strip|>", lstrip=True, special=True)])
    assert SegmentEncoder.create(tokenizer) is None


def test_the_longest_added_token_wins_where_two_start_at_the_same_place() -> None:
    # as the tokenizer's own matcher does (leftmost-longest)
    encoder = SegmentEncoder(lambda piece: [100 + len(piece)], {"<x>": 0, "<x>y": 1})
    assert encoder.encode("a<x>yz<x>") == [101, 1, 101, 0]
