"""LoRA adapters for ``tepo-agent serve``: merged into the base weights, swapped between batches.

vLLM applies an adapter on top of the *base* model; so does this server. It keeps a CPU copy of
the base weights (taken the first time an adapter is loaded, replaced by a full-weight reload),
merges the adapter into a copy of the model with peft (``merge_and_unload``), and hands the
merged state dict to the backend, which copies it in place between batches. Only one adapter is
live at a time (the latest loaded); the served model keeps running while the merge is computed.
Memory: one extra copy of the weights on CPU, plus a transient one during a merge.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor
from transformers import PreTrainedModel

from tepo_agent.errors import ModelLoadError


def snapshot_weights(model: PreTrainedModel) -> dict[str, Tensor]:
    """A CPU copy of every weight of ``model`` (tied weights stay shared in the copy)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def check_adapter_dir(path: str | Path) -> Path:
    """``path`` if it holds a peft LoRA adapter, else a :class:`ModelLoadError` saying why not."""
    directory = Path(path)
    config = directory / "adapter_config.json"
    if not config.is_file():
        raise ModelLoadError(
            f"{directory} holds no adapter_config.json: pass a directory written by "
            "PeftModel.save_pretrained"
        )
    try:
        peft_type = json.loads(config.read_text()).get("peft_type")
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot read {config}: {exc}") from exc
    if peft_type not in (None, "LORA"):
        raise ModelLoadError(f"{directory} is a {peft_type} adapter; only LoRA can be merged")
    return directory


def merged_lora_weights(
    model: PreTrainedModel, base_weights: Mapping[str, Tensor], adapter_dir: str | Path
) -> dict[str, Tensor]:
    """The weights of ``base + adapter``, computed on a CPU copy of ``model``.

    Args:
        model: the served model (only its architecture is used; it is not changed).
        base_weights: the base weights the adapter was trained against (:func:`snapshot_weights`).
        adapter_dir: a peft LoRA adapter directory.

    Returns:
        A full state dict with the model's parameter names, ready for ``load_state_dict``.
    """
    from peft import PeftModel

    directory = check_adapter_dir(adapter_dir)
    device = next(model.parameters()).device
    work = copy.deepcopy(model).cpu()
    work.load_state_dict(dict(base_weights))
    try:
        peft_model = PeftModel.from_pretrained(work, str(directory), is_trainable=False)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ModelLoadError(
            f"cannot apply the LoRA adapter in {directory} to this model: {exc}. Was it trained "
            "on this base model?"
        ) from exc
    with torch.no_grad():
        merged = peft_model.merge_and_unload()
    state = merged.state_dict()
    del work, peft_model
    return {k: v.to(device) for k, v in state.items()}


__all__ = ["check_adapter_dir", "merged_lora_weights", "snapshot_weights"]
