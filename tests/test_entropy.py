"""Entropy math: exact token entropy, top-k bounds, turn entropy and ΔH against hand tables."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tepo_agent.entropy import (
    EntropyEstimate,
    delta_entropies,
    delta_entropy,
    entropy_from_logits,
    token_logprobs_and_entropy,
    topk_entropy_bounds,
    turn_entropy,
)
from tepo_agent.errors import ConfigError

LN2 = math.log(2)
NEG_INF = float("-inf")

# (logits, token id, expected logprob, expected entropy), worked by hand:
EXACT_TABLE = [
    # uniform over 2: p = 1/2 each; H = ln 2; log p = -ln 2
    ([0.0, 0.0], 0, -LN2, LN2),
    # uniform over 4: H = ln 4 = 2 ln 2
    ([3.0, 3.0, 3.0, 3.0], 2, -2 * LN2, 2 * LN2),
    # logits (ln 1, ln 3): p = (1/4, 3/4); H = 1/4·ln 4 + 3/4·ln(4/3) = 0.562335...
    ([0.0, math.log(3)], 1, math.log(0.75), 0.25 * math.log(4) + 0.75 * math.log(4 / 3)),
    # a masked token contributes 0·log 0 = 0: uniform over the 2 others, H = ln 2
    ([0.0, NEG_INF, 0.0], 2, -LN2, LN2),
    # one finite logit: p = (1, 0); H = 0; log p = 0
    ([5.0, NEG_INF], 0, 0.0, 0.0),
]


@pytest.mark.parametrize(("logits", "token", "logprob", "entropy"), EXACT_TABLE)
def test_exact_entropy_and_logprob_match_hand_table(
    logits: list[float], token: int, logprob: float, entropy: float
) -> None:
    lp, h = token_logprobs_and_entropy(torch.tensor([logits]), torch.tensor([token]))
    assert lp.dtype == torch.float32 and h.dtype == torch.float32
    assert lp.item() == pytest.approx(logprob, abs=1e-6)
    assert h.item() == pytest.approx(entropy, abs=1e-6)
    assert not torch.isnan(h).any()
    assert entropy_from_logits(torch.tensor(logits)).item() == pytest.approx(entropy, abs=1e-6)


def test_exact_entropy_matches_torch_categorical_for_a_large_vocabulary() -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 152_064, generator=gen) * 4  # (B, T, V), Qwen2.5-sized vocab
    ids = torch.randint(0, 152_064, (3, 5), generator=gen)
    lp, h = token_logprobs_and_entropy(logits, ids)
    ref = torch.distributions.Categorical(logits=logits.double())
    assert h.shape == (3, 5)
    torch.testing.assert_close(h.double(), ref.entropy(), atol=1e-4, rtol=0)
    torch.testing.assert_close(lp.double(), ref.log_prob(ids), atol=1e-4, rtol=0)


def test_a_row_without_a_distribution_has_nan_entropy_and_its_neighbours_do_not() -> None:
    logits = torch.tensor(
        [
            [NEG_INF, NEG_INF, NEG_INF],  # all masked
            [0.0, math.nan, 0.0],
            [0.0, math.inf, 0.0],
            [NEG_INF, 0.0, 0.0],  # a masked first token: uniform over the 2 others
        ]
    )
    h = entropy_from_logits(logits)
    assert torch.isnan(h[:3]).all()
    assert h[3].item() == pytest.approx(LN2, abs=1e-6)
    _, h_tok = token_logprobs_and_entropy(logits, torch.tensor([0, 0, 0, 1]))
    assert torch.equal(torch.isnan(h_tok), torch.isnan(h))


def test_bfloat16_logits_are_upcast_before_the_softmax() -> None:
    gen = torch.Generator().manual_seed(1)
    logits = (torch.randn(4, 1000, generator=gen) * 3).bfloat16()
    h = entropy_from_logits(logits)
    assert h.dtype == torch.float32
    ref = torch.distributions.Categorical(logits=logits.double()).entropy()
    torch.testing.assert_close(h.double(), ref, atol=1e-5, rtol=0)


def test_mismatched_token_shape_is_rejected() -> None:
    with pytest.raises(ConfigError, match="token_ids shape"):
        token_logprobs_and_entropy(torch.zeros(2, 3, 10), torch.zeros(2, dtype=torch.long))


# Top-k bounds. True distribution p = (1/2, 1/4, 1/8, 1/8), V = 4:
#   exact H = 1/2·ln 2 + 1/4·ln 4 + 2·(1/8·ln 8) = 1.75 ln 2 = 1.213008
# (top-k logprobs, V, lower, upper), estimate = midpoint:
TOPK_TABLE = [
    # k=2: H_top = 1/2 ln2 + 1/4 ln4 = ln 2; r = 1/4 over m = 2 tokens, each <= p_min = 1/4
    #   upper = ln2 + 1/4·ln(2 / (1/4)) = ln2 + 3/4 ln2 = 1.75 ln2 (the tail really is uniform)
    #   lower: n = ⌊(1/4)/(1/4)⌋ = 1 token at 1/4, remainder 0 → ln2 + 1/4·ln 4 = 1.5 ln2
    ([math.log(0.5), math.log(0.25)], 4, 1.5 * LN2, 1.75 * LN2),
    # k=1: H_top = 1/2 ln2; r = 1/2 over m = 3, each <= 1/2
    #   upper = 1/2 ln2 + 1/2·ln(3 / (1/2)) = 1/2 ln2 + 1/2 ln6 = 1.242453
    #   lower: n = 1 token at 1/2 → 1/2 ln2 + 1/2 ln2 = ln2
    ([math.log(0.5)], 4, LN2, 0.5 * LN2 + 0.5 * math.log(6)),
    # k=V=4: nothing unknown, all three equal the exact 1.75 ln2 (order of the input is free)
    ([math.log(0.125), math.log(0.5), math.log(0.125), math.log(0.25)], 4, 1.75 * LN2, 1.75 * LN2),
    # V=10, k=1, p_1 = 0.9: H_top = -0.9 ln0.9 = 0.094824; r = 0.1 over m = 9
    #   upper = 0.094824 + 0.1·ln(9/0.1) = 0.094824 + 0.449981 = 0.544805
    #   lower: n = ⌊0.1/0.9⌋ = 0, remainder 0.1 → 0.094824 − 0.1·ln 0.1 = 0.325083
    (
        [math.log(0.9)],
        10,
        -0.9 * math.log(0.9) - 0.1 * math.log(0.1),
        -0.9 * math.log(0.9) + 0.1 * math.log(90),
    ),
]


@pytest.mark.parametrize(("topk", "vocab", "lower", "upper"), TOPK_TABLE)
def test_topk_bounds_match_hand_table(
    topk: list[float], vocab: int, lower: float, upper: float
) -> None:
    est = topk_entropy_bounds(topk, vocab)
    assert isinstance(est, EntropyEstimate) and isinstance(est.estimate, float)
    assert est.lower == pytest.approx(lower, abs=1e-9)
    assert est.upper == pytest.approx(upper, abs=1e-9)
    assert est.estimate == pytest.approx((lower + upper) / 2, abs=1e-9)


def test_topk_bounds_vectorise_over_positions() -> None:
    rows = [[math.log(0.5), math.log(0.25)], [math.log(0.9), math.log(0.05)]]
    est = topk_entropy_bounds(torch.tensor(rows, dtype=torch.float64), 10)
    assert est.lower.shape == (2,)
    for i, row in enumerate(rows):
        one = topk_entropy_bounds(row, 10)
        assert est.lower[i].item() == pytest.approx(one.lower, abs=1e-12)
        assert est.upper[i].item() == pytest.approx(one.upper, abs=1e-12)
        assert est.estimate[i].item() == pytest.approx(one.estimate, abs=1e-12)


@pytest.mark.parametrize(
    ("topk", "vocab", "message"),
    [([], 10, "at least one"), ([-0.1, -3.0], 1, "vocab_size"), ([0.5], 10, "log-probabilities")],
)
def test_topk_bounds_reject_bad_input(topk: list[float], vocab: int, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        topk_entropy_bounds(topk, vocab)


@settings(max_examples=200, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    vocab=st.integers(1, 1000),
    k=st.integers(1, 20),
    scale=st.floats(0.01, 20.0),
    masked=st.floats(0.0, 0.9),
)
def test_exact_entropy_always_lies_inside_topk_bounds(
    seed: int, vocab: int, k: int, scale: float, masked: float
) -> None:
    k = min(k, vocab)
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(vocab, generator=gen, dtype=torch.float64) * scale
    mask = torch.rand(vocab, generator=gen, dtype=torch.float64) < masked
    mask[0] = False  # keep at least one finite logit
    logits[mask] = NEG_INF
    exact = entropy_from_logits(logits).double().item()
    logp = torch.log_softmax(logits, -1)
    top = logp.topk(k).values
    for given_logprobs in (top, top.float()):  # exact, and as a server's float32 would round them
        est = topk_entropy_bounds(given_logprobs, vocab)
        assert est.lower.item() - 1e-5 <= exact <= est.upper.item() + 1e-5
        assert est.lower.item() <= est.estimate.item() <= est.upper.item()


TURN_TABLE = [
    # mean of (1, 2, 3) = 6/3 = 2
    ([1.0, 2.0, 3.0], None, 2.0),
    # first 2 tokens: (1 + 2)/2 = 1.5
    ([1.0, 2.0, 3.0], 2, 1.5),
    # window longer than the turn: all tokens, 2
    ([1.0, 2.0, 3.0], 10, 2.0),
    # (0.5 + 0.25 + 0 + 0.25)/4 = 0.25
    ([0.5, 0.25, 0.0, 0.25], None, 0.25),
]


@pytest.mark.parametrize(("entropies", "window", "expected"), TURN_TABLE)
def test_turn_entropy_is_the_mean_of_its_window(
    entropies: list[float], window: int | None, expected: float
) -> None:
    assert turn_entropy(entropies, window) == pytest.approx(expected, abs=1e-12)


def test_empty_turn_has_nan_entropy() -> None:
    assert math.isnan(turn_entropy([]))
    assert math.isnan(turn_entropy([], window=4))


def test_turn_entropy_rejects_a_window_below_one() -> None:
    with pytest.raises(ConfigError, match="window"):
        turn_entropy([1.0], window=0)


def test_delta_entropies_are_differences_of_consecutive_turns() -> None:
    # H = (2.0, 1.5, 1.75): ΔH_1 = 1.5 − 2.0 = −0.5 (entropy-reducing), ΔH_2 = 1.75 − 1.5 = 0.25
    assert delta_entropies([2.0, 1.5, 1.75]) == pytest.approx([-0.5, 0.25])
    assert delta_entropies([1.0]) == []
    assert delta_entropies([]) == []
    nan_delta = delta_entropies([1.0, math.nan])
    assert len(nan_delta) == 1 and math.isnan(nan_delta[0])


@pytest.mark.parametrize(
    ("before", "after", "expected"),
    [
        (2.0, 1.5, -0.5),  # the call made the model surer: entropy-reducing
        (1.5, 1.75, 0.25),
        (0.0, 0.0, 0.0),
        (None, 1.0, None),  # no turn issued the call
        (1.0, None, None),  # the run ended before the next turn
        (math.nan, 1.0, None),  # an empty turn has no entropy
        (1.0, math.nan, None),
    ],
)
def test_delta_entropy_is_after_minus_before_and_unknown_when_either_is(
    before: float | None, after: float | None, expected: float | None
) -> None:
    got = delta_entropy(before, after)
    if expected is None:
        assert got is None
    else:
        assert got == pytest.approx(expected, abs=1e-12)
