"""The PPO-clip loss: hand-computed tables and gradient sanity."""

from __future__ import annotations

import math

import pytest
import torch

from tepo_agent.errors import ConfigError, TrainerError
from tepo_agent.trainer.config import LossConfig
from tepo_agent.trainer.loss import k3_kl, policy_loss, tis_weights

CFG = LossConfig(clip_low=0.2, clip_high=0.28)


def _log(*probs: float) -> list[float]:
    return [math.log(p) for p in probs]


def test_clip_table_loss_metrics_and_gradients() -> None:
    # behaviour logprob 0 everywhere, so ratio = exp(logp) = r.
    #  tok   r     A    r·A   clip(r)·A   min     pg      clipped?
    #   0   3.0   5.0   (masked out: position 0)
    #   1   1.5  +1.0   1.5   1.28        1.28   −1.28    high → no grad
    #   2   0.5  −1.0  −0.5  −0.8        −0.8    +0.8     low  → no grad
    #   3   1.1  +2.0   2.2   2.2         2.2    −2.2     no   → d/dlogp = −A·r/3 = −0.7333
    # token-mean loss = (−1.28 + 0.8 − 2.2)/3 = −0.8933333
    logp = torch.tensor([_log(3.0, 1.5, 0.5, 1.1)], requires_grad=True)
    out = policy_loss(
        logp,
        torch.zeros(1, 4),
        torch.tensor([[5.0, 1.0, -1.0, 2.0]]),
        torch.tensor([[0.0, 1.0, 1.0, 1.0]]),
        CFG,
    )
    assert out.loss.item() == pytest.approx(-2.68 / 3)
    m = out.metrics
    assert m["clip_frac_high"] == pytest.approx(1 / 3)
    assert m["clip_frac_low"] == pytest.approx(1 / 3)
    assert m["ratio_mean"] == pytest.approx(3.1 / 3)
    assert (m["ratio_min"], m["ratio_max"]) == (pytest.approx(0.5), pytest.approx(1.5))
    assert m["tokens"] == 3 and m["tis_weight_mean"] == 1.0 and m["off_policy_frac"] == 0.0
    out.loss.backward()
    assert logp.grad is not None
    assert logp.grad[0].tolist() == pytest.approx([0.0, 0.0, 0.0, -2.0 * 1.1 / 3])


def test_gradient_sign_follows_the_advantage_inside_the_trust_region() -> None:
    # ratio 1 (logp = behaviour): d loss/d logp = −A/N; a descent step raises logp iff A > 0
    logp = torch.tensor([_log(0.5, 0.5, 0.5, 0.5)], requires_grad=True)
    adv = torch.tensor([[0.0, 1.5, -0.7, 0.0]])
    out = policy_loss(logp, logp.detach().clone(), adv, torch.tensor([[0.0, 1, 1, 1]]), CFG)
    out.loss.backward()
    assert logp.grad is not None
    g = logp.grad[0]
    assert g[1] < 0 < g[2] and g[3] == 0.0
    assert g.tolist() == pytest.approx([0.0, -1.5 / 3, 0.7 / 3, 0.0])


def test_positive_advantage_below_low_clip_still_gets_gradient() -> None:
    # r = 0.5, A = +1: min(0.5, 0.8) = 0.5 is the unclipped term, so PPO lets it recover
    logp = torch.tensor([[0.0, math.log(0.5)]], requires_grad=True)
    out = policy_loss(
        logp, torch.zeros(1, 2), torch.tensor([[0.0, 1.0]]), torch.tensor([[0.0, 1.0]]), CFG
    )
    out.loss.backward()
    assert logp.grad is not None and logp.grad[0, 1].item() == pytest.approx(-0.5)
    assert out.metrics["clip_frac_low"] == 0.0


def test_sequence_mean_weighs_each_sequence_equally() -> None:
    # ratio 1, pg = −A. Row 0: A = [1, 3], row 1: A = [−1] (+ padding).
    # token mean = −(1 + 3 − 1)/3 = −1; sequence mean = −((1 + 3)/2 + (−1))/2 = −0.5
    logp = torch.zeros(2, 3)
    adv = torch.tensor([[0.0, 1.0, 3.0], [0.0, -1.0, 0.0]])
    mask = torch.tensor([[0.0, 1.0, 1.0], [0.0, 1.0, 0.0]])
    token = policy_loss(logp, logp, adv, mask, CFG)
    seq = policy_loss(logp, logp, adv, mask, LossConfig(aggregation="sequence_mean"))
    assert token.loss.item() == pytest.approx(-1.0)
    assert seq.loss.item() == pytest.approx(-0.5)


def test_truncated_importance_weights_apply_to_off_policy_tokens_only() -> None:
    #  row  behaviour  proximal  off?   π_prox/π_beh   w = min(·, 2)
    #   0    0.25       0.75     yes    3.0            2.0 (capped)
    #   0    0.5        0.6      yes    1.2            1.2
    #   1    0.5        0.25     no     —              1.0
    # logp = proximal (ratio 1), A = 1 → pg = −1; loss = −(2 + 1.2 + 1)/3 = −1.4
    behaviour = torch.tensor([[0.0, *_log(0.25, 0.5)], [0.0, math.log(0.5), 0.0]])
    proximal = torch.tensor([[0.0, *_log(0.75, 0.6)], [0.0, math.log(0.25), 0.0]])
    mask = torch.tensor([[0.0, 1.0, 1.0], [0.0, 1.0, 0.0]])
    off = torch.tensor([True, False])
    logp = proximal.clone().requires_grad_(True)
    out = policy_loss(
        logp, behaviour, torch.ones(2, 3), mask, CFG, proximal_logprobs=proximal, off_policy=off
    )
    assert out.loss.item() == pytest.approx(-1.4)
    assert out.metrics["tis_weight_mean"] == pytest.approx(1.4)
    assert out.metrics["tis_capped_frac"] == pytest.approx(1 / 3)
    assert out.metrics["off_policy_frac"] == pytest.approx(2 / 3)
    w = tis_weights(proximal, behaviour, off[:, None].expand(2, 3), cap=2.0)
    assert w[0, 1:].tolist() == pytest.approx([2.0, 1.2]) and w[1, 1].item() == 1.0


def test_off_policy_tokens_without_proximal_logprobs_are_rejected() -> None:
    z = torch.zeros(1, 2)
    with pytest.raises(TrainerError, match="proximal_logprobs"):
        policy_loss(z, z, z, torch.ones(1, 2), CFG, off_policy=torch.tensor([True]))


def test_k3_kl_penalty_matches_hand_table() -> None:
    # δ = ref − logp; k3 = e^δ − δ − 1
    #   δ = +ln 2: 2 − 0.6931472 − 1 = 0.3068528
    #   δ = −ln 2: 0.5 + 0.6931472 − 1 = 0.1931472     mean = 0.25
    # A = 0 → pg = 0; loss = 0.1 · 0.25 = 0.025
    logp = torch.tensor([[0.0, -1.0, -1.0]])
    ref = torch.tensor([[0.0, -1.0 + math.log(2), -1.0 - math.log(2)]])
    assert k3_kl(logp, ref)[0, 1:].tolist() == pytest.approx([0.3068528, 0.1931472])
    mask = torch.tensor([[0.0, 1.0, 1.0]])
    out = policy_loss(
        logp,
        logp,
        torch.zeros(1, 3),
        mask,
        LossConfig(kl_coef=0.1),
        ref_logprobs=ref,
        entropy=torch.tensor([[9.0, 1.0, 2.0]]),
    )
    assert out.loss.item() == pytest.approx(0.025)
    assert out.metrics["kl"] == pytest.approx(0.25)
    assert out.metrics["entropy"] == pytest.approx(1.5)


def test_empty_mask_gives_zero_loss_that_still_backpropagates() -> None:
    logp = torch.zeros(1, 3, requires_grad=True)
    out = policy_loss(logp, torch.zeros(1, 3), torch.ones(1, 3), torch.zeros(1, 3), CFG)
    out.loss.backward()
    assert out.loss.item() == 0.0 and out.metrics["tokens"] == 0
    assert logp.grad is not None and logp.grad.abs().sum().item() == 0.0


def test_policy_loss_rejects_misaligned_or_incomplete_input() -> None:
    z = torch.zeros(1, 3)
    with pytest.raises(TrainerError, match="advantages has shape"):
        policy_loss(z, z, torch.zeros(1, 2), z, CFG)
    with pytest.raises(TrainerError, match="ref_logprobs"):
        policy_loss(z, z, z, z, LossConfig(kl_coef=0.1))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"clip_low": 1.0},
        {"clip_low": -0.1},
        {"clip_high": -0.1},
        {"tis_cap": 0.5},
        {"kl_coef": -1.0},
        {"aggregation": "sum"},
        {"kl_estimator": "k1"},
        {"clip_high": float("inf")},
    ],
)
def test_loss_config_rejects_invalid_values(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        LossConfig(**kwargs)  # type: ignore[arg-type]
