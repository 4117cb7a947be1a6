"""The in-process sampler: the temperature → top-k → top-p distribution against hand tables, draws
against it by a chi-square test, and a seeded row drawing the same tokens alone or in any batch."""

from __future__ import annotations

import math

import pytest
import torch

from tepo_agent.backends._sampling import sample_tokens, sampling_distribution
from tepo_agent.backends.base import SamplingParams

LN = math.log
INF = math.inf
# probabilities (1/2, 1/4, 1/8, 1/8) at temperature 1; tokens 2 and 3 tie
LOGITS = [LN(4), LN(2), LN(1), LN(1)]
R2 = math.sqrt(2)

# (params, expected probabilities of the 4 tokens), worked by hand
TABLE = [
    (SamplingParams(), [1 / 2, 1 / 4, 1 / 8, 1 / 8]),
    (SamplingParams(temperature=0), [1, 0, 0, 0]),  # greedy
    # T = 2: p ∝ (4, 2, 1, 1)^(1/2) = (2, √2, 1, 1)
    (SamplingParams(temperature=2), [v / (4 + R2) for v in (2, R2, 1, 1)]),
    # T = 1/2: p ∝ (16, 4, 1, 1)
    (SamplingParams(temperature=0.5), [16 / 22, 4 / 22, 1 / 22, 1 / 22]),
    (SamplingParams(top_k=2), [2 / 3, 1 / 3, 0, 0]),
    (SamplingParams(top_k=1, temperature=2), [1, 0, 0, 0]),
    # the 3rd largest logit is tied with the 4th: both are kept
    (SamplingParams(top_k=3), [1 / 2, 1 / 4, 1 / 8, 1 / 8]),
    # top_k >= vocab, or disabled, keeps all
    (SamplingParams(top_k=4), [1 / 2, 1 / 4, 1 / 8, 1 / 8]),
    (SamplingParams(top_k=10), [1 / 2, 1 / 4, 1 / 8, 1 / 8]),
    (SamplingParams(top_k=0), [1 / 2, 1 / 4, 1 / 8, 1 / 8]),
    (SamplingParams(top_p=1.0), [1 / 2, 1 / 4, 1 / 8, 1 / 8]),
    # mass before token 1 is 1/2 >= 0.5: dropped; the first token is always kept
    (SamplingParams(top_p=0.5), [1, 0, 0, 0]),
    (SamplingParams(top_p=1e-9), [1, 0, 0, 0]),
    # before token 1: 1/2 < 0.6 kept; before token 2: 3/4 >= 0.6 dropped
    (SamplingParams(top_p=0.6), [2 / 3, 1 / 3, 0, 0]),
    # before token 2: 3/4 < 0.8 kept; before token 3: 7/8 dropped (ties: the lower id first)
    (SamplingParams(top_p=0.8), [4 / 7, 2 / 7, 1 / 7, 0]),
    # top-k first, then top-p over the renormalised (2/3, 1/3): before token 1 is 2/3
    (SamplingParams(top_k=2, top_p=0.7), [2 / 3, 1 / 3, 0, 0]),
    (SamplingParams(top_k=2, top_p=0.6), [1, 0, 0, 0]),
    # T = 1/2 then top-p: (16, 4, 1, 1)/22, before token 1 is 16/22 = 0.727 < 0.75
    (SamplingParams(temperature=0.5, top_p=0.75), [16 / 20, 4 / 20, 0, 0]),
]


@pytest.mark.parametrize(("params", "expected"), TABLE)
def test_sampling_distribution_matches_hand_table(
    params: SamplingParams, expected: list[float]
) -> None:
    probs = sampling_distribution(torch.tensor([LOGITS]), [params])
    torch.testing.assert_close(probs[0], torch.tensor(expected, dtype=torch.float64))


def test_rows_of_a_batch_each_get_their_own_distribution() -> None:
    params = [p for p, _ in TABLE]
    probs = sampling_distribution(torch.tensor([LOGITS] * len(params)), params)
    expected = torch.tensor([e for _, e in TABLE], dtype=torch.float64)
    torch.testing.assert_close(probs, expected)


def test_masked_tokens_are_never_kept() -> None:
    probs = sampling_distribution(
        torch.tensor([[0.0, -INF, 0.0], [0.0, -INF, 0.0]]),
        [SamplingParams(), SamplingParams(top_p=0.9)],
    )
    torch.testing.assert_close(probs, torch.tensor([[0.5, 0.0, 0.5]] * 2, dtype=torch.float64))


def _chi_square(counts: torch.Tensor, probs: torch.Tensor) -> float:
    """Pearson's statistic over the tokens with positive expected probability."""
    n = counts.sum().item()
    support = probs > 0
    expected = probs[support] * n
    return float(((counts[support] - expected) ** 2 / expected).sum())


# the 0.9999 quantile of chi-square with df degrees of freedom (scipy.stats.chi2.ppf)
CHI2_9999 = {1: 15.14, 2: 18.42, 3: 21.11}


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(),
        SamplingParams(temperature=2),
        SamplingParams(top_p=0.8),
        SamplingParams(top_k=2, temperature=0.5),
    ],
)
def test_draws_follow_the_distribution(params: SamplingParams) -> None:
    n = 20_000
    gen = torch.Generator().manual_seed(7)
    logits = torch.tensor([LOGITS] * n)
    tokens = sample_tokens(logits, [params] * n, [gen] * n)
    counts = torch.bincount(tokens, minlength=4).double()
    probs = sampling_distribution(logits[:1], [params])[0]
    assert counts[probs == 0].sum() == 0, "a token outside top-k/top-p was drawn"
    df = int((probs > 0).sum()) - 1
    assert _chi_square(counts, probs) < CHI2_9999[df]
    # the test has power: the same draws against the plain temperature-1 distribution fail
    if params != SamplingParams():
        plain = torch.tensor([1 / 2, 1 / 4, 1 / 8, 1 / 8], dtype=torch.float64)
        assert counts[plain > 0].sum() == n
        assert _chi_square(counts, plain) > 10 * CHI2_9999[3]


def test_a_seeded_row_draws_the_same_tokens_alone_and_at_any_row_of_any_batch() -> None:
    rand = torch.Generator().manual_seed(0)
    seeded = [
        SamplingParams(seed=1),
        SamplingParams(temperature=0.7, top_p=0.9, seed=2),
        SamplingParams(temperature=1.3, top_k=20, seed=3),
    ]
    others = [SamplingParams(temperature=0), SamplingParams(), SamplingParams(top_k=5)]
    steps = [torch.randn(1, 64, generator=rand) * 3 for _ in range(30)]
    for params in seeded:
        gen = torch.Generator().manual_seed(params.seed or 0)
        alone = [sample_tokens(x, [params], [gen]).item() for x in steps]
        for position in range(len(others) + 1):
            batch = [*others[:position], params, *others[position:]]
            gen = torch.Generator().manual_seed(params.seed or 0)
            shared = torch.Generator().manual_seed(99)
            gens = [gen if p is params else shared for p in batch]
            noise = [torch.randn(len(batch), 64, generator=rand) for _ in steps]
            drawn = []
            for x, other in zip(steps, noise, strict=True):
                other[position] = x[0]
                drawn.append(sample_tokens(other, batch, gens)[position].item())
            assert drawn == alone, f"{params} at row {position}"


def test_greedy_rows_take_the_argmax_and_leave_the_generator_alone() -> None:
    logits = torch.randn(5, 32, generator=torch.Generator().manual_seed(1))
    gen = torch.Generator().manual_seed(3)
    state = gen.get_state()
    chosen = sample_tokens(logits, [SamplingParams(temperature=0)] * 5, [gen] * 5)
    assert chosen.tolist() == logits.argmax(-1).tolist()
    assert torch.equal(gen.get_state(), state)
    # greedy rows among sampled ones still take their argmax
    mixed = [SamplingParams(temperature=0), SamplingParams(), SamplingParams(temperature=0)]
    chosen = sample_tokens(logits[:3], mixed, [gen] * 3)
    assert chosen[0] == logits[0].argmax() and chosen[2] == logits[2].argmax()


def test_a_token_of_tiny_probability_is_drawn_only_at_its_share() -> None:
    # token 1 has probability e^-30 ≈ 1e-13: 20000 inverse-CDF draws never land on it,
    # and a huge temperature flattens the same logits to near uniform
    logits = torch.tensor([[0.0, -30.0]] * 20_000)
    gen = torch.Generator().manual_seed(0)
    assert sample_tokens(logits, [SamplingParams()] * 20_000, [gen] * 20_000).sum() == 0
    hot = sample_tokens(logits, [SamplingParams(temperature=1e6)] * 20_000, [gen] * 20_000)
    assert 9_000 < int(hot.sum()) < 11_000


def test_top_k_rows_ranked_over_their_largest_logits_match_the_hand_table() -> None:
    # only top-k rows: the ranking covers the largest max(k) logits, unless ties spill past them
    cases = [(p, e) for p, e in TABLE if 0 < p.top_k < 4]
    logits = torch.tensor([[*LOGITS, -5.0, -6.0]] * len(cases))  # two more, never kept
    probs = sampling_distribution(logits, [p for p, _ in cases])
    expected = torch.tensor([[*e, 0, 0] for _, e in cases], dtype=torch.float64)
    torch.testing.assert_close(probs, expected)


def test_tied_logits_draw_the_same_tokens_alone_and_beside_wider_top_k_rows() -> None:
    rand = torch.Generator().manual_seed(5)
    steps = [torch.randint(0, 4, (1, 40), generator=rand).float() for _ in range(40)]  # many ties
    for params in (SamplingParams(top_k=3, seed=8), SamplingParams(top_k=6, top_p=0.8, seed=9)):
        gen = torch.Generator().manual_seed(params.seed or 0)
        alone = [sample_tokens(x, [params], [gen]).item() for x in steps]
        kept = sampling_distribution(torch.cat(steps), [params] * len(steps))
        assert all(kept[i, t] > 0 for i, t in enumerate(alone))
        others = [SamplingParams(top_k=1), SamplingParams(top_k=12, seed=1)]
        gen = torch.Generator().manual_seed(params.seed or 0)
        shared = torch.Generator().manual_seed(0)
        drawn = [
            sample_tokens(
                torch.cat([x, x.roll(1), x.flip(-1)]), [params, *others], [gen, shared, shared]
            )[0].item()
            for x in steps
        ]
        assert drawn == alone, params


def _multinomial_per_row(
    logits: torch.Tensor, params: list[SamplingParams], seeds: list[int]
) -> list[int]:
    """The sampler before it was vectorised: per row temperature, top-k, top-p, then
    ``torch.multinomial`` with the row's generator (the reference a seed must keep drawing)."""
    out = []
    for row, p, seed in zip(logits, params, seeds, strict=True):
        x = row / p.temperature
        if 0 < p.top_k < x.shape[-1]:
            x = x.masked_fill(x < x.topk(p.top_k).values[-1], -math.inf)
        probs = torch.softmax(x, -1)
        if p.top_p < 1:
            sorted_p, order = probs.sort(descending=True, stable=True)
            drop = (sorted_p.cumsum(-1) - sorted_p) >= p.top_p
            probs = probs.scatter(0, order, sorted_p.masked_fill(drop, 0.0))
        gen = torch.Generator().manual_seed(seed)
        out.append(int(torch.multinomial(probs, 1, generator=gen)[0]))
    return out


def test_a_seed_draws_the_token_torch_multinomial_draws() -> None:
    # The agent derives its seeds from the sample index and turn, shared by every question of an
    # evaluation; a draw that maps one uniform through the inverse CDF made those runs lucky or
    # unlucky together (the demo's gain vanished). The race keeps what multinomial drew.
    torch.manual_seed(5)
    params = [
        SamplingParams(temperature=1.0),
        SamplingParams(temperature=0.7),
        SamplingParams(temperature=1.0, top_k=20),
        SamplingParams(temperature=1.3, top_p=0.9),
        SamplingParams(temperature=1.0, top_k=50, top_p=0.8),
    ]
    for trial in range(40):
        logits = torch.randn(len(params), 300) * 3
        seeds = [1000 * trial + j for j in range(len(params))]
        gens = [torch.Generator().manual_seed(s) for s in seeds]
        drawn = sample_tokens(logits, params, gens).tolist()
        assert drawn == _multinomial_per_row(logits, params, seeds)
