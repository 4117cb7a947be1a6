"""What ``bootstrap.json`` records beside the default model's weights, and how it is measured.

- ``prompt_format_sha256``: a hash of the prompt format the weights were trained on (chat
  template, system prompt, tool schemas of the world's tools, and the token ids they render to).
  A test recomputes it from the current code: a change to any of them no longer matches weights
  trained on the old format, and the test says so.
- held-out figures: the agent evaluated with ``tepo_agent.evaluation`` on items of a world
  training never saw (``tasks.world.held_out``), per suite, greedy and sampled.
- the machine the bootstrap ran on.
"""

from __future__ import annotations

import copy
import hashlib
import os
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_openai_tool
from transformers import PreTrainedModel

from tepo_agent.backends.transformers_backend import TransformersBackend
from tepo_agent.chat.format import ChatFormat
from tepo_agent.evaluation import EvalConfig, evaluate_items, summarize
from tepo_agent.model.default import DEFAULT_SYSTEM_PROMPT, ENDOFTEXT, IM_END, token_id
from tepo_agent.tasks import SuiteName
from tepo_agent.tasks.world import held_out

SUITES: tuple[SuiteName, ...] = ("math", "knowledge", "deep_search")

_REFERENCE_CONVERSATION = [
    {"role": "system", "content": DEFAULT_SYSTEM_PROMPT},
    {"role": "user", "content": "Who founded Examplecorp?"},
    {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "search", "arguments": {"query": "Examplecorp"}},
            }
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "name": "search", "content": "Examplecorp was"},
    {"role": "assistant", "content": "The answer is 42."},
]


def prompt_format_hash(fmt: ChatFormat, tools: Sequence[BaseTool]) -> str:
    """SHA-256 of a reference conversation rendered with ``tools`` (text and token ids)."""
    schemas = [convert_to_openai_tool(t) for t in tools]
    text = fmt.render_text(_REFERENCE_CONVERSATION, schemas, add_generation_prompt=False)
    ids = fmt.encode(text)
    return hashlib.sha256(f"{text}\x00{ids}".encode()).hexdigest()


def machine() -> dict[str, Any]:
    """The machine a bootstrap ran on."""
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def evaluate_model(
    model: PreTrainedModel,
    fmt: ChatFormat,
    tasks_and_tools: dict[SuiteName, tuple[list[Any], list[BaseTool]]],
    cfg: EvalConfig,
) -> dict[str, dict[str, Any]]:
    """Per-suite summaries (``EvalSummary.to_json``) of ``model`` run by the real agent.

    The model is copied into an in-process backend (the backend's worker thread owns it), so a
    caller can go on training the original.
    """
    tokenizer = fmt.tokenizer
    backend = TransformersBackend(
        copy.deepcopy(model).eval(),
        eos_token_ids=[token_id(tokenizer, IM_END), token_id(tokenizer, ENDOFTEXT)],
        pad_token_id=token_id(tokenizer, ENDOFTEXT),
        max_batch_size=cfg.concurrency,
    )
    try:
        out: dict[str, dict[str, Any]] = {}
        for suite, (tasks, tools) in tasks_and_tools.items():
            results = evaluate_items(backend, fmt, tasks, tools, cfg, progress=False)
            out[suite] = summarize(results).to_json()
        return out
    finally:
        backend.close()


def held_out_sets(
    n: int, seed: int, workdir: Path
) -> dict[SuiteName, tuple[list[Any], list[BaseTool]]]:
    """``n`` held-out items of every suite from the world of ``seed`` (built under ``workdir``)."""
    return {suite: held_out(suite, n, seed, workdir=workdir) for suite in SUITES}


def headline(summaries: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The figures a reader wants from each suite's summary (accuracy, calls, format errors)."""
    out = {}
    for suite, s in summaries.items():
        out[suite] = {
            "accuracy": round(s["accuracy"]["estimate"], 4),
            "accuracy_95": [round(s["accuracy"]["low"], 4), round(s["accuracy"]["high"], 4)],
            "calls_per_run_tool_items": s["calls_per_run_tool_items"],
            "calls_per_run_no_tool_items": s["calls_per_run_no_tool_items"],
            "format_error_rate": s["format_error_rate"],
            "items": s["items"],
            "runs": s["runs"],
        }
    return out
