"""Chat format: messages and tool schemas ↔ token ids, and completions → tool calls.

:class:`ChatFormat` (:mod:`~tepo_agent.chat.format`) is the one public piece; it renders prompts
through the model's own chat template, with two private accelerators: ``_direct_template`` (the
compiled template rendered without ``apply_chat_template``'s copies) and ``_segment_encoder``
(token ids of a conversation's fixed pieces, cached).
"""

from tepo_agent.chat.format import ChatFormat, InvalidToolCall, ParsedTurn, ToolCall

__all__ = ["ChatFormat", "InvalidToolCall", "ParsedTurn", "ToolCall"]
