"""An application that talks to a model server over HTTP can render its prompts without torch.

``ChatFormat.from_pretrained`` loads the tokenizer through transformers' ``AutoTokenizer``, which
reads config.json with transformers' configuration module, and that imports torch. Given the
tokenizer class, the same ``ChatFormat`` is built without torch, and its ids equal the
``from_pretrained`` ones (the default model's class is ``Qwen2Tokenizer``: transformers loads any
``qwen2`` directory with it).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tepo_agent.chat.format import ChatFormat

_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "calculator",
            "description": "Evaluate arithmetic.",
            "parameters": {
                "type": "object",
                "properties": {"expression": {"type": "string"}},
                "required": ["expression"],
            },
        },
    }
]
_CONVERSATION = [
    {"role": "user", "content": "What is 17 * 23?\n\nThanks, café"},
    {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "calculator", "arguments": {"expression": "17 * 23"}},
            }
        ],
    },
    {"role": "tool", "content": "391", "tool_call_id": "call_1", "name": "calculator"},
]

_PROBE = """
import json, sys
from transformers import Qwen2Tokenizer
from tepo_agent.backends.http_backend import HttpBackend, HttpBackendConfig
from tepo_agent.chat.format import ChatFormat

model_dir, conversation, tools = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
fmt = ChatFormat(Qwen2Tokenizer.from_pretrained(model_dir, local_files_only=True))
config = HttpBackendConfig("http://127.0.0.1:9", "tiny")
backend = HttpBackend(config, vocab_size=len(fmt.tokenizer))
ids = fmt.render(conversation, tools)
print(json.dumps({"ids": ids, "stop": list(fmt.stop_token_ids), "torch": "torch" in sys.modules}))
"""


def test_a_chat_format_for_http_renders_without_torch_and_with_the_same_ids(
    default_model_dir: Path,
):
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            _PROBE,
            str(default_model_dir),
            json.dumps(_CONVERSATION),
            json.dumps(_TOOLS),
        ],
        capture_output=True,
        text=True,
        timeout=180,
        check=True,
    )
    light = json.loads(out.stdout.strip().splitlines()[-1])
    assert light["torch"] is False

    reference = ChatFormat.from_pretrained(default_model_dir)  # AutoTokenizer, torch loaded
    assert light["ids"] == reference.render(_CONVERSATION, _TOOLS)
    assert light["stop"] == list(reference.stop_token_ids)
