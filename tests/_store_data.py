"""Trajectories for store tests (the conformance suite and the reliability tests share them)."""

from __future__ import annotations

import struct

from tepo_agent.trajectory import Trajectory, Turn


def f32(values: list[float]) -> list[float]:
    return [struct.unpack("<f", struct.pack("<f", v))[0] for v in values]


def make_trajectory(
    *, group_id: str | None = None, score: float | None = None, task: str = "2+3*4?"
) -> Trajectory:
    return Trajectory(
        task=task,
        prompt_token_ids=[1, 500, 70000, 2**31 - 1],
        turns=[
            Turn(
                role="assistant",
                token_ids=[11, 12, 13],
                text="call calc",
                logprobs=[-0.1, -2.5, -0.003],
                entropies=[1.25, 0.7, 3.3],
                entropy_lower=[1.0, 0.5, 3.0],
                entropy_upper=[1.5, 0.9, 3.6],
                entropy_kind="topk",
                policy_version=7,
                finish_reason="stop",
                entropy_mean=1.75,
                replica="http://10.0.1.11:8000",
            ),
            Turn(
                role="tool",
                token_ids=[20, 21],
                text="14",
                tool_call_id="call-1",
                tool_name="calculator",
                tool_args={"expression": "2+3*4", "nested": [1, {"a": None}]},
                tool_result="14",
                tool_latency_s=0.0123,
                delta_entropy=-0.5,
            ),
            Turn(
                role="tool",
                token_ids=[],
                tool_name="search",
                tool_error="timeout",
                delta_entropy=0.2,
            ),
            Turn(
                role="assistant",
                token_ids=[30, 31],
                text="14",
                logprobs=[],
                entropies=[0.25, 0.5],
                entropy_kind="exact",
                policy_version=8,
                finish_reason="length",
                entropy_mean=0.375,
            ),
        ],
        group_id=group_id,
        answer="14",
        status="max_tokens",
        score=score,
        app_tag="calc-app",
        task_id="math-17",
        metadata={"user": "ü", "n": 3},
        created_at=1700000000.5,
    )
