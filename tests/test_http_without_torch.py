"""An application that talks to a model server over HTTP renders its prompts without torch.

``ChatFormat.from_pretrained`` loads the tokenizer of the class ``AutoTokenizer`` would choose,
without ``AutoTokenizer`` (whose configuration module imports torch): the class comes from the
directory's two JSON files and transformers' own tables (tepo_agent/chat/tokenizer_class.py). A
fresh interpreter builds the chat format, the HTTP backend, the chat model and the agent from a
model directory and renders a prompt with no torch loaded, and the ids equal those of the
``AutoTokenizer`` tokenizer; the class choice agrees with ``AutoTokenizer`` on directories of each
kind (the default model's ``TokenizersBackend`` + ``qwen2`` gives ``Qwen2Tokenizer``, which changes
the ids).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from langchain_core.utils.function_calling import convert_to_openai_tool
from transformers import AutoTokenizer

from tepo_agent.chat.format import ChatFormat
from tepo_agent.chat.tokenizer_class import tokenizer_class_name
from tepo_agent.errors import ChatFormatError, ModelLoadError
from tepo_agent.model.io import load_tokenizer
from tepo_agent.tools import make_calculator_tool

# the task world's calculator, the schema the default model was trained with
_TOOLS = [convert_to_openai_tool(make_calculator_tool(brief=True))]
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
from tepo_agent.agent.chat_model import TepoChatModel
from tepo_agent.agent.graph import TepoAgent
from tepo_agent.backends.http_backend import HttpBackend, HttpBackendConfig
from tepo_agent.chat.format import ChatFormat
from tepo_agent.tools import make_calculator_tool

model_dir, conversation, tools = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
fmt = ChatFormat.from_pretrained(model_dir)
config = HttpBackendConfig("http://127.0.0.1:9", "tiny")
backend = HttpBackend(config, vocab_size=len(fmt.tokenizer))
TepoChatModel(backend=backend, chat_format=fmt).bind_tools([make_calculator_tool(brief=True)])
TepoAgent(backend, fmt, [make_calculator_tool(brief=True)])
ids = fmt.render(conversation, tools)
print(json.dumps({
    "ids": ids,
    "stop": list(fmt.stop_token_ids),
    "class": type(fmt.tokenizer).__name__,
    "torch": "torch" in sys.modules,
}))
"""


def test_the_agent_over_http_builds_from_a_model_directory_without_torch_and_same_ids(
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

    reference = ChatFormat(load_tokenizer(default_model_dir))  # AutoTokenizer, torch loaded
    assert light["class"] == type(reference.tokenizer).__name__
    assert light["ids"] == reference.render(_CONVERSATION, _TOOLS)
    assert light["stop"] == list(reference.stop_token_ids)


def _variant(
    source: Path,
    target: Path,
    tokenizer_class: str | None,
    model_type: str,
    config_class: str | None = None,
) -> Path:
    """A copy of the default model's tokenizer and config with another declared class/type."""
    target.mkdir()
    for name in ("tokenizer.json", "chat_template.jinja"):
        shutil.copy(source / name, target / name)
    tokenizer_config = json.loads((source / "tokenizer_config.json").read_text())
    tokenizer_config.pop("tokenizer_class")
    if tokenizer_class is not None:
        tokenizer_config["tokenizer_class"] = tokenizer_class
    (target / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    config = json.loads((source / "config.json").read_text())
    config["model_type"] = model_type
    if config_class is not None:
        config["tokenizer_class"] = config_class
    (target / "config.json").write_text(json.dumps(config))
    return target


@pytest.mark.parametrize(
    ("tokenizer_class", "model_type", "expected"),
    [
        # the default model: a generic class, and a model type transformers overrides
        ("TokenizersBackend", "qwen2", "Qwen2Tokenizer"),
        # a generic class for a model type whose hub class transformers trusts
        ("TokenizersBackend", "llama", "TokenizersBackend"),
        ("PreTrainedTokenizerFast", "llama", "TokenizersBackend"),
        # no class: the model type's own
        (None, "qwen2", "Qwen2Tokenizer"),
        # a dedicated class wins over the model type
        ("Qwen2TokenizerFast", "gpt2", "Qwen2Tokenizer"),
        # no class in tokenizer_config.json: the one config.json names
        ("config:Qwen2Tokenizer", "gpt2", "Qwen2Tokenizer"),
        ("config:TokenizersBackend", "qwen2", "Qwen2Tokenizer"),
    ],
)
def test_the_tokenizer_class_is_the_one_auto_tokenizer_loads(
    default_model_dir: Path, tmp_path: Path, tokenizer_class: str | None, model_type: str, expected
):
    config_class = None
    if tokenizer_class is not None and tokenizer_class.startswith("config:"):
        tokenizer_class, config_class = None, tokenizer_class.removeprefix("config:")
    directory = _variant(
        default_model_dir, tmp_path / "model", tokenizer_class, model_type, config_class
    )
    assert tokenizer_class_name(directory) == expected
    light = ChatFormat.from_pretrained(directory)
    reference = ChatFormat(AutoTokenizer.from_pretrained(directory, local_files_only=True))
    assert type(light.tokenizer) is type(reference.tokenizer)
    assert light.render(_CONVERSATION, _TOOLS) == reference.render(_CONVERSATION, _TOOLS)


def test_remote_tokenizer_code_and_missing_files_are_refused_clearly(
    default_model_dir: Path, tmp_path: Path
):
    directory = _variant(default_model_dir, tmp_path / "remote", "TokenizersBackend", "qwen2")
    tokenizer_config = json.loads((directory / "tokenizer_config.json").read_text())
    tokenizer_config["auto_map"] = {"AutoTokenizer": [None, "tok.MyTokenizer"]}
    (directory / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    with pytest.raises(ChatFormatError, match="remote code"):
        ChatFormat.from_pretrained(directory)
    with pytest.raises(ModelLoadError, match="does not exist"):
        ChatFormat.from_pretrained(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match=r"no tokenizer\.json"):
        ChatFormat.from_pretrained(tmp_path / "empty")
