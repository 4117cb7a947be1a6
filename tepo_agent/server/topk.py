"""Top-k alternatives for every sampled token, for ``logprobs=k`` answers.

The in-process backend reports each sampled token's logprob and the exact entropy, not the k most
likely alternatives. The server gets those with one teacher-forced forward pass over
``prompt + completion`` on the same weights (the server's swap gate keeps weights fixed between
the generation and this pass): position t's raw temperature-1 distribution is the one token t was
sampled from. Values agree with the decode loop's to float32 rounding (the decode loop used a KV
cache, this pass does not).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import PreTrainedModel

TopK = list[list[tuple[int, float]]]
"""Per sampled token, its k most likely ``(token_id, logprob)``, most likely first."""


@torch.inference_mode()
def topk_alternatives(
    model: PreTrainedModel, prompt_ids: Sequence[int], token_ids: Sequence[int], k: int
) -> TopK:
    """The top-``k`` raw logprobs of the distribution each of ``token_ids`` was drawn from.

    Args:
        model: the causal LM that sampled ``token_ids`` after ``prompt_ids``.
        prompt_ids: (P,) the prompt.
        token_ids: (T,) the sampled continuation.
        k: alternatives per position, >= 1 (capped at the vocabulary size).

    Returns:
        T lists of k ``(token_id, logprob)`` pairs, most likely first.
    """
    if not token_ids:
        return []
    device = next(model.parameters()).device
    # The last sampled token's successor distribution is not needed: feed all but it.
    ids = torch.tensor([list(prompt_ids) + list(token_ids[:-1])], device=device)  # (1, P+T-1)
    n = len(token_ids)
    logits = model(input_ids=ids, logits_to_keep=n).logits[0].float()  # (T, V)
    logp = torch.log_softmax(logits, dim=-1)
    values, indices = logp.topk(min(k, logp.shape[-1]), dim=-1)  # (T, k)
    return [
        list(zip(row_ids, row_vals, strict=True))
        for row_ids, row_vals in zip(indices.tolist(), values.tolist(), strict=True)
    ]


__all__ = ["TopK", "topk_alternatives"]
