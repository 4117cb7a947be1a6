"""Loading a tokenizer and a causal LM from a local Hugging Face model directory.

The same code loads the embedded default model (``model.default.init_model``) and any model a
user downloaded (Qwen2.5, Llama 3.1, ...): a directory with ``config.json``, weights
(``*.safetensors`` or ``pytorch_model*.bin``) and tokenizer files. The hub is never contacted
(``local_files_only=True``); a missing or broken directory raises :class:`ModelLoadError` naming
the path and what is missing.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

from tepo_agent.errors import ConfigError, ModelLoadError

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerFast

DType = Literal["auto", "float32", "bfloat16", "float16"]
"""Weight dtype: ``auto`` is bfloat16 on CUDA and float32 on CPU."""

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")
_WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin", "model.safetensors.index.json")


def existing_model_dir(path: str | os.PathLike[str]) -> Path:
    """``path`` as a directory that exists; :class:`ModelLoadError` saying what to pass if not."""
    directory = Path(path).expanduser()
    if not directory.exists():
        raise ModelLoadError(
            f"model directory {directory} does not exist; pass the path of a local Hugging Face "
            "model directory (or build the default one with `tepo-agent init-model --out DIR`)"
        )
    if not directory.is_dir():
        raise ModelLoadError(f"{directory} is a file, not a model directory")
    return directory


def load_tokenizer(path: str | os.PathLike[str]) -> PreTrainedTokenizerFast:
    """The fast (Rust) tokenizer saved in ``path``, with its chat template if it has one."""
    from transformers import AutoTokenizer

    directory = existing_model_dir(path)
    if not any((directory / name).is_file() for name in _TOKENIZER_FILES):
        raise ModelLoadError(
            f"no tokenizer files in {directory}: expected one of {', '.join(_TOKENIZER_FILES)} "
            "(save one there with tokenizer.save_pretrained)"
        )
    return load_fast_tokenizer(AutoTokenizer, directory)


def load_fast_tokenizer(tokenizer_class: Any, directory: Path) -> PreTrainedTokenizerFast:
    """``tokenizer_class.from_pretrained(directory)`` (local files only), checked to be a fast
    tokenizer; :class:`ModelLoadError` naming the directory otherwise."""
    from transformers import PreTrainedTokenizerFast

    try:
        tokenizer = tokenizer_class.from_pretrained(directory, local_files_only=True)
    except Exception as exc:  # transformers/tokenizers raise many unrelated types here
        raise ModelLoadError(f"cannot load the tokenizer in {directory}: {exc}") from exc
    if not isinstance(tokenizer, PreTrainedTokenizerFast):
        raise ModelLoadError(
            f"the tokenizer in {directory} loaded as the slow {type(tokenizer).__name__}; "
            "tepo-agent needs a fast tokenizer (add a tokenizer.json)"
        )
    return tokenizer


def resolve_device(device: str) -> torch.device:
    """``auto`` is ``cuda`` when available, else ``cpu``; other strings go to ``torch.device``."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(
            f"unknown device {device!r}: use 'auto', 'cpu', 'cuda' or 'cuda:N'"
        ) from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} asked for CUDA but no GPU is visible; use 'cpu'")
    return resolved


def resolve_dtype(dtype: DType, device: torch.device) -> torch.dtype:
    """The torch dtype for ``dtype``; ``auto`` is bfloat16 on CUDA and float32 elsewhere."""
    import torch

    if dtype not in get_args(DType):
        raise ConfigError(f"dtype must be one of {get_args(DType)}, got {dtype!r}")
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, dtype)


def load_causal_lm(
    path: str | os.PathLike[str], *, device: str = "cpu", dtype: DType = "auto"
) -> PreTrainedModel:
    """The causal LM saved in ``path`` on ``device``, in eval mode (dropout off, no grad state)."""
    from transformers import AutoModelForCausalLM

    directory = existing_model_dir(path)
    if not (directory / "config.json").is_file():
        raise ModelLoadError(
            f"no config.json in {directory}: this is not a Hugging Face model directory "
            "(save one with model.save_pretrained)"
        )
    if not any(any(directory.glob(pattern)) for pattern in _WEIGHT_PATTERNS):
        raise ModelLoadError(
            f"no weights in {directory}: expected *.safetensors or pytorch_model*.bin next to "
            "config.json"
        )
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            directory, local_files_only=True, dtype=torch_dtype
        )
    except Exception as exc:  # OSError, ValueError, SafetensorError, torch RuntimeError, ...
        raise ModelLoadError(f"cannot load the model in {directory}: {exc}") from exc
    model.to(torch_device)  # type: ignore[arg-type]  # transformers wraps .to; mypy sees the wrapper
    model.eval()
    return model


def end_and_pad_ids(
    model: PreTrainedModel, path: str | os.PathLike[str]
) -> tuple[list[int], list[int]]:
    """A loaded model's end-of-sequence ids and pad ids.

    End ids come from ``generation_config.json``, else ``config.json``, else the tokenizer's eos
    token; pad ids from the same configs (possibly none).
    """
    eos = _config_ids(model, "eos_token_id") or _tokenizer_eos(path)
    return eos, _config_ids(model, "pad_token_id")


def _tokenizer_eos(path: str | os.PathLike[str]) -> list[int]:
    """The tokenizer's eos id, for model directories whose configs name none."""
    try:
        eos = load_tokenizer(path).eos_token_id
    except ModelLoadError:
        return []
    return [] if eos is None else [int(eos)]


def _config_ids(model: PreTrainedModel, name: str) -> list[int]:
    """Token ids named ``name`` in the generation config, else the model config (int or list)."""
    for config in (getattr(model, "generation_config", None), model.config):
        value = getattr(config, name, None) if config is not None else None
        if value is None:
            continue
        return [int(v) for v in (value if isinstance(value, list | tuple) else [value])]
    return []


__all__ = [
    "DType",
    "end_and_pad_ids",
    "existing_model_dir",
    "load_causal_lm",
    "load_fast_tokenizer",
    "load_tokenizer",
    "resolve_device",
    "resolve_dtype",
]
