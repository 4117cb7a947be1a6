"""Prefix caching: a shared system prompt and a conversation's earlier turns are not recomputed,
the numbers equal those computed without the cache, a weight swap empties it, memory is bounded.

The PrefixCache tests use hand-made tensors (block contents are their token ids, so a lookup's
result can be read off); the backend tests use a random-weight tiny Qwen2 (tests/_tiny_lm.py).
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from _tiny_lm import recompute, tiny_model
from transformers import Qwen2ForCausalLM

from tepo_agent.backends import Generation, SamplingParams, TransformersBackend
from tepo_agent.backends._kv import BatchKV
from tepo_agent.backends._prefix_cache import PrefixCache

BS = 4  # block size in the PrefixCache unit tests
SYSTEM = [(7 * i + 3) % 500 for i in range(40)]  # a 40-token "system prompt with tool schemas"


def row_kv(tokens: list[int], layers: int = 2) -> tuple[tuple[torch.Tensor, torch.Tensor], ...]:
    """A fake cache whose column t holds token t's id (keys) and its negation (values)."""
    col = torch.tensor(tokens, dtype=torch.float32).view(1, -1, 1)  # (H=1, L, D=1)
    return tuple((col + layer, -col - layer) for layer in range(layers))


def test_lookup_returns_whole_cached_blocks_under_the_same_prefix_only() -> None:
    cache = PrefixCache(max_bytes=10**6, block_size=BS)
    tokens = list(range(10))  # blocks [0-3] [4-7]; [8, 9] is not a whole block
    cache.store(tokens, row_kv(tokens))
    assert cache.blocks == 2
    n, kv = cache.lookup([*tokens, 99], limit=10)
    assert n == 8 and kv is not None
    assert kv[1][0].flatten().tolist() == [t + 1.0 for t in range(8)]
    assert kv[1][1].flatten().tolist() == [-t - 1.0 for t in range(8)]
    assert cache.lookup(tokens, limit=7)[0] == 4  # a limit inside block 2 stops before it
    assert cache.lookup([0, 1, 2, 3, 4, 5, 6, 0, 8], limit=9)[0] == 4  # diverges in block 2
    assert cache.lookup([4, 5, 6, 7, 0, 1, 2, 3], limit=8) == (0, None)  # block 2 needs block 1
    assert cache.lookup([1, 2, 3, 4], limit=4) == (0, None)


def test_memory_stays_bounded_and_a_prefix_outlives_its_extensions() -> None:
    one_block = 2 * 2 * BS * 4  # 2 layers x (keys, values) x BS floats of 4 bytes
    cache = PrefixCache(max_bytes=3 * one_block, block_size=BS)
    conversation = list(range(12))  # 3 blocks: a chain
    cache.store(conversation, row_kv(conversation))
    assert cache.nbytes == 3 * one_block
    other = [100, 101, 102, 103]
    cache.store(other, row_kv(other))  # one block too many: the least recent goes
    assert cache.nbytes <= 3 * one_block and cache.blocks == 3
    # the deepest block of the chain went, not its root: the shared prefix survives
    assert cache.lookup(conversation, limit=12)[0] == 8
    assert cache.lookup(other, limit=4)[0] == 4


def test_blocks_hold_their_own_memory_and_eviction_frees_what_it_counts() -> None:
    # rows stored straight from a running batch: each block must be a tensor of its own, not a
    # view keeping the batch's buffers (or the whole row) alive
    rows = [[*range(i * 100, i * 100 + 9)] for i in range(3)]  # 2 whole blocks each, 1 spare
    batch = BatchKV.from_rows([row_kv(r) for r in rows], torch.device("cpu"), capacity=4)
    one_block = 2 * 2 * BS * 4
    cache = PrefixCache(max_bytes=4 * one_block, block_size=BS)
    for r, tokens in enumerate(rows[:2]):
        cache.store(tokens, batch.row_source(r))
    assert cache.blocks == 4 and cache.nbytes == 4 * one_block
    blocks = list(cache._blocks.values())
    assert sum(b.kv.untyped_storage().nbytes() for b in blocks) == cache.nbytes
    alive = [weakref.ref(b.kv) for b in blocks]
    del blocks
    cache.store(rows[2], batch.row_source(2))  # two blocks in: the two least recent go
    assert cache.blocks == 4 and cache.nbytes == 4 * one_block
    assert [ref() is None for ref in alive] == [True, True, False, False]  # row 0's: freed
    assert cache.lookup(rows[0], limit=8) == (0, None)
    n, kv = cache.lookup(rows[2], limit=9)
    assert n == 8 and kv is not None
    assert kv[1][0].flatten().tolist() == [t + 1.0 for t in rows[2][:8]]


def test_clear_forgets_everything() -> None:
    cache = PrefixCache(max_bytes=10**6, block_size=BS)
    cache.store(list(range(8)), row_kv(list(range(8))))
    cache.clear()
    assert cache.blocks == 0 and cache.nbytes == 0
    assert cache.lookup(list(range(8)), limit=8) == (0, None)


# -- the backend ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tiny-qwen2")
    tiny_model(seed=0).save_pretrained(path)
    return path


@pytest.fixture
def cached(model_dir: Path) -> Iterator[TransformersBackend]:
    with TransformersBackend.from_pretrained(model_dir, device="cpu", batch_wait_s=0) as b:
        yield b


@pytest.fixture(scope="module")
def uncached(model_dir: Path) -> Iterator[TransformersBackend]:
    with TransformersBackend.from_pretrained(
        model_dir, device="cpu", batch_wait_s=0, prefix_cache_bytes=0
    ) as b:
        yield b


def conversation(backend: TransformersBackend, user: list[int], seed: int) -> list[Generation]:
    """Three turns: each prompt is the previous prompt, its sampled tokens and a 'tool result'."""
    prompt, turns = SYSTEM + user, []
    for turn in range(3):
        params = SamplingParams(max_tokens=10, temperature=1.0, seed=seed + turn)
        gen = backend.generate_sync(prompt, params)
        turns.append(gen)
        prompt = prompt + list(gen.token_ids) + [300 + turn, 301, 302]
    return turns


def assert_close(a: Generation, b: Generation) -> None:
    assert a.token_ids == b.token_ids
    torch.testing.assert_close(
        torch.tensor(a.logprobs), torch.tensor(b.logprobs), atol=1e-4, rtol=0
    )
    torch.testing.assert_close(
        torch.tensor(a.entropies), torch.tensor(b.entropies), atol=1e-4, rtol=0
    )


def test_cached_prefixes_give_the_numbers_computed_without_them(
    cached: TransformersBackend, uncached: TransformersBackend
) -> None:
    for user, seed in (([1, 2, 3], 10), ([4, 5, 6, 7, 8], 20)):  # the second reuses SYSTEM
        with_cache = conversation(cached, user, seed)
        without = conversation(uncached, user, seed)
        for a, b in zip(with_cache, without, strict=True):
            assert_close(a, b)
            logprobs, entropies = recompute(cached.model, a)
            torch.testing.assert_close(
                torch.tensor(a.logprobs).double(), logprobs, atol=1e-4, rtol=0
            )
            torch.testing.assert_close(
                torch.tensor(a.entropies).double(), entropies, atol=1e-4, rtol=0
            )
    stats = cached.stats
    # the second conversation's first turn reused SYSTEM's two whole 16-token blocks, and each
    # of the four later turns at least as much
    assert stats.cached_prompt_tokens >= 32 + 4 * 32
    assert uncached.stats.cached_prompt_tokens == 0


def test_a_weight_swap_empties_the_cache(cached: TransformersBackend, tmp_path: Path) -> None:
    conversation(cached, [1, 2, 3], seed=1)
    assert cached.prefix_cache is not None and cached.prefix_cache.blocks > 0
    tiny_model(seed=1).save_pretrained(tmp_path)
    cached.load_weights(tmp_path, policy_version=1)
    assert cached.prefix_cache.blocks == 0
    hits = cached.stats.cached_prompt_tokens
    gen = cached.generate_sync([*SYSTEM, 1, 2, 3], SamplingParams(max_tokens=8, temperature=0))
    assert cached.stats.cached_prompt_tokens == hits  # nothing of the old weights' KV was read
    logprobs, _ = recompute(Qwen2ForCausalLM.from_pretrained(tmp_path).eval(), gen)
    torch.testing.assert_close(torch.tensor(gen.logprobs).double(), logprobs, atol=1e-4, rtol=0)


def test_the_backend_keeps_its_prefix_cache_within_its_budget(model_dir: Path) -> None:
    # a 16-token block: 2 layers x (keys, values) x 2 kv heads x 16 tokens x 16 dims x 4 bytes
    block = 2 * 2 * 2 * 16 * 16 * 4
    budget = 3 * block  # each of the 6 conversations below leaves 2 blocks
    with TransformersBackend.from_pretrained(
        model_dir, device="cpu", batch_wait_s=0, prefix_cache_bytes=budget
    ) as small:
        for i in range(6):
            small.generate_sync([i + 1] * 40, SamplingParams(max_tokens=4, temperature=0))
            assert small.prefix_cache is not None
            assert 0 < small.prefix_cache.nbytes <= budget
