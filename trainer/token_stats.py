"""The logprob and exact entropy of every sampled token, without the full (tokens × vocab) tensor.

A causal LM's forward returns logits (B, T, V); the trainer needs two numbers per token: the
logprob of the token that follows and the entropy of the distribution it was drawn from. Taking
them from the full logits materialises (B·T, V) float32 several times over (the upcast logits, the
log-softmax, p·log p): for a 0.5B Qwen2 (V = 151,936) and 16 k tokens that is ~10 GiB per tensor,
most of the step's peak memory. :class:`TokenStats` wraps the LM instead: it runs the decoder to
its last hidden states (B, T, H), then the output layer, the float32 log-softmax, the gather and
the entropy over chunks of ``chunk_tokens`` positions at a time. With grad on, every chunk runs
under activation checkpointing (non-reentrant), so the backward pass recomputes the chunk's
logits instead of keeping them: what stays alive is the hidden states and two floats per token.

The training forward, the exact recompute and the KL reference all go through this module
(``recompute.forward_logprobs``). It is also the root module the distributed trainer shards with
FSDP2 (``trainer.distributed``): the root's forward unshards the embedding and output layer that
the decoder and the chunks use.

Models whose logits are not ``output_layer(hidden)`` (a final soft-cap or logit scale in their
config, as Gemma 2 or Cohere have) fall back to the model's own logits, computed in one piece.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.checkpoint import checkpoint

from tepo_agent.errors import ConfigError

# config attributes that make a model's logits differ from output_layer(hidden)
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "output_multiplier_scale")


def _chunk_stats(
    hidden: torch.Tensor, head: torch.nn.Module, targets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, H) hidden states → (n,) logprobs of ``targets`` and (n,) entropies, float32."""
    logp = torch.log_softmax(head(hidden).float(), dim=-1)  # (n, V), freed after the chunk
    token_logp = logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # (n,)
    entropy = torch.special.entr(logp.exp()).sum(dim=-1)  # −Σ p log p, 0·log 0 = 0; (n,)
    return token_logp, entropy


def chunked_token_stats(
    hidden: torch.Tensor, head: torch.nn.Module, targets: torch.Tensor, chunk_tokens: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logprobs of ``targets`` and entropies from hidden states, ``chunk_tokens`` rows at a time.

    Args:
        hidden: (B, T, H) hidden states; position t predicts ``targets[:, t]``.
        head: The output layer (hidden → logits).
        targets: (B, T) int64 token ids.
        chunk_tokens: Positions per chunk: the peak is about 3 · chunk_tokens · V float32.

    Returns:
        ``(logprobs, entropy)``, both (B, T) float32. With grad enabled, each chunk is
        checkpointed: its logits are recomputed in the backward pass, not stored.
    """
    if chunk_tokens < 1:
        raise ConfigError(f"chunk_tokens must be >= 1, got {chunk_tokens}")
    B, T, H = hidden.shape
    flat_h = hidden.reshape(B * T, H)
    flat_t = targets.reshape(B * T).long()
    grad = torch.is_grad_enabled() and hidden.requires_grad
    logps, ents = [], []
    for start in range(0, B * T, chunk_tokens):
        h = flat_h[start : start + chunk_tokens]
        t = flat_t[start : start + chunk_tokens]
        if grad:
            lp, ent = checkpoint(_chunk_stats, h, head, t, use_reentrant=False)
        else:
            lp, ent = _chunk_stats(h, head, t)
        logps.append(lp)
        ents.append(ent)
    return torch.cat(logps).reshape(B, T), torch.cat(ents).reshape(B, T)


def _causal_lm(model: torch.nn.Module) -> Any:
    """The transformers CausalLM inside ``model`` (a peft model's base model, or itself)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def decoder_layers(stats: TokenStats) -> list[torch.nn.Module]:
    """The decoder layers of the wrapped LM (FSDP2 makes each one a sharding unit)."""
    decoder = _causal_lm(stats.lm).get_decoder()
    layers = getattr(decoder, "layers", None)
    if not isinstance(layers, torch.nn.ModuleList):
        raise ConfigError(
            f"{type(decoder).__name__} keeps no decoder layers in `.layers`; the distributed "
            "trainer shards transformers decoder models (Qwen2, Llama, Mistral, ...) only"
        )
    return list(layers)


class TokenStats(torch.nn.Module):
    """Wraps a causal LM: ``forward(input_ids, attention_mask)`` → target-aligned (logprobs,
    entropy), both (B, T) float32, 0 at position 0 and on padding (``recompute``'s alignment).

    Args:
        lm: A transformers CausalLM, or a peft model around one.
        chunk_tokens: Positions per output-layer chunk (module docstring).
    """

    def __init__(self, lm: torch.nn.Module, chunk_tokens: int = 1024) -> None:
        super().__init__()
        if chunk_tokens < 1:
            raise ConfigError(f"chunk_tokens must be >= 1, got {chunk_tokens}")
        self.lm = lm
        self.chunk_tokens = chunk_tokens
        causal = _causal_lm(lm)
        config = getattr(causal, "config", None)
        head = causal.get_output_embeddings() if hasattr(causal, "get_output_embeddings") else None
        self.chunked = (
            isinstance(head, torch.nn.Linear)
            and hasattr(causal, "get_decoder")
            and not any(getattr(config, name, None) for name in _LOGIT_TRANSFORMS)
        )

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        targets = input_ids[:, 1:]  # (B, T-1)
        if self.chunked:
            causal = _causal_lm(self.lm)
            decoder = causal.get_decoder()
            out = decoder(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
            hidden = out.last_hidden_state[:, :-1]  # (B, T-1, H)
            head = causal.get_output_embeddings()
            lp, ent = chunked_token_stats(hidden, head, targets, self.chunk_tokens)
        else:
            logits = self.lm(input_ids=input_ids, attention_mask=attention_mask).logits
            lp, ent = _chunk_stats(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                   torch.nn.Identity(), targets.reshape(-1))  # fmt: skip
            lp, ent = lp.reshape(targets.shape), ent.reshape(targets.shape)
        zero = lp.new_zeros((lp.shape[0], 1))
        valid = attention_mask[:, 1:].to(torch.bool)  # (B, T-1)
        lp = torch.cat([zero, torch.where(valid, lp, torch.zeros_like(lp))], dim=1)  # (B, T)
        ent = torch.cat([zero, torch.where(valid, ent, torch.zeros_like(ent))], dim=1)  # (B, T)
        return lp, ent


__all__ = ["TokenStats", "chunked_token_stats", "decoder_layers"]
