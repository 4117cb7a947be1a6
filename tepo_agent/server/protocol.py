"""The request bodies ``tepo-agent serve`` accepts, and its OpenAI-style errors.

A subset of vLLM 0.33's OpenAI protocol (``tests/data/vllm-0.33-protocol``): the fields an
agent runtime sends, vLLM's extensions included (``return_token_ids``,
``return_tokens_as_token_ids``, ``return_weight_versions``, ``stop_token_ids``, ``top_k``).
Unknown fields are accepted and ignored, as vLLM does. Values the server cannot honour are
rejected with :class:`OpenAIHTTPError` (a 4xx whose body is ``{"error": {"message", "type",
"code"}}``), never silently dropped.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_LOGPROBS = 20
"""Largest ``logprobs`` / ``top_logprobs`` accepted, like vLLM's default ``--max-logprobs``."""

MAX_N = 16
"""Most choices per request."""


class OpenAIHTTPError(Exception):
    """An error answered as ``{"error": {"message", "type", "code"}}`` with ``status``."""

    def __init__(self, status: int, message: str, error_type: str = "BadRequestError") -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_type = error_type

    def body(self) -> dict[str, Any]:
        return error_body(self.status, self.message, self.error_type)


def error_body(status: int, message: str, error_type: str) -> dict[str, Any]:
    """vLLM's / OpenAI's error body."""
    return {"error": {"message": message, "type": error_type, "param": None, "code": status}}


class _Request(BaseModel):
    # NaN and Infinity are valid in Python's JSON but never a usable temperature or top_p
    model_config = ConfigDict(extra="allow", allow_inf_nan=False)


class StreamOptions(BaseModel):
    include_usage: bool | None = False


class _SamplingFields(_Request):
    """Sampling fields shared by completions and chat completions."""

    model: str | None = None
    n: int = Field(default=1, ge=1, le=MAX_N)
    temperature: float | None = Field(default=None, ge=0.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=-1)
    seed: int | None = Field(default=None, ge=-(2**63), lt=2**63)  # torch's seed range
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    return_token_ids: bool | None = None
    return_tokens_as_token_ids: bool | None = None
    return_weight_versions: bool = False
    skip_special_tokens: bool | None = None
    include_stop_str_in_output: bool = False

    @field_validator("stop")
    @classmethod
    def _no_stop_strings(cls, value: str | list[str] | None) -> str | list[str] | None:
        if value:
            raise ValueError(
                "stop strings are not supported (generation is token-exact); use stop_token_ids"
            )
        return value


class CompletionRequest(_SamplingFields):
    """``POST /v1/completions``."""

    prompt: list[int] | list[list[int]] | str | list[str]
    max_tokens: int | None = Field(default=16, ge=1)
    logprobs: int | None = Field(default=None, ge=0, le=MAX_LOGPROBS)
    echo: bool | None = False
    add_special_tokens: bool = True

    @field_validator("echo")
    @classmethod
    def _no_echo(cls, value: bool | None) -> bool | None:
        if value:
            raise ValueError("echo is not supported")
        return value


class ChatCompletionRequest(_SamplingFields):
    """``POST /v1/chat/completions``."""

    messages: list[dict[str, Any]] = Field(min_length=1)
    tools: list[dict[str, Any]] | None = None
    tool_choice: Literal["none", "auto", "required"] | dict[str, Any] | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool | None = False
    top_logprobs: int | None = Field(default=0, ge=0, le=MAX_LOGPROBS)

    @field_validator("tool_choice")
    @classmethod
    def _only_auto_choice(cls, value: object) -> object:
        if isinstance(value, dict) or value == "required":
            raise ValueError(
                "tool_choice may be 'auto' or 'none' (the model decides; forcing a call is not "
                "supported)"
            )
        return value


class LoadLoRAAdapterRequest(_Request):
    """``POST /v1/load_lora_adapter`` (vLLM's LoadLoRAAdapterRequest)."""

    lora_name: str = Field(min_length=1)
    lora_path: str = Field(min_length=1)
    load_inplace: bool = False


class UnloadLoRAAdapterRequest(_Request):
    """``POST /v1/unload_lora_adapter``."""

    lora_name: str = Field(min_length=1)


class ReloadWeightsRequest(_Request):
    """``POST /v1/reload_weights``: load full weights from a checkpoint directory.

    ``version`` is the policy version the new weights report (default: the current one + 1).
    """

    weights_path: str = Field(min_length=1)
    version: int | None = Field(default=None, ge=0)


__all__ = [
    "MAX_LOGPROBS",
    "MAX_N",
    "ChatCompletionRequest",
    "CompletionRequest",
    "LoadLoRAAdapterRequest",
    "OpenAIHTTPError",
    "ReloadWeightsRequest",
    "StreamOptions",
    "UnloadLoRAAdapterRequest",
    "error_body",
]
