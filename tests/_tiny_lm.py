"""A random-weight tiny Qwen2 (vocab 512, hidden 64, 2 layers) and a full-sequence recomputation
of a generation's logprobs and entropies: the reference the in-process backend's tests compare to.
"""

from __future__ import annotations

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from tepo_agent.backends import Generation

VOCAB = 512


def tiny_model(seed: int) -> Qwen2ForCausalLM:
    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        initializer_range=0.2,  # peakier than the default, so greedy picks are far from ties
    )
    return Qwen2ForCausalLM(config).eval()


def recompute(model: torch.nn.Module, gen: Generation) -> tuple[torch.Tensor, torch.Tensor]:
    """Logprobs and entropies of the sampled tokens from one full-sequence forward pass."""
    ids = torch.tensor([list(gen.prompt_token_ids) + list(gen.token_ids)])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].float()  # (T, V)
    n = len(gen.prompt_token_ids)
    step_logits = logits[n - 1 : n - 1 + len(gen.token_ids)]  # row i predicts token i
    dist = torch.distributions.Categorical(logits=step_logits.double())
    return dist.log_prob(torch.tensor(gen.token_ids)), dist.entropy()
