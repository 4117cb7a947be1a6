"""Load a model directory's tokenizer as ``AutoTokenizer`` does, without importing torch.

``AutoTokenizer.from_pretrained`` reads ``config.json`` through transformers' configuration
module, and that module imports torch whenever torch is installed, so an application that only
talks to a model server over HTTP would pay for torch to render its prompts. The tokenizer
classes themselves (``TokenizersBackend``, ``Qwen2Tokenizer``, ...: the ``tokenizers`` library
plus transformers' compiled chat template) do not import torch. What ``AutoTokenizer`` adds is
the choice of the class, and that choice changes ids: for a ``config.json`` whose ``model_type``
is ``qwen2`` (the embedded default model's), transformers loads ``Qwen2Tokenizer``, which
replaces the pre-tokenizer saved in ``tokenizer.json`` with Qwen2's own.

:func:`load_tokenizer_without_torch` makes the same choice for local directories from the two
files and transformers' own tables (read from its installed ``tokenization_auto.py`` as data,
never imported):

- ``tokenizer_config.json`` (or else ``config.json``) declares a dedicated class
  (``Qwen2Tokenizer``, ``LlamaTokenizer``): that class;
- it declares none, or a generic one (``TokenizersBackend``, ``PreTrainedTokenizerFast``) and
  ``config.json``'s ``model_type`` is one transformers lists as carrying a wrong class on the hub
  (``MODELS_WITH_INCORRECT_HUB_TOKENIZER_CLASS``): the class transformers registers for that model
  type (``TOKENIZER_MAPPING_NAMES``);
- otherwise ``TokenizersBackend``, which uses ``tokenizer.json`` as saved.

A directory with remote tokenizer code (``auto_map``) is refused with a :class:`ChatFormatError`
saying to load the tokenizer yourself. ``tests/test_http_without_torch.py`` checks the choice
against ``AutoTokenizer`` on the default model and on directories of each kind.

Example::

    tokenizer = load_tokenizer_without_torch("path/to/model")
    fmt = ChatFormat(tokenizer)
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tepo_agent.errors import ChatFormatError, ModelLoadError
from tepo_agent.model.io import existing_model_dir, load_fast_tokenizer

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

_GENERIC_CLASSES = frozenset(
    {"TokenizersBackend", "PreTrainedTokenizerFast", "PythonBackend", "PreTrainedTokenizer"}
)


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot read {path}: {exc}") from exc
    return data if isinstance(data, dict) else {}


def _literal_string(node: ast.expr) -> str | None:
    """``"Name"`` or ``"Name" if is_tokenizers_available() else None`` → ``"Name"``."""
    if isinstance(node, ast.IfExp):
        node = node.body
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    return None


@functools.cache
def _auto_tables() -> tuple[dict[str, str], frozenset[str]]:
    """transformers' model-type → tokenizer-class table and its list of model types whose hub
    class is wrong, read from the installed ``tokenization_auto.py`` without executing it."""
    spec = importlib.util.find_spec("transformers")
    origin = spec.origin if spec is not None else None
    source = Path(origin).parent / "models/auto/tokenization_auto.py" if origin else None
    if source is None or not source.is_file():
        raise ChatFormatError(
            "cannot find transformers' tokenization_auto.py; load the tokenizer yourself and "
            "pass it: ChatFormat(AutoTokenizer.from_pretrained(model_dir))"
        )
    mapping: dict[str, str] = {}
    incorrect: frozenset[str] = frozenset()
    for node in ast.parse(source.read_text(encoding="utf-8")).body:
        target = node.target if isinstance(node, ast.AnnAssign) else None
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target = node.targets[0]
        value = getattr(node, "value", None)
        if not isinstance(target, ast.Name) or value is None:
            continue
        if target.id == "TOKENIZER_MAPPING_NAMES" and isinstance(value, ast.Call) and value.args:
            pairs = value.args[0]
            for pair in pairs.elts if isinstance(pairs, ast.List) else []:
                if isinstance(pair, ast.Tuple) and len(pair.elts) == 2:
                    key, name = pair.elts
                    class_name = _literal_string(name)
                    if isinstance(key, ast.Constant) and isinstance(key.value, str) and class_name:
                        mapping[key.value] = class_name
        elif target.id == "MODELS_WITH_INCORRECT_HUB_TOKENIZER_CLASS":
            incorrect = frozenset(ast.literal_eval(value))
    if not mapping:
        raise ChatFormatError(
            f"cannot read the tokenizer table in {source} (a transformers release this version "
            "of tepo-agent does not know); pass the tokenizer: "
            "ChatFormat(AutoTokenizer.from_pretrained(model_dir))"
        )
    return mapping, incorrect


def tokenizer_class_name(path: str | os.PathLike[str]) -> str:
    """The name of the transformers class ``AutoTokenizer`` would load ``path``'s tokenizer with."""
    directory = Path(path)
    tokenizer_config = _read_json(directory / "tokenizer_config.json")
    if "auto_map" in tokenizer_config:
        raise ChatFormatError(
            f"the tokenizer in {directory} is remote code (auto_map); load it yourself with "
            "AutoTokenizer.from_pretrained(..., trust_remote_code=True) and pass it to ChatFormat"
        )
    config = _read_json(directory / "config.json")
    model_type = config.get("model_type")
    # as transformers: tokenizer_config.json's class, else one config.json names
    declared = tokenizer_config.get("tokenizer_class") or config.get("tokenizer_class")
    if not isinstance(declared, str) or not declared:
        declared = None
    else:
        declared = (
            declared.removesuffix("Fast") if declared != "PreTrainedTokenizerFast" else declared
        )
    if declared is not None and declared not in _GENERIC_CLASSES:
        return declared
    mapping, incorrect = _auto_tables()
    registered = mapping.get(model_type) if isinstance(model_type, str) else None
    # A declared generic class stands unless transformers lists the model type as declaring a
    # wrong one; with no declared class, the model type's own class is used.
    if registered is not None and (declared is None or model_type in incorrect):
        registered = registered.removesuffix("Fast")
        if registered not in _GENERIC_CLASSES and registered != "MistralCommonBackend":
            return registered
    return "TokenizersBackend"


def load_tokenizer_without_torch(path: str | os.PathLike[str]) -> PreTrainedTokenizerFast:
    """``path``'s tokenizer, of the class ``AutoTokenizer`` would choose, without torch."""
    import transformers

    directory = existing_model_dir(path)
    if not (directory / "tokenizer.json").is_file():
        raise ModelLoadError(
            f"no tokenizer.json in {directory}: tepo-agent needs a fast tokenizer (save one "
            "there with tokenizer.save_pretrained)"
        )
    name = tokenizer_class_name(directory)
    tokenizer_class = getattr(transformers, name, None)
    if tokenizer_class is None:
        raise ChatFormatError(
            f"{directory} asks for the tokenizer class {name}, which the installed transformers "
            "does not have; upgrade transformers or pass the tokenizer to ChatFormat"
        )
    return load_fast_tokenizer(tokenizer_class, directory)


__all__ = ["load_tokenizer_without_torch", "tokenizer_class_name"]
