"""Chunked logprobs and entropies equal the full log-softmax's, values and gradients alike."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from _tepo_data import make_model

from tepo_agent.errors import ConfigError
from tepo_agent.model.io import load_causal_lm
from tepo_agent.trainer.token_stats import TokenStats, chunked_token_stats


def _full(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    logp = torch.log_softmax(logits.float(), dim=-1)
    return logp.gather(-1, targets[..., None])[..., 0], -(logp.exp() * logp).sum(-1)


@pytest.mark.parametrize("chunk", [1, 3, 64])
def test_chunks_give_the_full_log_softmax_values_and_gradients(chunk: int) -> None:
    torch.manual_seed(0)
    head = torch.nn.Linear(8, 50, bias=False)
    hidden = torch.randn(2, 5, 8, requires_grad=True)  # (B, T, H)
    targets = torch.randint(0, 50, (2, 5))
    lp, ent = chunked_token_stats(hidden, head, targets, chunk)
    ref_lp, ref_ent = _full(head(hidden), targets)
    torch.testing.assert_close(lp, ref_lp, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(ent, ref_ent, atol=1e-6, rtol=1e-6)
    (g_h,) = torch.autograd.grad((lp * 0.7 + ent * 0.3).sum(), hidden)
    (ref_g,) = torch.autograd.grad((ref_lp * 0.7 + ref_ent * 0.3).sum(), hidden)
    torch.testing.assert_close(g_h, ref_g, atol=1e-6, rtol=1e-5)


def test_token_stats_match_the_models_own_logits(tmp_path: Path) -> None:
    model = load_causal_lm(make_model(tmp_path / "m"), dtype="float32")
    ids = torch.randint(0, 100, (2, 7))
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0  # right padding
    stats = TokenStats(model, chunk_tokens=4)
    assert stats.chunked
    with torch.no_grad():
        lp, ent = stats(ids, mask)
        logits = model(input_ids=ids, attention_mask=mask).logits  # (B, T, V)
        ref_lp, ref_ent = _full(logits[:, :-1], ids[:, 1:])
    assert lp.shape == ent.shape == (2, 7)
    assert float(lp[:, 0].abs().sum()) == 0.0 and float(lp[1, 5:].abs().sum()) == 0.0
    torch.testing.assert_close(lp[0, 1:], ref_lp[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ent[1, 1:5], ref_ent[1, :4], atol=1e-5, rtol=1e-5)


def test_a_chunk_must_hold_a_token() -> None:
    with pytest.raises(ConfigError, match="chunk_tokens"):
        chunked_token_stats(torch.zeros(1, 2, 4), torch.nn.Linear(4, 3), torch.zeros(1, 2), 0)
