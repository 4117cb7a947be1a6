"""The weight routes of ``tepo-agent serve`` (admin key only): ``POST /v1/load_lora_adapter``,
``POST /v1/unload_lora_adapter`` and ``POST /v1/reload_weights``. Each runs behind the swap gate:
the requests in flight finish on the old weights, new ones wait until the new weights serve."""

from __future__ import annotations

import asyncio
import re
from typing import Any

from fastapi import Request

from tepo_agent.errors import BackendError, ModelLoadError
from tepo_agent.model.lora import merged_lora_weights, snapshot_weights
from tepo_agent.server.protocol import (
    LoadLoRAAdapterRequest,
    OpenAIHTTPError,
    ReloadWeightsRequest,
    UnloadLoRAAdapterRequest,
)
from tepo_agent.server.served import served
from tepo_agent.server.validation import check_name, check_weights_path, parse_body

_TRAILING_INT = re.compile(r"(\d+)$")


async def load_lora_adapter(request: Request) -> Any:
    state = served(request)
    backend, model_name = state.backend, state.model_name
    req: LoadLoRAAdapterRequest = await parse_body(request, LoadLoRAAdapterRequest)
    check_name(req.lora_name)
    lora_path = check_weights_path(req.lora_path, request.app.state.tepo_limits, "lora_path")
    if req.lora_name == model_name:
        raise OpenAIHTTPError(400, f"lora_name must differ from the base model {model_name!r}")
    match = _TRAILING_INT.search(req.lora_name)
    version = int(match.group(1)) if match else backend.policy_version + 1
    async with state.gate.swap():
        if state.base_weights is None:
            state.base_weights = await asyncio.to_thread(snapshot_weights, backend.model)
        try:
            merged = await asyncio.to_thread(
                merged_lora_weights, backend.model, state.base_weights, lora_path
            )
            await asyncio.to_thread(backend.load_state_dict, merged, policy_version=version)
        except (ModelLoadError, BackendError) as exc:
            raise OpenAIHTTPError(400, str(exc)) from exc
        state.lora = (req.lora_name, req.lora_path)
    return {"status": "ok", "lora_name": req.lora_name, "policy_version": version}


async def unload_lora_adapter(request: Request) -> Any:
    state = served(request)
    req: UnloadLoRAAdapterRequest = await parse_body(request, UnloadLoRAAdapterRequest)
    if state.lora is None or state.lora[0] != req.lora_name or state.base_weights is None:
        raise OpenAIHTTPError(
            404, f"no LoRA adapter named {req.lora_name!r} is loaded", "NotFoundError"
        )
    version = state.backend.policy_version + 1
    async with state.gate.swap():
        base = state.base_weights
        assert base is not None
        await asyncio.to_thread(state.backend.load_state_dict, base, policy_version=version)
        state.lora = None
    return {"status": "ok", "policy_version": version}


async def reload_weights(request: Request) -> Any:
    state = served(request)
    req: ReloadWeightsRequest = await parse_body(request, ReloadWeightsRequest)
    path = check_weights_path(req.weights_path, request.app.state.tepo_limits, "weights_path")
    version = state.backend.policy_version + 1 if req.version is None else req.version
    async with state.gate.swap():
        try:
            await asyncio.to_thread(state.backend.load_weights, path, policy_version=version)
        except (ModelLoadError, BackendError) as exc:
            raise OpenAIHTTPError(400, str(exc)) from exc
        state.base_weights = None  # the new full weights are the base of later adapters
        state.lora = None
    return {"status": "ok", "policy_version": version}


__all__ = ["load_lora_adapter", "reload_weights", "unload_lora_adapter"]
