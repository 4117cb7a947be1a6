"""What a live chat stream sends as content while the answer is decoded
(:class:`tepo_agent.server.chat_stream.ContentDeltas`): the pieces add up to the message content
the unstreamed answer has (``ChatFormat.parse``), whatever the tokens cut the text into."""

from __future__ import annotations

import pytest

from tepo_agent.server.chat_stream import ContentDeltas

END = "<|im_end|>"


def _stream(pieces: list[str]) -> tuple[list[str], ContentDeltas]:
    deltas = ContentDeltas([END])
    text, sent = "", []
    for piece in pieces:
        text += piece
        sent.append(deltas.push(text))
    return sent, deltas


@pytest.mark.parametrize(
    ("pieces", "sent", "content"),
    [
        # plain text: sent as it comes, the trailing end marker and whitespace never
        (["Hel", "lo", " world", END], ["Hel", "lo", " world", ""], "Hello world"),
        # leading whitespace is held back until text follows; trailing whitespace until more
        (["\n ", "Hi", " ", "there", " \n", END], ["", "Hi", "", " there", "", ""], "Hi there"),
        # a possible start of <tool_call> is held back; the call itself is never content
        (
            ["Let me", " <tool", "_call>", '{"name": "f"}', "</tool_call>", END],
            ["Let me", "", "", "", "", ""],
            "Let me",
        ),
        # "<tool" that turns out not to open a call is sent once that is known
        (["a <tool", "box> b"], ["a", " <toolbox> b"], "a <toolbox> b"),
    ],
)
def test_the_deltas_are_the_message_content_in_order(
    pieces: list[str], sent: list[str], content: str
) -> None:
    got, deltas = _stream(pieces)
    assert got == sent
    assert "".join(got) + deltas.rest(content) == content


def test_half_a_character_waits_for_its_rest() -> None:
    deltas = ContentDeltas([END])  # the whole text is decoded again after every token
    assert [deltas.push(t) for t in ("caf", "caf\ufffd", "café!")] == ["caf", "", "é!"]


def test_the_content_after_a_tool_call_comes_at_the_end() -> None:
    got, deltas = _stream(["Sure.", "<tool_call>", '{"name": "f"}</tool_call>', " Done."])
    assert "".join(got) == "Sure."
    # ChatFormat.parse joins the text around the calls: "Sure. Done."
    assert deltas.rest("Sure. Done.") == " Done."
    # an unreadable call comes back as the whole text (as vLLM does), which starts the same
    assert deltas.rest("Sure.<tool_call>{bad") == "<tool_call>{bad"
    assert deltas.rest(None) == ""
