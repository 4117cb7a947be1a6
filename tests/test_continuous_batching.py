"""Continuous batching in TransformersBackend: requests join a running batch at the next decode
step and leave when they finish; weight swaps wait only for the requests ahead of them.

A random-weight tiny Qwen2 (tests/_tiny_lm.py); prompts are token ids, so no tokenizer is needed.
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from _tiny_lm import recompute, tiny_model
from transformers import Qwen2ForCausalLM

from tepo_agent.backends import Generation, SamplingParams, TransformersBackend
from tepo_agent.errors import BackendError

GREEDY = SamplingParams(max_tokens=12, temperature=0)
PROMPTS = [[1, 2, 3, 4], [7] * 10, [9, 8], [3] * 30, [100, 200, 300], [4] * 7, [11], [500, 1, 2]]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tiny-qwen2")
    tiny_model(seed=0).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def other_weights_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tiny-qwen2-v2")
    tiny_model(seed=1).save_pretrained(path)
    return path


@pytest.fixture(params=[True, False], ids=["packed", "hf-forward"])
def backend(model_dir: Path, request: pytest.FixtureRequest) -> Iterator[TransformersBackend]:
    """The backend with mixed steps (the packed forward) and with HF's forward."""
    b = TransformersBackend.from_pretrained(
        model_dir, device="cpu", batch_wait_s=0, packed_forward=request.param
    )
    assert b.packed_forward is request.param
    yield b
    b.close()


def started(
    backend: TransformersBackend, prompt: list[int], params: SamplingParams
) -> concurrent.futures.Future[Generation]:
    """Submit a request and return once it has sampled its first token (it is in the batch)."""
    first = threading.Event()
    future = backend.submit(prompt, params, on_token=lambda *_: first.set())
    assert first.wait(30), "the request never sampled a token"
    return future


def assert_same(a: Generation, b: Generation) -> None:
    assert a.token_ids == b.token_ids
    torch.testing.assert_close(
        torch.tensor(a.logprobs), torch.tensor(b.logprobs), atol=1e-4, rtol=0
    )
    torch.testing.assert_close(
        torch.tensor(a.entropies), torch.tensor(b.entropies), atol=1e-4, rtol=0
    )


def test_a_request_joins_a_running_batch_and_leaves_before_it_ends(
    backend: TransformersBackend,
) -> None:
    long_ = started(backend, PROMPTS[1], SamplingParams(max_tokens=200, temperature=0))
    short = backend.submit(PROMPTS[0], SamplingParams(max_tokens=3, temperature=0))
    short_gen = short.result(timeout=30)
    assert not long_.done()  # the short request did not wait for the long one to finish
    long_.result(timeout=60)
    stats = backend.stats
    assert stats.batches == 1 and stats.max_batch == 2 and stats.requests == 2
    alone = backend.generate_sync(PROMPTS[0], SamplingParams(max_tokens=3, temperature=0))
    assert_same(short_gen, alone)


def test_greedy_rows_joining_at_different_steps_equal_each_alone(
    backend: TransformersBackend, model_dir: Path
) -> None:
    long_params = SamplingParams(max_tokens=40, temperature=0)
    futures = [started(backend, PROMPTS[0], long_params)]
    futures += [started(backend, p, GREEDY) for p in PROMPTS[1:]]  # each joins a later step
    joined = [f.result(timeout=60) for f in futures]
    assert backend.stats.batches == 1 and backend.stats.max_batch >= 4
    with TransformersBackend(  # each alone, through HF's forward, nothing cached
        Qwen2ForCausalLM.from_pretrained(model_dir), prefix_cache_bytes=0, packed_forward=False
    ) as plain:
        for prompt, together in zip(PROMPTS, joined, strict=True):
            params = long_params if prompt is PROMPTS[0] else GREEDY
            assert_same(together, plain.generate_sync(prompt, params))


def test_seeded_sampling_draws_the_same_tokens_whatever_step_it_joins(
    backend: TransformersBackend,
) -> None:
    seeded = SamplingParams(max_tokens=16, temperature=1.0, seed=1234)
    alone = backend.generate_sync(PROMPTS[2], seeded)
    running = started(backend, PROMPTS[3], SamplingParams(max_tokens=100, temperature=0.8))
    joined = backend.generate_sync(PROMPTS[2], seeded)
    running.result(timeout=60)
    assert_same(joined, alone)


def test_a_request_failing_as_it_joins_fails_alone(backend: TransformersBackend) -> None:
    poisoned = [13, 13, 13, 1]

    def refuse_poison(_module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        if int((args[0] == 13).sum()) >= 3:  # the poisoned prompt's tokens, not a decode step's
            raise RuntimeError("poisoned input")

    long_params = SamplingParams(max_tokens=200, temperature=0)
    handle = backend.model.get_input_embeddings().register_forward_pre_hook(refuse_poison)
    try:
        running = started(backend, PROMPTS[1], long_params)
        with pytest.raises(BackendError, match="poisoned input"):
            backend.generate_sync(poisoned, GREEDY)
        assert not running.done()  # the running row went on
        together = running.result(timeout=60)
    finally:
        handle.remove()
    assert backend.stats.failed_requests == 1
    assert_same(together, backend.generate_sync(PROMPTS[1], long_params))


def test_requests_beyond_max_batch_size_wait_for_a_free_row(model_dir: Path) -> None:
    with TransformersBackend.from_pretrained(
        model_dir, device="cpu", max_batch_size=2, batch_wait_s=0.2
    ) as small:
        futures = [small.submit(p, GREEDY) for p in PROMPTS[:5]]
        gens = [f.result(timeout=60) for f in futures]
        assert small.stats.max_batch == 2 and small.stats.requests == 5
        for prompt, gen in zip(PROMPTS, gens, strict=False):
            assert_same(gen, small.generate_sync(prompt, GREEDY))


def test_the_stream_callback_sees_every_token_before_the_result(
    backend: TransformersBackend,
) -> None:
    seen: list[tuple[int, float, float]] = []
    future = backend.submit(PROMPTS[4], GREEDY, on_token=lambda *t: seen.append(t))
    gen = future.result(timeout=30)
    assert [t for t, _, _ in seen] == list(gen.token_ids)
    assert [lp for _, lp, _ in seen] == list(gen.logprobs)
    assert [h for _, _, h in seen] == list(gen.entropies)


def test_a_failing_stream_callback_does_not_fail_its_request(
    backend: TransformersBackend,
) -> None:
    def gone(*_: object) -> None:
        raise RuntimeError("the listener went away")

    gen = backend.submit(PROMPTS[4], GREEDY, on_token=gone).result(timeout=30)
    assert len(gen.token_ids) == GREEDY.max_tokens and backend.stats.failed_requests == 0


def test_a_swap_under_continuous_load_waits_only_for_the_requests_ahead(
    backend: TransformersBackend, model_dir: Path, other_weights_dir: Path
) -> None:
    """Clients keep the batch busy the whole time: the swap must not wait for an idle moment,
    and no request mixes the two versions (each matches a recomputation with its version)."""
    stop = threading.Event()
    done: list[Generation] = []
    lock = threading.Lock()

    def client(i: int) -> None:
        params = SamplingParams(max_tokens=8 + 5 * i, temperature=1.0, seed=i)
        while not stop.is_set():
            gen = backend.generate_sync(PROMPTS[i], params)
            with lock:
                done.append(gen)

    clients = [threading.Thread(target=client, args=(i,)) for i in range(4)]
    for c in clients:
        c.start()
    while backend.stats.requests < 8:
        time.sleep(0.01)
    swap = threading.Thread(
        target=backend.load_weights, args=(other_weights_dir,), kwargs={"policy_version": 1}
    )
    swap.start()
    swap.join(timeout=30)  # returns once the new weights serve
    swapped = not swap.is_alive()
    deadline = time.monotonic() + 30
    while sum(g.policy_version == 1 for g in list(done)) < 8 and time.monotonic() < deadline:
        time.sleep(0.01)
    stop.set()
    for c in clients:
        c.join(timeout=60)
    assert swapped, "the swap waited for an idle moment that continuous load never gives"
    assert backend.stats.weight_loads == 1 and backend.stats.failed_requests == 0
    models = {0: Qwen2ForCausalLM.from_pretrained(model_dir).eval()}
    models[1] = Qwen2ForCausalLM.from_pretrained(other_weights_dir).eval()
    versions = [g.policy_version for g in done]
    assert set(versions) == {0, 1} and versions.count(1) >= 8
    for gen in done:
        logprobs, entropies = recompute(models[gen.policy_version], gen)
        torch.testing.assert_close(torch.tensor(gen.logprobs).double(), logprobs, atol=1e-4, rtol=0)
        torch.testing.assert_close(
            torch.tensor(gen.entropies).double(), entropies, atol=1e-4, rtol=0
        )


def test_requests_arriving_while_a_batch_runs_join_together_within_the_delay(
    model_dir: Path,
) -> None:
    with TransformersBackend.from_pretrained(
        model_dir, device="cpu", batch_wait_s=0, join_delay_steps=3
    ) as backend:
        long_ = started(backend, PROMPTS[1], SamplingParams(max_tokens=200, temperature=0))
        first_step: list[int] = []

        def note(*_: object) -> None:
            if len(first_step) < 2:
                first_step.append(backend.stats.steps)

        submitted = backend.stats.steps
        a = backend.submit(PROMPTS[0], SamplingParams(max_tokens=1, temperature=0), note)
        b = backend.submit(PROMPTS[2], SamplingParams(max_tokens=1, temperature=0), note)
        a.result(timeout=30)
        b.result(timeout=30)
        long_.result(timeout=60)
    # both were prefilled in one pass (same step), no later than 3 steps after they arrived
    assert first_step[0] == first_step[1] and first_step[0] - submitted <= 3 + 1
