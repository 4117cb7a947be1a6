"""TransformersBackend: batched decoding that is exact, reproducible and reloadable in place.

Uses a random-weight tiny Qwen2 model (vocab 512, hidden 64, 2 layers) saved to a tmp dir; prompts
are token ids, so no tokenizer is needed.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from _tiny_lm import VOCAB, recompute, tiny_model
from tokenizers import Tokenizer, models
from transformers import GenerationConfig, PreTrainedTokenizerFast, Qwen2ForCausalLM

from tepo_agent.backends import Backend, Generation, SamplingParams, TransformersBackend
from tepo_agent.errors import BackendError, ConfigError, ModelLoadError

GREEDY = SamplingParams(max_tokens=12, temperature=0)
PROMPTS = [
    [1, 2, 3, 4],
    [7] * 10,
    [9, 8],
    [3] * 30,
    [100, 200, 300],
    [4] * 7,
    [11],
    [500, 1, 499, 2, 498],
]


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tiny-qwen2")
    tiny_model(seed=0).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def other_weights_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Same architecture, different weights: a 'published checkpoint'."""
    path = tmp_path_factory.mktemp("tiny-qwen2-v2")
    tiny_model(seed=1).save_pretrained(path)
    return path


@pytest.fixture
def backend(model_dir: Path) -> Iterator[TransformersBackend]:
    b = TransformersBackend.from_pretrained(model_dir, device="cpu", batch_wait_s=0.05)
    yield b
    b.close()


def test_backend_satisfies_the_protocol(backend: TransformersBackend) -> None:
    assert isinstance(backend, Backend)
    assert backend.vocab_size == VOCAB
    assert backend.policy_version == 0
    assert backend.device == torch.device("cpu")


def test_logprobs_and_entropies_equal_a_full_sequence_recomputation(
    backend: TransformersBackend,
) -> None:
    for params in (GREEDY, SamplingParams(max_tokens=12, temperature=0.7, top_p=0.9, seed=3)):
        gen = backend.generate_sync([5, 6, 7, 8, 9], params)
        assert len(gen.token_ids) == 12 and gen.finish_reason == "length"
        assert gen.entropy_kind == "exact" and gen.policy_version == 0
        logprobs, entropies = recompute(backend.model, gen)
        torch.testing.assert_close(torch.tensor(gen.logprobs).double(), logprobs, atol=1e-4, rtol=0)
        torch.testing.assert_close(
            torch.tensor(gen.entropies).double(), entropies, atol=1e-4, rtol=0
        )


async def test_greedy_alone_and_inside_a_batch_of_eight_agree(
    backend: TransformersBackend,
) -> None:
    batched = await backend.generate_many(PROMPTS, GREEDY)
    assert backend.stats.max_batch == 8
    for prompt, together in zip(PROMPTS, batched, strict=True):
        alone = await backend.generate(prompt, GREEDY)
        assert together.prompt_token_ids == tuple(prompt)
        assert together.token_ids == alone.token_ids
        torch.testing.assert_close(
            torch.tensor(together.logprobs), torch.tensor(alone.logprobs), atol=1e-4, rtol=0
        )
        torch.testing.assert_close(
            torch.tensor(together.entropies), torch.tensor(alone.entropies), atol=1e-4, rtol=0
        )


async def test_seeded_sampling_is_reproducible_alone_and_in_a_batch(
    backend: TransformersBackend,
) -> None:
    seeded = SamplingParams(max_tokens=16, temperature=1.0, seed=1234)
    first = backend.generate_sync(PROMPTS[0], seeded)
    again = backend.generate_sync(PROMPTS[0], seeded)
    assert first.token_ids == again.token_ids
    # the same request inside a batch of rows with other (unseeded) params draws the same tokens
    mixed = await asyncio.gather(
        backend.generate(PROMPTS[1], SamplingParams(max_tokens=5, temperature=0.5)),
        backend.generate(PROMPTS[0], seeded),
        backend.generate(PROMPTS[2], GREEDY),
    )
    assert mixed[1].token_ids == first.token_ids
    other_seed = backend.generate_sync(PROMPTS[0], SamplingParams(max_tokens=16, seed=99))
    assert other_seed.token_ids != first.token_ids


def test_top_k_one_and_tiny_top_p_are_greedy(backend: TransformersBackend) -> None:
    greedy = backend.generate_sync(PROMPTS[4], GREEDY)
    for params in (
        SamplingParams(max_tokens=12, temperature=1.5, top_k=1, seed=5),
        SamplingParams(max_tokens=12, temperature=1.5, top_p=1e-6, seed=5),
    ):
        assert backend.generate_sync(PROMPTS[4], params).token_ids == greedy.token_ids


def test_top_k_sampling_only_draws_from_the_k_most_likely_tokens(
    backend: TransformersBackend,
) -> None:
    params = SamplingParams(max_tokens=20, temperature=2.0, top_k=3, seed=11)
    gen = backend.generate_sync(PROMPTS[5], params)
    ids = torch.tensor([list(gen.prompt_token_ids) + list(gen.token_ids)])
    with torch.no_grad():
        logits = backend.model(input_ids=ids).logits[0]
    n = len(gen.prompt_token_ids)
    for i, token in enumerate(gen.token_ids):
        assert token in logits[n - 1 + i].topk(3).indices.tolist()


def test_generation_stops_on_a_stop_token_and_keeps_it(backend: TransformersBackend) -> None:
    free = backend.generate_sync(PROMPTS[0], GREEDY)
    stop_at = free.token_ids[3]
    cut = free.token_ids.index(stop_at)
    gen = backend.generate_sync(
        PROMPTS[0], SamplingParams(max_tokens=12, temperature=0, stop_token_ids=(stop_at,))
    )
    assert gen.finish_reason == "stop"
    assert gen.token_ids == free.token_ids[: cut + 1]
    assert gen.token_ids[-1] == stop_at
    assert gen.logprobs == pytest.approx(free.logprobs[: cut + 1], abs=1e-5)


async def test_finished_rows_stop_while_others_continue(backend: TransformersBackend) -> None:
    short, long_ = await asyncio.gather(
        backend.generate(PROMPTS[0], SamplingParams(max_tokens=2, temperature=0)),
        backend.generate(PROMPTS[1], SamplingParams(max_tokens=30, temperature=0)),
    )
    assert len(short.token_ids) == 2 and len(long_.token_ids) == 30
    alone = backend.generate_sync(PROMPTS[1], SamplingParams(max_tokens=30, temperature=0))
    assert long_.token_ids == alone.token_ids


def test_eos_from_generation_config_stops_generation(model_dir: Path, tmp_path: Path) -> None:
    model = Qwen2ForCausalLM.from_pretrained(model_dir)
    with TransformersBackend(model) as plain:
        first = plain.generate_sync(PROMPTS[2], GREEDY).token_ids[0]
    model.generation_config = GenerationConfig(eos_token_id=[first, 0], pad_token_id=1)
    model.save_pretrained(tmp_path)
    with TransformersBackend.from_pretrained(tmp_path, device="cpu") as backend:
        gen = backend.generate_sync(PROMPTS[2], GREEDY)
    assert gen.token_ids == (first,) and gen.finish_reason == "stop"


def test_eos_falls_back_to_the_tokenizer_when_configs_name_none(
    model_dir: Path, tmp_path: Path
) -> None:
    model = Qwen2ForCausalLM.from_pretrained(model_dir)
    with TransformersBackend(model) as plain:
        first = plain.generate_sync(PROMPTS[2], GREEDY).token_ids[0]
    model.config.eos_token_id = model.config.pad_token_id = None
    model.generation_config = GenerationConfig()
    model.save_pretrained(tmp_path)
    vocab = {f"t{i}": i for i in range(VOCAB)} | {"<eos>": first}
    del vocab[f"t{first}"]
    word_level = Tokenizer(models.WordLevel(vocab, unk_token="t0"))
    PreTrainedTokenizerFast(tokenizer_object=word_level, eos_token="<eos>").save_pretrained(
        tmp_path
    )
    with TransformersBackend.from_pretrained(tmp_path, device="cpu") as backend:
        gen = backend.generate_sync(PROMPTS[2], GREEDY)
    assert gen.token_ids == (first,) and gen.finish_reason == "stop"


async def test_concurrent_asyncio_calls_share_batches(model_dir: Path) -> None:
    backend = TransformersBackend.from_pretrained(model_dir, device="cpu", batch_wait_s=0.5)
    try:
        gens = await asyncio.gather(*(backend.generate(p, GREEDY) for p in PROMPTS))
        stats = backend.stats
    finally:
        await backend.aclose()
    assert [g.prompt_token_ids for g in gens] == [tuple(p) for p in PROMPTS]
    assert stats.requests == 8 and stats.batches <= 2 and stats.max_batch >= 4
    assert stats.tokens == 8 * 12 and stats.failed_requests == 0


def test_concurrent_calls_from_threads_share_batches(model_dir: Path) -> None:
    backend = TransformersBackend.from_pretrained(model_dir, device="cpu", batch_wait_s=0.5)
    results: dict[int, Generation] = {}
    barrier = threading.Barrier(8)

    def call(i: int) -> None:
        barrier.wait()
        results[i] = backend.generate_sync(PROMPTS[i], GREEDY)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stats = backend.stats
    backend.close()
    assert sorted(results) == list(range(8))
    assert stats.requests == 8 and stats.batches <= 2 and stats.max_batch >= 4


def test_load_state_dict_swaps_weights_and_bumps_the_version(
    backend: TransformersBackend, other_weights_dir: Path
) -> None:
    new_model = Qwen2ForCausalLM.from_pretrained(other_weights_dir).eval()
    before = backend.generate_sync(PROMPTS[0], GREEDY)
    # state_dict() of a tied model holds lm_head.weight too; both forms must load
    backend.load_state_dict(new_model.state_dict(), policy_version=3)
    assert backend.policy_version == 3 and backend.stats.weight_loads == 1
    after = backend.generate_sync(PROMPTS[0], GREEDY)
    assert after.policy_version == 3 and before.policy_version == 0
    assert after.token_ids != before.token_ids
    logprobs, _ = recompute(new_model, after)
    torch.testing.assert_close(torch.tensor(after.logprobs).double(), logprobs, atol=1e-4, rtol=0)


def test_load_weights_reads_a_safetensors_checkpoint(
    backend: TransformersBackend, other_weights_dir: Path
) -> None:
    # save_pretrained drops the tied lm_head.weight: it is satisfied by embed_tokens.weight
    backend.load_weights(other_weights_dir, policy_version=2)
    new_model = Qwen2ForCausalLM.from_pretrained(other_weights_dir).eval()
    gen = backend.generate_sync(PROMPTS[3], GREEDY)
    assert gen.policy_version == 2
    logprobs, entropies = recompute(new_model, gen)
    torch.testing.assert_close(torch.tensor(gen.logprobs).double(), logprobs, atol=1e-4, rtol=0)
    torch.testing.assert_close(torch.tensor(gen.entropies).double(), entropies, atol=1e-4, rtol=0)


def test_requests_queued_before_a_reload_finish_on_the_old_weights(
    backend: TransformersBackend, model_dir: Path, other_weights_dir: Path
) -> None:
    old_model = Qwen2ForCausalLM.from_pretrained(model_dir).eval()
    running = backend.submit(PROMPTS[1], SamplingParams(max_tokens=60, temperature=0))
    backend.load_weights(other_weights_dir, policy_version=1)  # returns once the swap is done
    old = running.result()
    assert old.policy_version == 0
    logprobs, _ = recompute(old_model, old)
    torch.testing.assert_close(torch.tensor(old.logprobs).double(), logprobs, atol=1e-4, rtol=0)
    assert backend.generate_sync(PROMPTS[1], GREEDY).policy_version == 1


def test_wrong_shaped_weights_are_refused_and_old_weights_keep_serving(
    backend: TransformersBackend,
) -> None:
    before = backend.generate_sync(PROMPTS[0], GREEDY)
    state = dict(backend.model.state_dict())
    state["model.embed_tokens.weight"] = torch.zeros(VOCAB + 1, 64)
    with pytest.raises(BackendError, match="shapes do not match"):
        backend.load_state_dict(state, policy_version=5)
    with pytest.raises(BackendError, match="lacks"):
        backend.load_state_dict({"not.a.weight": torch.zeros(1)}, policy_version=5)
    partial = {"model.norm.weight": torch.ones(64)}
    with pytest.raises(BackendError, match="miss"):
        backend.load_state_dict(partial, policy_version=5)
    assert backend.policy_version == 0
    after = backend.generate_sync(PROMPTS[0], GREEDY)
    assert after.token_ids == before.token_ids and after.logprobs == before.logprobs


def test_load_weights_from_a_directory_without_safetensors_fails(
    backend: TransformersBackend, tmp_path: Path
) -> None:
    with pytest.raises(ModelLoadError, match="safetensors"):
        backend.load_weights(tmp_path, policy_version=1)


def test_an_error_inside_the_worker_fails_the_request_not_the_worker(
    backend: TransformersBackend,
) -> None:
    poison = 13

    def refuse_poison(_module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        if (args[0] == poison).any():
            raise RuntimeError("poisoned input")

    handle = backend.model.get_input_embeddings().register_forward_pre_hook(refuse_poison)
    try:
        with pytest.raises(BackendError, match="poisoned input"):
            backend.generate_sync([1, poison, 2], GREEDY)
        assert backend.generate_sync([1, 2], GREEDY).finish_reason == "length"
    finally:
        handle.remove()
    assert backend.stats.failed_requests == 1


def test_bad_prompts_are_rejected_before_queueing(backend: TransformersBackend) -> None:
    with pytest.raises(BackendError, match="empty"):
        backend.generate_sync([], GREEDY)
    with pytest.raises(BackendError, match="outside the vocabulary"):
        backend.generate_sync([1, VOCAB], GREEDY)
    with pytest.raises(BackendError, match="positions"):
        backend.generate_sync([1] * 256, GREEDY)


def test_generation_is_cut_at_the_context_length(backend: TransformersBackend) -> None:
    gen = backend.generate_sync([1] * 250, SamplingParams(max_tokens=50, temperature=0))
    assert len(gen.token_ids) == 6 and gen.finish_reason == "length"


def test_compute_entropy_off_returns_nan_entropies_and_the_same_logprobs(model_dir: Path) -> None:
    model = Qwen2ForCausalLM.from_pretrained(model_dir)
    with TransformersBackend(model) as exact:
        ref = exact.generate_sync(PROMPTS[0], GREEDY)
    with TransformersBackend(model, compute_entropy=False) as fast:
        gen = fast.generate_sync(PROMPTS[0], GREEDY)
    assert gen.token_ids == ref.token_ids and gen.logprobs == pytest.approx(ref.logprobs)
    assert all(h != h for h in gen.entropies)  # NaN


def test_bfloat16_model_reports_float32_entropy_of_its_logits(model_dir: Path) -> None:
    backend = TransformersBackend.from_pretrained(model_dir, device="cpu", dtype="bfloat16")
    try:
        assert next(backend.model.parameters()).dtype == torch.bfloat16
        gen = backend.generate_sync(PROMPTS[0], SamplingParams(max_tokens=6, temperature=0))
        logprobs, entropies = recompute(backend.model, gen)
    finally:
        backend.close()
    # the bf16 model's logits are upcast before the softmax, exactly as the recomputation does
    torch.testing.assert_close(torch.tensor(gen.entropies).double(), entropies, atol=2e-2, rtol=0)
    torch.testing.assert_close(torch.tensor(gen.logprobs).double(), logprobs, atol=2e-2, rtol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_defaults_to_bf16_and_matches_recomputation(model_dir: Path) -> None:
    backend = TransformersBackend.from_pretrained(model_dir, device="cuda")
    try:
        assert next(backend.model.parameters()).dtype == torch.bfloat16
        gens = backend.generate_sync(PROMPTS[0], SamplingParams(max_tokens=8, seed=0))
        ids = torch.tensor([list(gens.prompt_token_ids) + list(gens.token_ids)], device="cuda")
        with torch.no_grad():
            logits = backend.model(input_ids=ids).logits[0].float()
        n = len(gens.prompt_token_ids)
        dist = torch.distributions.Categorical(logits=logits[n - 1 : n - 1 + 8])
        torch.testing.assert_close(
            torch.tensor(gens.entropies), dist.entropy().cpu(), atol=5e-2, rtol=0
        )
    finally:
        backend.close()


async def test_closed_backend_refuses_requests(model_dir: Path) -> None:
    backend = TransformersBackend.from_pretrained(model_dir, device="cpu")
    await backend.aclose()
    await backend.aclose()  # idempotent
    with pytest.raises(BackendError, match="closed"):
        await backend.generate([1, 2], GREEDY)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"max_batch_size": 0}, "max_batch_size"), ({"pad_token_id": VOCAB}, "pad_token_id")],
)
def test_bad_configuration_is_rejected(
    model_dir: Path, kwargs: dict[str, int], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        TransformersBackend(Qwen2ForCausalLM.from_pretrained(model_dir), **kwargs)  # type: ignore[arg-type]


def test_loading_a_missing_model_directory_fails_clearly(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError):
        TransformersBackend.from_pretrained(tmp_path / "nope", device="cpu")
