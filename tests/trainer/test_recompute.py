"""Exact recomputation: a tiny random Qwen2 model's batched logprobs equal its own sampling."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from tepo_agent.errors import ConfigError, TrainerError
from tepo_agent.trainer.batch import pack_batch
from tepo_agent.trainer.recompute import (
    compare_logprobs,
    exact_turn_entropies,
    forward_logprobs,
    recompute,
)
from tepo_agent.trajectory import Trajectory, Turn

VOCAB = 64


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Qwen2ForCausalLM:
    """A random-weight Qwen2, saved and loaded back like a real checkpoint directory."""
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        initializer_range=0.5,  # peaky distributions, so logprobs differ a lot between tokens
    )
    path: Path = tmp_path_factory.mktemp("tiny-qwen2")
    Qwen2ForCausalLM(config).save_pretrained(path)
    loaded = Qwen2ForCausalLM.from_pretrained(path, dtype=torch.float32)
    loaded.eval()
    return loaded


def _greedy(
    model: Qwen2ForCausalLM, ids: list[int], n: int
) -> tuple[list[int], list[float], list[float]]:
    """Plain step-by-step greedy decoding: sampled ids, their logprobs and entropies."""
    ids = list(ids)
    out: list[int] = []
    logprobs: list[float] = []
    entropies: list[float] = []
    with torch.no_grad():
        for _ in range(n):
            logits = model(input_ids=torch.tensor([ids])).logits[0, -1].float()
            logp = torch.log_softmax(logits, dim=-1)
            tok = int(logp.argmax())
            out.append(tok)
            logprobs.append(float(logp[tok]))
            entropies.append(float(-(logp.exp() * logp).sum()))
            ids.append(tok)
    return out, logprobs, entropies


def _sampled_trajectory(
    model: Qwen2ForCausalLM, prompt: list[int], tool_tokens: list[int] | None
) -> tuple[Trajectory, list[float]]:
    """t_0 (and, with tool tokens, env + t_1) generated greedily; returns all turn entropies."""
    ids0, lp0, h0 = _greedy(model, prompt, 6)
    turns = [Turn("assistant", ids0, logprobs=lp0, entropies=h0, policy_version=1)]
    entropies = list(h0)
    if tool_tokens is not None:
        ids1, lp1, h1 = _greedy(model, prompt + ids0 + tool_tokens, 5)
        turns += [
            Turn("tool", tool_tokens),
            Turn("assistant", ids1, logprobs=lp1, entropies=h1, policy_version=1),
        ]
        entropies += h1
    return Trajectory(task="t", prompt_token_ids=prompt, turns=turns), entropies


@pytest.mark.parametrize("micro_batch_size", [1, 2, 8])
def test_recomputed_logprobs_equal_step_by_step_generation(
    model: Qwen2ForCausalLM, micro_batch_size: int
) -> None:
    long, long_h = _sampled_trajectory(model, [3, 17, 42, 5], tool_tokens=[60, 61, 62])
    short, short_h = _sampled_trajectory(model, [9, 1], tool_tokens=None)
    batch = pack_batch([long, short])
    logprobs, entropy = recompute(model, batch, micro_batch_size=micro_batch_size)
    assert logprobs.shape == batch.input_ids.shape == entropy.shape

    check = compare_logprobs(batch, logprobs)
    assert check.tokens == 6 + 5 + 6
    assert check.max_abs_diff < 1e-5
    sampled = batch.sampled_mask
    got_h = [entropy[b][sampled[b]].tolist() for b in range(2)]
    assert got_h[0] == pytest.approx(long_h, abs=1e-5)
    assert got_h[1] == pytest.approx(short_h, abs=1e-5)
    # padding and position 0 carry zeros
    assert logprobs[1, batch.lengths[1] :].abs().sum().item() == 0.0
    assert logprobs[:, 0].abs().sum().item() == 0.0


def test_recompute_detects_different_weights(model: Qwen2ForCausalLM) -> None:
    traj, _ = _sampled_trajectory(model, [3, 17, 42, 5], tool_tokens=None)
    batch = pack_batch([traj])
    other = Qwen2ForCausalLM(model.config)  # fresh random weights
    logprobs, _ = recompute(other, batch, micro_batch_size=4)
    assert compare_logprobs(batch, logprobs).max_abs_diff > 1e-2


def test_recompute_restores_training_mode_and_forward_keeps_grad(model: Qwen2ForCausalLM) -> None:
    traj, _ = _sampled_trajectory(model, [3, 4], tool_tokens=None)
    batch = pack_batch([traj])
    model.train()
    try:
        recompute(model, batch, micro_batch_size=1)
        assert model.training
        lp, _ = forward_logprobs(model, batch.input_ids, batch.attention_mask)
        assert lp.requires_grad
    finally:
        model.eval()
    with pytest.raises(ConfigError):
        recompute(model, batch, micro_batch_size=0)


def test_exact_turn_entropies_from_recomputed_entropy(model: Qwen2ForCausalLM) -> None:
    traj, h = _sampled_trajectory(model, [3, 17, 42, 5], tool_tokens=[60, 61, 62])
    _, entropy = recompute(model, pack_batch([traj]), micro_batch_size=1)
    got = exact_turn_entropies(traj, entropy[0], window=None)
    h0, h1 = sum(h[:6]) / 6, sum(h[6:]) / 5
    assert got.turn_entropies == pytest.approx((h0, h1), abs=1e-5)
    assert got.delta_entropies == pytest.approx((h1 - h0,), abs=1e-5)


def _turns_table() -> Trajectory:
    # prompt [0] | t_0 [1, 1, 1] | env [2] + parallel call (no tokens) | t_1 [3, 3] | env [4]
    asst = [Turn("assistant", [1, 1, 1]), Turn("assistant", [3, 3])]
    return Trajectory(
        task="t",
        prompt_token_ids=[0],
        turns=[asst[0], Turn("tool", [2]), Turn("tool", []), asst[1], Turn("tool", [4])],
    )


def test_exact_turn_entropies_match_hand_table() -> None:
    traj = _turns_table()
    #        prompt  t_0               env  t_1        env
    values = [9.0, 1.0, 2.0, 6.0, 9.0, 0.5, 1.5, 9.0]
    # H(t_0) = 3, H(t_1) = 1; both parallel calls: ΔH = −2; the last call has no next turn
    got = exact_turn_entropies(traj, values, window=None)
    assert got.turn_entropies == (3.0, 1.0)
    assert got.delta_entropies == (-2.0, -2.0, None)
    # window 2: H(t_0) = 1.5, H(t_1) = 1 → ΔH = −0.5
    windowed = exact_turn_entropies(traj, torch.tensor(values), window=2)
    assert windowed.turn_entropies == (1.5, 1.0)
    assert windowed.delta_entropies == (-0.5, -0.5, None)
    with pytest.raises(TrainerError, match="aligned"):
        exact_turn_entropies(traj, values[:4], window=None)
