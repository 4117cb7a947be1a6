"""The vLLM plugin's own code that runs without vLLM: the entropy reduction it computes inside
vLLM's sampler (against a float64 log-softmax), and the check that turns a feature off on a
vLLM release that lacks a method it wraps."""

from __future__ import annotations

import sys

import pytest
import torch

from tepo_agent.vllm.plugin import PLUGIN_SOURCE

sys.path.insert(0, str(PLUGIN_SOURCE))
import tepo_vllm  # the plugin's package, imported as vLLM's environment imports it
from tepo_vllm.entropy import entropy_and_logsumexp


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_entropy_and_logsumexp_equal_a_float64_log_softmax(dtype: torch.dtype) -> None:
    generator = torch.Generator().manual_seed(0)
    logits = (torch.randn(6, 512, generator=generator) * 4).to(dtype)
    logits[0, 5:] = -float("inf")  # a row with five tokens left (e.g. after a grammar mask)
    logits[1] = 0.0  # uniform: H = log V
    logits[2, 3] = 80.0  # nearly one-hot: H ≈ 0
    entropy, lse = entropy_and_logsumexp(logits)
    reference = logits.double()
    logp = reference.log_softmax(-1)
    exact = -(logp.exp() * logp.nan_to_num(neginf=0.0)).sum(-1)
    assert entropy.dtype == lse.dtype == torch.float32
    assert torch.allclose(entropy.double(), exact, atol=1e-5)
    assert torch.allclose(lse.double(), reference.logsumexp(-1), atol=1e-5)
    assert entropy[1].item() == pytest.approx(torch.log(torch.tensor(512.0)).item(), abs=1e-5)
    assert not entropy.isnan().any()


def test_a_feature_whose_vllm_methods_are_missing_is_named() -> None:
    present = "json:JSONDecoder.decode"
    absent = ["json:JSONDecoder.no_such_method", "no_such_module_here:Anything"]
    assert tepo_vllm.missing((present, *absent)) == absent
    # both features name what they wrap, so another vLLM release turns them off, not the server
    assert tepo_vllm.entropy.REQUIRED and tepo_vllm.reload.REQUIRED
